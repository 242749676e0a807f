"""`parallax data synth`: render procedural scenes with Blender Cycles into clip folders.

One clip = one random scene (synth_scene) seen along one random camera trajectory (synth_camera),
rendered frame by frame: the camera is placed for each frame and rendered twice,

1. RGB: Cycles path tracing at `samples` spp with the usual pixel filter (anti-aliased), written as an
   8-bit PNG through the view transform;
2. depth: one sample with a 0.01 px pixel filter, so the ray goes through the pixel centre (u, v) =
   (j + 0.5, i + 0.5) exactly, and the Z pass is written by the compositor as a float32 EXR.

Cycles' Z pass is the distance along the camera's view axis (z-depth), the backend's convention
(projection.py); the tests check it against an analytic plane. Intrinsics come from the Blender
camera through `blender_intrinsics` and poses from `matrix_world` through `blender_to_opencv`, so
the files hold what Blender rendered, not what we asked for. Clip i of seed s uses the generator
SeedSequence([s, i]): a clip does not depend on the worker count or on the other clips.

Workers are separate processes (spawn): bpy renders one scene per process, and a fresh interpreter
keeps Blender's global state away from the caller's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

from backend.data.clips import Clip, read_image, write_clip
from backend.data.synth_camera import TrajectoryConfig, sample_trajectory
from backend.geometry.cameras import BlenderCameraParams, Cameras, blender_intrinsics, blender_to_opencv
from backend.geometry.cameras import opencv_to_blender as _to_blender

LAYOUTS = ("room", "outdoor")  # scene layouts synth_scene can build
NO_HIT_DEPTH = 1e8  # Cycles writes a huge depth (1e10) where a ray hits nothing; above this → 0 (unknown)


@dataclass
class SceneConfig:
    """What a procedural scene (synth_scene) may contain. Lengths in metres. Kept here, free of bpy,
    so configs pickle into worker processes without importing Blender in the parent."""

    layouts: tuple[str, ...] = LAYOUTS  # layouts drawn uniformly
    n_objects: tuple[int, int] = (4, 10)  # number of large primitives (inclusive range)
    n_clutter: tuple[int, int] = (3, 10)  # number of small objects
    n_thin: tuple[int, int] = (1, 4)  # number of thin structures (poles, railings, wires)
    image_texture_prob: float = 0.25  # chance a material uses a numpy-made image texture
    metallic_prob: float = 0.15  # chance a material is metallic
    texture_size: int = 128  # side of numpy-made image textures, pixels

    def __post_init__(self) -> None:
        bad = [k for k in self.layouts if k not in LAYOUTS]
        if not self.layouts or bad:
            raise ValueError(f"SceneConfig.layouts must be a non-empty subset of {LAYOUTS}, got {self.layouts}")
        for name in ("n_objects", "n_clutter", "n_thin"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"SceneConfig.{name} must satisfy 0 <= lo <= hi, got {(lo, hi)}")
        if self.texture_size < 8:
            raise ValueError(f"SceneConfig.texture_size must be >= 8, got {self.texture_size}")


@dataclass
class SynthConfig:
    """How clips are rendered. The scene and camera configs hold what is in them and how it moves."""

    width: int = 128  # image width in pixels
    height: int = 96  # image height in pixels
    frames: int = 16  # frames per clip
    samples: int = 16  # Cycles samples per pixel for RGB
    fps: float = 12.0  # frame rate written to clip.json
    filter_width: float = 1.5  # RGB pixel filter width in pixels (Blackman-Harris); depth uses 0.01
    max_bounces: int = 3  # Cycles light bounces: few keep the low-sample noise down
    threads: int = 1  # Cycles threads per worker process (0 = all cores)
    scene: SceneConfig = field(default_factory=SceneConfig)  # what the scenes contain
    camera: TrajectoryConfig = field(default_factory=TrajectoryConfig)  # trajectory distribution

    def __post_init__(self) -> None:
        for name in ("width", "height", "frames", "samples", "max_bounces"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SynthConfig.{name} must be an int >= 1, got {v!r}")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"SynthConfig.fps must be finite and > 0, got {self.fps!r}")
        if not 0.01 <= self.filter_width <= 10:
            raise ValueError(f"SynthConfig.filter_width must be in [0.01, 10], got {self.filter_width!r}")
        if self.threads < 0:
            raise ValueError(f"SynthConfig.threads must be >= 0, got {self.threads!r}")


class FrameRenderer:
    """Owns the current bpy scene's camera, render settings and depth compositor; renders one frame."""

    def __init__(self, cfg: SynthConfig, workdir: str, seed: int = 0) -> None:
        import bpy

        self.bpy, self.cfg, self.workdir = bpy, cfg, workdir
        scene = bpy.context.scene
        self.scene = scene
        r = scene.render
        r.engine = "CYCLES"
        r.resolution_x, r.resolution_y, r.resolution_percentage = cfg.width, cfg.height, 100
        r.pixel_aspect_x = r.pixel_aspect_y = 1.0
        r.film_transparent = False
        r.use_sequencer = False
        r.image_settings.file_format, r.image_settings.color_mode = "PNG", "RGB"
        r.image_settings.color_depth = "8"
        r.threads_mode = "AUTO" if cfg.threads == 0 else "FIXED"
        if cfg.threads:
            r.threads = cfg.threads
        c = scene.cycles
        c.device, c.use_denoising, c.use_adaptive_sampling = "CPU", False, False
        c.seed, c.use_animated_seed = int(seed) % (2**31), False
        c.max_bounces = c.diffuse_bounces = c.glossy_bounces = cfg.max_bounces
        c.transmission_bounces, c.volume_bounces, c.transparent_max_bounces = 2, 0, 4
        c.caustics_reflective = c.caustics_refractive = False
        c.sample_clamp_indirect = 3.0  # clamp indirect fireflies: a little bias for much less noise
        self.camera = self._make_camera()
        self._make_depth_output()

    def _make_camera(self):
        bpy = self.bpy
        data = bpy.data.cameras.new("synth_cam")
        data.sensor_fit, data.sensor_width = "AUTO", 36.0
        data.clip_start, data.clip_end = 0.02, 1000.0
        obj = bpy.data.objects.new("synth_cam", data)
        self.scene.collection.objects.link(obj)
        self.scene.camera = obj
        return obj

    def _make_depth_output(self) -> None:
        """Compositor: Render Layers' Depth → File Output as a single-layer float32 EXR (Blender 5 API)."""
        bpy = self.bpy
        self.scene.view_layers[0].use_pass_z = True
        tree = bpy.data.node_groups.new("synth_depth", "CompositorNodeTree")
        self.scene.compositing_node_group = tree
        layers = tree.nodes.new("CompositorNodeRLayers")
        out = tree.nodes.new("CompositorNodeOutputFile")
        out.directory, out.file_name = self.workdir, "frame"
        out.format.media_type = "IMAGE"  # must precede file_format in 5.0
        out.format.file_format, out.format.color_mode, out.format.color_depth = "OPEN_EXR", "RGB", "32"
        out.file_output_items.new("FLOAT", "depth")
        tree.links.new(layers.outputs["Depth"], out.inputs["depth"])
        self.depth_path = os.path.join(self.workdir, "framedepth.exr")

    def set_camera(self, c2w: np.ndarray, lens: float) -> None:
        """Place the camera: c2w (4, 4) OpenCV axes (converted to Blender's), lens in mm."""
        from mathutils import Matrix

        self.camera.matrix_world = Matrix(_to_blender(c2w).tolist())
        self.camera.data.lens = float(lens)
        self.bpy.context.view_layer.update()

    def camera_now(self) -> tuple[np.ndarray, np.ndarray]:
        """(K (3, 3), c2w (4, 4) OpenCV axes) of the camera as Blender holds it now."""
        data, r = self.camera.data, self.scene.render
        params = BlenderCameraParams(
            lens=data.lens, sensor_width=data.sensor_width, sensor_height=data.sensor_height,
            sensor_fit=data.sensor_fit, shift_x=data.shift_x, shift_y=data.shift_y,
            resolution_x=r.resolution_x, resolution_y=r.resolution_y,
            resolution_percentage=r.resolution_percentage,
            pixel_aspect_x=r.pixel_aspect_x, pixel_aspect_y=r.pixel_aspect_y,
        )  # fmt: skip
        K, _W, _H = blender_intrinsics(params)
        return K, blender_to_opencv(np.array(self.camera.matrix_world, dtype=np.float64))

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """Render the current camera: (rgb (H, W, 3) uint8, depth (H, W) float32 z-depth, 0 = no hit)."""
        import cv2

        bpy, scene, cfg = self.bpy, self.scene, self.cfg
        rgb_path = os.path.join(self.workdir, "rgb.png")
        scene.render.filepath = rgb_path
        scene.render.use_compositing = False
        scene.cycles.samples, scene.cycles.filter_width = cfg.samples, cfg.filter_width
        bpy.ops.render.render(write_still=True)
        rgb = read_image(rgb_path)
        scene.render.use_compositing = True
        scene.cycles.samples, scene.cycles.filter_width = 1, 0.01
        bpy.ops.render.render(write_still=False)
        os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")  # OpenCV reads it at the first EXR decode
        z = cv2.imread(self.depth_path, cv2.IMREAD_UNCHANGED)
        if z is None:
            raise RuntimeError(f"Blender wrote no depth EXR at {self.depth_path}")
        depth = z[..., 0].astype(np.float32) if z.ndim == 3 else z.astype(np.float32)  # (H, W)
        depth[~np.isfinite(depth) | (depth > NO_HIT_DEPTH)] = 0.0
        os.remove(self.depth_path)
        return rgb, depth


