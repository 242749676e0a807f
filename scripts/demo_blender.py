"""The Blender half of `parallax demo`: a Cycles shot, the add-on's operators on it, the round-trip score.

    python scripts/demo_blender.py --out out/demo [--frames 16 --width 128 --height 96 --steps 8 ...]

Run by `backend/demo.py` in its own interpreter so bpy's global state stays out of the CLI process
(this file imports bpy; the backend it starts imports torch; nothing here does). Steps:

1. a procedural scene (backend.data.synth_scene, fixed seed) and an orbiting camera drawn by
   backend.data.synth_camera, keyed per frame (location, quaternion with sign continuity, lens);
2. every frame rendered with Cycles (backend.data.synth.FrameRenderer: RGB + z-depth) into OUT/render;
3. the built extension enabled as a real extension (scripts/build_extension.py), its preferences
   pointed at `python -m backend.cli serve`, and parallax.start_backend run: a real backend process;
4. parallax.novel_views from frame 1 along the keyed camera (with a mesh), then
   parallax.recover_cameras on the rendered frames, each driven by pump.run_until as the tests do;
5. the recovered camera read back with the add-on's own exporter (scene_io.read_camera_track) and
   scored against the true camera: ATE and RPE after a Umeyama Sim(3) fit (Sturm et al. 2012,
   backend/geometry/align.py), beside a camera that never moves as a floor for comparison;
6. OUT/demo.blend, OUT/contact_sheet.png (row 1 novel views, row 2 Cycles ground truth), OUT/demo.json.

The backend is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # backend.* importable when run as a script
# Private Blender user resources: must be set before bpy is imported (RESEARCH.md, Blender facts).
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="parallax-demo-bpy-"))

# isort: off
import bpy  # noqa: E402  (after BLENDER_USER_RESOURCES)
import numpy as np  # noqa: E402

import build_extension  # noqa: E402  (scripts/ is sys.path[0] when this file runs)
from backend.data.synth import SceneConfig, SynthConfig, FrameRenderer  # noqa: E402
from backend.data.synth_camera import TrajectoryConfig, sample_trajectory  # noqa: E402
from backend.geometry import align  # noqa: E402

# isort: on

REPO = "parallax_demo"  # extension repository module the demo enables the add-on under
NAME = f"bl_ext.{REPO}.{build_extension.EXTENSION_ID}"
TRUE_CAMERA = "True Camera"


def log(msg: str) -> None:
    """Progress lines start with 'demo:' so backend/demo.py can echo them and keep Cycles' chatter in a log."""
    print(f"demo: {msg}", flush=True)


def addon(module: str):
    """A module of the enabled extension (pump, session, scene_io, images, _vendor.client, ...)."""
    return importlib.import_module(f"{NAME}.{module}")


@dataclass
class Shot:
    """The rendered ground truth."""

    camera: object  # the keyed Blender camera object
    frames: list[int]  # scene frame numbers, 1..F
    rgb: np.ndarray  # (F, H, W, 3) uint8 Cycles renders
    depth: np.ndarray  # (F, H, W) float32 z-depth, 0 = no hit
    paths: list[Path]  # OUT/render/NNNN.png


# ----------------------------------------------------------------------------------------------
# 1–2: the scene, the keyed camera, the Cycles renders


def key_camera(renderer: FrameRenderer, c2w: np.ndarray, lens: np.ndarray) -> object:
    """Key the renderer's camera at frames 1..F from OpenCV c2w (F, 4, 4) and lens (F,) in mm.

    Quaternions q and −q are the same rotation; keys must keep the sign of their predecessor or the
    interpolation between two keys swings the long way round.
    """
    cam = renderer.camera
    cam.name = cam.data.name = TRUE_CAMERA
    cam.rotation_mode = "QUATERNION"
    prev = None
    for i in range(len(c2w)):
        renderer.set_camera(c2w[i], float(lens[i]))
        q = np.array(cam.rotation_quaternion)
        if prev is not None and float(q @ prev) < 0:
            cam.rotation_quaternion = tuple(-q)
        prev = np.array(cam.rotation_quaternion)
        cam.keyframe_insert("location", frame=i + 1)
        cam.keyframe_insert("rotation_quaternion", frame=i + 1)
        cam.data.keyframe_insert("lens", frame=i + 1)
    return cam


