"""Applying a finished job to the scene (called by the pump only, on Blender's main thread).

Every result is first written to disk under the job's folder (frames as NNNN.png numbered by scene
frame, depth as depth.npy, cameras as transforms.json, meshes as PLY), then shown in the scene, so
nothing is lost if the scene is closed without saving.
"""

from __future__ import annotations

import json
from pathlib import Path

import bpy
import numpy as np

from . import camera_io, images, scene_io
from ._vendor import ply
from .session import JobContext


def _frames(ctx: JobContext, arrays: dict, folder: str = "frames") -> list[Path]:
    frames = arrays.get("images")
    if frames is None or frames.ndim != 4:
        raise ValueError(f"{ctx.job_type}: the result has no 'images' (F, H, W, 3)")
    return images.write_sequence(ctx.out_dir / folder, np.asarray(frames, np.uint8), ctx.frame_start)


def _mesh(scene, ctx: JobContext, arrays: dict, name: str):
    if "vertices" not in arrays and "points" not in arrays:
        return None
    verts = arrays.get("vertices", arrays.get("points"))
    faces = arrays.get("faces") if "vertices" in arrays else None
    colors = arrays.get("colors")
    ply.write_ply(ctx.out_dir / f"{name}.ply", np.asarray(verts, np.float32), colors=colors, faces=faces)
    return scene_io.add_mesh(scene, f"Parallax {name}", verts, faces, colors)


def _save_cameras(ctx: JobContext, arrays: dict, paths: list[Path], width: int, height: int) -> None:
    if "K" in arrays and "c2w" in arrays and len(arrays["K"]) == len(paths):
        d = camera_io.transforms_dict(arrays["K"], arrays["c2w"], width, height,
                                      [str(p) for p in paths])
        (ctx.out_dir / "transforms.json").write_text(json.dumps(d, indent=1))


def apply_nvs(scene, ctx: JobContext, arrays: dict, params: dict) -> str:
    paths = _frames(ctx, arrays)
    if "depth" in arrays:
        np.save(ctx.out_dir / "depth.npy", np.asarray(arrays["depth"], np.float32))
    H, W = arrays["images"].shape[1:3]
    _save_cameras(ctx, arrays, paths, W, H)
    img = scene_io.load_sequence_image(paths[0], f"Parallax views {ctx.tag}")
    cam = scene.objects.get(ctx.options.get("camera", ""))
    if cam is not None and cam.type == "CAMERA":
        scene_io.show_behind_camera(cam, img, ctx.frame_start, len(paths))
    scene_io.add_strip(scene, f"Parallax views {ctx.tag}", paths, ctx.frame_start)
    mesh = _mesh(scene, ctx, arrays, "mesh")
    return f"{len(paths)} views in {paths[0].parent}" + (f", mesh {mesh.name}" if mesh else "")


def apply_cameras(scene, ctx: JobContext, arrays: dict, params: dict) -> str:
    for key in ("K", "c2w"):
        if key not in arrays:
            raise ValueError(f"cameras: the result has no {key!r}")
    W, H = ctx.options["width"], ctx.options["height"]
    paths = [Path(p) for p in ctx.options["paths"]]
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    _save_cameras(ctx, arrays, paths, W, H)
    scene_io.set_scene_to_clip(scene, len(paths), W, H, ctx.options.get("fps"), ctx.frame_start)
    cam = scene_io.create_camera(scene, "Parallax Camera", arrays["K"], arrays["c2w"], W, H, ctx.frame_start)
    img = scene_io.load_sequence_image(paths[0], f"Parallax clip {ctx.tag}")
    scene_io.show_behind_camera(cam, img, ctx.frame_start, len(paths))
    if "depth" in arrays:
        np.save(ctx.out_dir / "depth.npy", np.asarray(arrays["depth"], np.float32))
    pts = _mesh(scene, ctx, arrays, "points") if ctx.options.get("points", True) else None
    return f"camera {cam.name} keyed over {len(paths)} frames" + (f", points {pts.name}" if pts else "")


def apply_sequence(scene, ctx: JobContext, arrays: dict, params: dict) -> str:
    """Edit propagation and interpolation: a new image sequence in the sequencer."""
    paths = _frames(ctx, arrays)
    scene_io.add_strip(scene, f"Parallax {ctx.job_type} {ctx.tag}", paths, ctx.frame_start)
    return f"{len(paths)} frames in {paths[0].parent}"


def apply_depth(scene, ctx: JobContext, arrays: dict, params: dict) -> str:
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    np.save(ctx.out_dir / "depth.npy", np.asarray(arrays["depth"], np.float32))
    return f"depth saved to {ctx.out_dir / 'depth.npy'}"


APPLY = {"nvs": apply_nvs, "cameras": apply_cameras, "edit": apply_sequence, "interpolate": apply_sequence,
         "depth": apply_depth}


def apply(ctx: JobContext, arrays: dict, params: dict) -> str:
    """Write and show one result; returns a one-line summary. Raises ValueError for a malformed result."""
    scene = bpy.data.scenes.get(ctx.scene)
    if scene is None:
        raise ValueError(f"scene {ctx.scene!r} no longer exists; the result is in the backend's job folder")
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return APPLY[ctx.job_type](scene, ctx, arrays, params)