def render_clip(cfg: SynthConfig, seed: int, index: int) -> Clip:
    """Build scene `index` of `seed` in the current bpy process and render it along a random trajectory.

    Resets Blender to an empty factory scene first: call it in a worker process, not in one whose
    Blender state matters.
    """
    from backend.data.synth_scene import build_scene  # imports bpy: only in the rendering process

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    info = build_scene(rng, cfg.scene)
    traj = sample_trajectory(rng, cfg.frames, info.bounds, cfg.camera)
    images = np.zeros((cfg.frames, cfg.height, cfg.width, 3), np.uint8)
    depth = np.zeros((cfg.frames, cfg.height, cfg.width), np.float32)
    Ks, c2ws = np.zeros((cfg.frames, 3, 3)), np.zeros((cfg.frames, 4, 4))
    with tempfile.TemporaryDirectory(prefix="parallax-synth-") as work:
        renderer = FrameRenderer(cfg, work, seed=int(rng.integers(2**31)))
        for f in range(cfg.frames):
            renderer.set_camera(traj.c2w[f], traj.lens[f])
            Ks[f], c2ws[f] = renderer.camera_now()
            images[f], depth[f] = renderer.render()
    cams = Cameras(Ks, c2ws, cfg.width, cfg.height)
    return Clip(images=images, depth=depth, cameras=cams, fps=cfg.fps)