def build_shot(args: argparse.Namespace, out: Path, work: Path) -> Shot:
    """Scene + keyed camera + Cycles frames written to OUT/render (see the module docstring, 1–2).

    Enables the extension right after the scene is built: build_scene resets Blender to factory
    settings, which would disable an add-on enabled before it.
    """
    from backend.data.synth_scene import build_scene

    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 6]))
    info = build_scene(rng, SceneConfig(layouts=(args.scene,)))
    build_extension.load_in_blender(build_extension.assemble(work / "extension"), REPO)
    traj_cfg = TrajectoryConfig(kinds=("orbit",), zoom_prob=1.0, zoom_max=0.25, shake_prob=0.0)
    traj = sample_trajectory(rng, args.frames, info.bounds, traj_cfg)
    cfg = SynthConfig(width=args.width, height=args.height, frames=args.frames, samples=args.samples, threads=0)
    (work / "cycles").mkdir()
    renderer = FrameRenderer(cfg, str(work / "cycles"), seed=args.seed)
    cam = key_camera(renderer, traj.c2w, traj.lens)
    scene = renderer.scene
    scene.frame_start, scene.frame_end = 1, args.frames
    rgb = np.zeros((args.frames, args.height, args.width, 3), np.uint8)
    depth = np.zeros((args.frames, args.height, args.width), np.float32)
    for i in range(args.frames):
        scene.frame_set(i + 1)  # the keys, not set_camera, place the camera now
        rgb[i], depth[i] = renderer.render()
    scene.frame_set(1)
    paths = addon("images").write_sequence(out / "render", rgb, start=1)
    log(f"rendered {args.frames} Cycles frames ({args.width}x{args.height}, {args.samples} spp, "
        f"{traj.kind} camera, lens {traj.lens[0]:.1f}→{traj.lens[-1]:.1f} mm) to {paths[0].parent}")
    return Shot(cam, list(range(1, args.frames + 1)), rgb, depth, paths)


# ----------------------------------------------------------------------------------------------
# 3–4: the add-on, a real backend, the jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_backend(args: argparse.Namespace, out: Path) -> dict:
    """Point the enabled extension at `python -m backend.cli serve`, start it; returns its hello."""
    prefs = bpy.context.preferences.addons[NAME].preferences
    prefs.address, prefs.timeout = f"tcp://127.0.0.1:{args.port or free_port()}", 30.0
    command = [sys.executable, "-m", "backend.cli", "serve", "--device", args.device, "--jobs", str(out / "jobs")]
    if args.checkpoint:
        command += ["--checkpoint", str(Path(args.checkpoint).resolve())]
    prefs.command = shlex.join(command)
    prefs.output_policy, prefs.output_dir = "FOLDER", str(out)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if bpy.ops.parallax.start_backend() != {"FINISHED"}:
        raise RuntimeError("parallax.start_backend did not start the backend (see OUT/backend.log)")
    props = bpy.context.scene.parallax
    if not addon("pump").run_until(lambda: props.connected or props.last_error, args.timeout):
        raise RuntimeError(f"the backend did not answer within {args.timeout:g} s (see {out / 'backend.log'})")
    if not props.connected:
        raise RuntimeError(f"the backend failed to start: {props.last_error}")
    with addon("_vendor.client").Client(prefs.address, 10.0) as client:
        return client.hello()


def run_job(operator, timeout: float):
    """Run a job operator the way a script does (execute, then pump); returns its finished job item."""
    if operator() != {"FINISHED"}:
        raise RuntimeError(f"{operator.idname()} refused to start: {bpy.context.scene.parallax.last_error}")
    job = bpy.context.scene.parallax.jobs[-1]
    if not addon("pump").run_until(lambda: job.state in ("done", "failed", "cancelled"), timeout):
        raise RuntimeError(f"{job.job_type} job still {job.state} after {timeout:g} s")
    if job.state != "done":
        raise RuntimeError(f"{job.job_type} job {job.state}: {job.message}")
    log(f"{job.job_type}: {job.message}")
    return job


def novel_views(args: argparse.Namespace, shot: Shot) -> tuple[np.ndarray, object]:
    """parallax.novel_views from the frame-1 render along the true camera; returns (frames (F, H, W, 3), job)."""
    scene, p = bpy.context.scene, bpy.context.scene.parallax
    scene.camera = shot.camera
    scene.frame_start, scene.frame_end = shot.frames[0], shot.frames[-1]
    p.nvs_image = bpy.data.images.load(str(shot.paths[0]), check_existing=True)
    p.nvs_image.name = "Source (frame 1)"
    # "Depth Scale" is how far the subject is in scene units; the demo knows it from the render.
    d0 = shot.depth[0][shot.depth[0] > 0]
    p.nvs_depth_scale = float(np.median(d0)) if d0.size else 1.0
    p.nvs_mesh, p.steps, p.seed = True, args.steps, args.seed
    job = run_job(bpy.ops.parallax.novel_views, args.job_timeout)
    paths = sorted((Path(job.out_dir) / "frames").glob("*.png"))
    return np.stack([addon("scene_io").load_image_file(q) for q in paths]), job


def recover_cameras(args: argparse.Namespace, shot: Shot) -> tuple[object, object]:
    """parallax.recover_cameras on OUT/render; returns (the new keyed camera, job)."""
    p = bpy.context.scene.parallax
    p.cam_clip, p.cam_folder, p.cam_points = None, str(shot.paths[0].parent), True
    job = run_job(bpy.ops.parallax.recover_cameras, args.job_timeout)
    return bpy.context.scene.camera, job


# ----------------------------------------------------------------------------------------------
# 5: the score


def score(K_true: np.ndarray, c2w_true: np.ndarray, K_rec: np.ndarray, c2w_rec: np.ndarray) -> dict:
    """ATE / RPE after Sim(3) of the recovered cameras, with scale-free context.

    `ate_static` is the ATE of a camera that never moves (every recovered pose the identity): the
    spread of the true centres, a floor any useful recovery must beat. Focal error is |f_rec/f_true − 1|.
    """
    a = align.ate(c2w_rec, c2w_true, align="sim3")
    r = align.rpe(c2w_rec, c2w_true, delta=1, align="sim3")
    static = align.ate(np.tile(np.eye(4), (len(c2w_true), 1, 1)), c2w_true, align="sim3")
    centres = c2w_true[:, :3, 3]
    path = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum())
    focal = np.abs(K_rec[:, 0, 0] / K_true[:, 0, 0] - 1.0)
    return {
        "ate_rmse": a["rmse"], "ate_mean": a["mean"], "ate_median": a["median"], "ate_max": a["max"],
        "sim3_scale": a["scale"], "ate_static": static["rmse"], "path_length": path,
        "ate_over_path": a["rmse"] / path if path > 0 else float("nan"),
        "rpe_trans_rmse": r["trans_rmse"], "rpe_rot_rmse_deg": r["rot_rmse_deg"],
        "focal_error_median": float(np.median(focal)),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# 6: files, and the whole run


def write_outputs(out: Path, views: np.ndarray, shot: Shot) -> dict[str, str]:
    """OUT/contact_sheet.png (novel views over ground truth, one column per frame) and OUT/demo.blend."""
    images = addon("images")
    F = len(shot.frames)
    sheet = images.contact_sheet(np.concatenate([views, shot.rgb]), columns=F)  # (2(H+2)+2, F(W+2)+2, 3)
    images.write_png(out / "contact_sheet.png", sheet)
    bpy.context.scene.frame_set(shot.frames[0])
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "demo.blend"), check_existing=False)
    return {"blend": str(out / "demo.blend"), "contact_sheet": str(out / "contact_sheet.png"),
            "render": str(shot.paths[0].parent)}


def run(args: argparse.Namespace, work: Path) -> dict:
    """Everything but the cleanup (`work`: a scratch folder for the extension and Cycles); returns
    what goes into demo.json."""
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t = {"start": time.perf_counter()}
    shot = build_shot(args, out, work)
    t["render"] = time.perf_counter()
    hello = start_backend(args, out)
    model = {k: hello.get(k) for k in ("model", "trained", "device", "parameters")}
    log(f"backend up: model {model['model']} ({'trained' if model['trained'] else 'UNTRAINED random weights'}) "
        f"on {model['device']}")
    t["backend"] = time.perf_counter()
    views, nvs_job = novel_views(args, shot)
    t["nvs"] = time.perf_counter()
    scene_io = addon("scene_io")
    K_true, c2w_true, _, _ = scene_io.read_camera_track(bpy.context.scene, shot.camera, shot.frames)
    cam, cam_job = recover_cameras(args, shot)
    t["cameras"] = time.perf_counter()
    K_rec, c2w_rec, _, _ = scene_io.read_camera_track(bpy.context.scene, cam, shot.frames)
    files = write_outputs(out, views, shot)
    names = ["render", "backend", "nvs", "cameras"]
    seconds = {n: round(t[n] - t[p], 2) for p, n in zip(["start", *names], names)}
    return {"model": model, "frames": len(shot.frames), "width": args.width, "height": args.height,
            "cycles_samples": args.samples, "steps": args.steps, "seed": args.seed, "scene": args.scene,
            "true_camera": TRUE_CAMERA, "recovered_camera": cam.name,
            "metrics": score(K_true, c2w_true, K_rec, c2w_rec),
            "jobs": {"nvs": nvs_job.out_dir, "cameras": cam_job.out_dir}, "files": files, "seconds": seconds}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--frames", type=int, default=16, help="frames in the shot")
    p.add_argument("--width", type=int, default=128, help="render width")
    p.add_argument("--height", type=int, default=96, help="render height")
    p.add_argument("--samples", type=int, default=8, help="Cycles samples per pixel")
    p.add_argument("--steps", type=int, default=8, help="sampling steps of each job")
    p.add_argument("--seed", type=int, default=0, help="scene, camera and sampling seed")
    p.add_argument("--scene", default="outdoor", choices=("outdoor", "room"), help="procedural layout")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="backend device")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the embedded model)")
    p.add_argument("--port", type=int, default=0, help="backend port (0: a free one)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the backend and each job")
    p.add_argument("--job-timeout", type=float, default=None, help="seconds to wait for each job (default: --timeout)")
    args = p.parse_args(argv)
    args.job_timeout = args.timeout if args.job_timeout is None else args.job_timeout
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="parallax-demo-") as work:
        try:
            result = run(args, Path(work))
        finally:
            if NAME in bpy.context.preferences.addons:  # always stop the backend and the worker thread
                addon("session").SESSION.shutdown()
    path = Path(args.out).resolve() / "demo.json"
    path.write_text(json.dumps(result, indent=1, allow_nan=True))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