def clip_path(out: str, index: int) -> str:
    """Folder of clip `index` under the dataset root."""
    return os.path.join(out, f"clip_{index:05d}")


_BPY_SCRIPTS = re.compile(r"[/\\]bpy[/\\]\d+\.\d+[/\\]scripts")  # <site-packages>/bpy/5.0/scripts/...


def _init_worker() -> None:
    """Per worker: private Blender user resources (set before bpy is imported) and EXR reading on.

    A spawned child inherits the parent's sys.path; if the parent imported bpy, that holds Blender's
    script folders, whose pure-Python `bpy` package would shadow the real module. Drop them.
    """
    user = os.environ.get("BLENDER_USER_RESOURCES")
    sys.path[:] = [p for p in sys.path if not _BPY_SCRIPTS.search(p) and not (user and p.startswith(user))]
    if user is None:
        os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="parallax-bpy-")
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")


def _job(task: tuple[SynthConfig, int, int, str, bool]) -> str:
    cfg, seed, index, out, overwrite = task
    path = clip_path(out, index)
    write_clip(path, render_clip(cfg, seed, index), overwrite=overwrite)
    return path


def generate(
    out: str, n_clips: int, cfg: SynthConfig, seed: int = 0, workers: int = 1, overwrite: bool = False,
    progress: bool = True,
) -> list[str]:  # fmt: skip
    """Render clips 0..n_clips-1 of `seed` into `out/clip_NNNNN` with `workers` spawned processes.

    Returns the clip folders in index order. Existing clips are an error unless `overwrite`.
    """
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    os.makedirs(out, exist_ok=True)
    tasks = [(cfg, int(seed), i, out, overwrite) for i in range(n_clips)]
    if not overwrite:
        clash = [clip_path(out, i) for i in range(n_clips) if os.path.exists(clip_path(out, i))]
        if clash:
            raise ValueError(f"out already holds {clash[0]} (pass overwrite=True / --overwrite)")
    from tqdm import tqdm

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(min(workers, n_clips), mp_context=ctx, initializer=_init_worker) as pool:
        futures = [pool.submit(_job, t) for t in tasks]
        for fut in tqdm(as_completed(futures), total=n_clips, desc="synth", unit="clip", disable=not progress):
            fut.result()  # re-raises a worker's error here (a crashed worker: BrokenProcessPool)
    return [clip_path(out, i) for i in range(n_clips)]


# ----------------------------------------------------------------------------------------------------
# CLI: parallax data synth ...


def configure(parser: argparse.ArgumentParser) -> None:
    """Add `synth` (and room for other data tools) as sub-subcommands of `parallax data`."""
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = sub.add_parser("synth", help="render procedural Blender scenes into clip folders",
                       description=__doc__.splitlines()[0])  # fmt: skip
    d = SynthConfig()
    p.add_argument("--out", required=True, help="dataset folder (clips go to OUT/clip_NNNNN)")
    p.add_argument("--clips", type=int, default=8, help="number of clips")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per clip")
    p.add_argument("--width", type=int, default=d.width, help="image width")
    p.add_argument("--height", type=int, default=d.height, help="image height")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (clip i uses SeedSequence([seed, i]))")
    p.add_argument("--samples", type=int, default=d.samples, help="Cycles samples per pixel")
    p.add_argument("--fps", type=float, default=d.fps, help="frame rate written to each clip")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (one clip each)")
    p.add_argument("--threads", type=int, default=d.threads, help="Cycles threads per process (0 = all)")
    p.add_argument("--layouts", default="room,outdoor", help="comma list of scene layouts")
    p.add_argument("--overwrite", action="store_true", help="replace existing clips")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.data_command != "synth":
        raise ValueError(f"unknown data command {args.data_command!r}")
    cfg = SynthConfig(
        width=args.width, height=args.height, frames=args.frames, samples=args.samples, fps=args.fps,
        threads=args.threads, scene=SceneConfig(layouts=tuple(s.strip() for s in args.layouts.split(","))),
    )  # fmt: skip
    paths = generate(args.out, args.clips, cfg, seed=args.seed, workers=args.workers,
                     overwrite=args.overwrite, progress=not args.quiet)  # fmt: skip
    print(f"wrote {len(paths)} clips to {args.out}")
    return 0
