"""Reading inputs from and writing results into the Blender scene (bpy; the maths is in camera_io).

Cameras are exported per frame (scene.frame_set, then matrix_world and the camera settings) and
imported as keyed objects: location + quaternion keys (signs continuous), lens and shift keys,
sensor, resolution and pixel aspect on the scene. Images travel as uint8 numpy arrays; meshes and
point clouds are built with foreach_set and carry a per-point colour attribute.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import bpy
import numpy as np

from . import camera_io, images

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".bmp", ".webp"}


# ----------------------------------------------------------------------------- cameras out


def camera_settings(scene, cam_obj) -> dict:
    """The BlenderCameraParams fields for the current frame."""
    out = {k: getattr(cam_obj.data, k) for k in camera_io.CAMERA_FIELDS}
    out |= {k: getattr(scene.render, k) for k in camera_io.RENDER_FIELDS}
    return out


def read_camera_track(scene, cam_obj, frames: list[int]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(K (F, 3, 3), c2w (F, 4, 4) OpenCV, width, height) of an animated camera at `frames`."""
    if cam_obj is None or cam_obj.type != "CAMERA":
        raise ValueError("camera: the scene needs an active camera object")
    if cam_obj.data.type != "PERSP":
        raise ValueError(f"camera: {cam_obj.name} is {cam_obj.data.type}; only perspective cameras are supported")
    current = scene.frame_current
    settings, mats = [], []
    try:
        for f in frames:
            scene.frame_set(f)
            settings.append(camera_settings(scene, cam_obj))
            mats.append(np.array(cam_obj.matrix_world, dtype=np.float64))
    finally:
        scene.frame_set(current)
    return camera_io.export_track(settings, np.stack(mats))


# ----------------------------------------------------------------------------- cameras in


def _key_all(target, path: str, values: np.ndarray, frames: np.ndarray) -> None:
    """Key `target.path` (vector (F, n) or scalar (F,)) at each frame, linear in between."""
    for f, v in zip(frames, values):
        if np.ndim(v):
            setattr(target, path, tuple(float(x) for x in v))
        else:
            setattr(target, path, float(v))
        target.keyframe_insert(path, frame=int(f))


def create_camera(scene, name: str, K: np.ndarray, c2w: np.ndarray, width: int, height: int,
                  frame_start: int = 1):
    """A new camera object keyed per frame so that it renders (K, c2w) at width x height.

    Sets the scene's resolution (100 %), pixel aspect and makes it the scene camera.
    """
    keys = camera_io.keys_from_cameras(K, c2w, width, height)
    data = bpy.data.cameras.new(name)
    obj = bpy.data.objects.new(name, data)
    scene.collection.objects.link(obj)
    data.sensor_fit, data.sensor_width, data.sensor_height = "HORIZONTAL", keys.sensor_width, keys.sensor_height
    obj.rotation_mode = "QUATERNION"
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = keys.resolution_x, keys.resolution_y, 100
    r.pixel_aspect_x, r.pixel_aspect_y = keys.pixel_aspect_x, keys.pixel_aspect_y
    frames = frame_start + np.arange(len(keys.lens))
    _key_all(obj, "location", keys.locations, frames)
    _key_all(obj, "rotation_quaternion", keys.quaternions, frames)
    for path in ("lens", "shift_x", "shift_y"):
        _key_all(data, path, getattr(keys, path), frames)
    for idb in (obj, data):
        _set_linear(idb)
    scene.camera = obj
    return obj


def _set_linear(idb) -> None:
    """Linear interpolation on every key of idb's action (Blender 4.4+ layered actions and older)."""
    ad = idb.animation_data
    if ad is None or ad.action is None:
        return
    fcurves = getattr(ad.action, "fcurves", None)
    if fcurves is None:  # Blender 5.0: the F-curves live in the slot's channelbag
        from bpy_extras import anim_utils

        bag = anim_utils.action_get_channelbag_for_slot(ad.action, ad.action_slot)
        fcurves = bag.fcurves if bag is not None else []
    for fc in fcurves:
        for kp in fc.keyframe_points:
            kp.interpolation = "LINEAR"


# ----------------------------------------------------------------------------- images in


def image_to_array(image) -> np.ndarray:
    """An Image datablock → uint8 (H, W, 3) top-down (its own colour space, as stored)."""
    W, H = image.size
    if W == 0 or H == 0:
        raise ValueError(f"image {image.name!r} has no pixels (missing file {image.filepath!r}?)")
    px = np.empty(W * H * image.channels, np.float32)
    image.pixels.foreach_get(px)
    return images.from_blender_pixels(px, W, H, image.channels)


def load_image_file(path: str | os.PathLike) -> np.ndarray:
    """Read one image file through Blender's loaders → uint8 (H, W, 3); the datablock is removed."""
    path = Path(bpy.path.abspath(str(path)))
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        return image_to_array(img)
    finally:
        bpy.data.images.remove(img)


def sequence_paths(first: str | os.PathLike) -> list[Path]:
    """Files of the image sequence that `first` belongs to (same prefix/suffix, numbered), in order."""
    first = Path(bpy.path.abspath(str(first)))
    m = re.match(r"^(.*?)(\d+)(\.[^.]+)$", first.name)
    if not m:
        return [first]
    prefix, _, suffix = m.groups()
    pat = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    found = [(int(mm.group(1)), p) for p in first.parent.iterdir() if (mm := pat.match(p.name))]
    return [p for n, p in sorted(found) if n >= int(m.group(2))]


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value: frame_2 before frame_10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def folder_paths(folder: str | os.PathLike) -> list[Path]:
    folder = Path(bpy.path.abspath(str(folder)))
    if not folder.is_dir():
        raise ValueError(f"frames folder not found: {folder}")
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=lambda p: natural_key(p.name))


def clip_paths(clip, folder: str) -> list[Path]:
    """Frame files of a movie clip (image sequences only) or of a folder."""
    if clip is not None:
        if clip.source != "SEQUENCE":
            raise ValueError(f"clip {clip.name!r} is a movie file: export it as an image sequence first")
        return sequence_paths(clip.filepath)[: clip.frame_duration]
    if folder:
        return folder_paths(folder)
    raise ValueError("clip: choose a movie clip or a frames folder")


def read_frames(paths: list[Path]) -> np.ndarray:
    """uint8 (F, H, W, 3) from frame files (all the same size)."""
    if not paths:
        raise ValueError("clip: no frames found")
    frames = [load_image_file(p) for p in paths]
    if any(f.shape != frames[0].shape for f in frames):
        raise ValueError("clip: frames differ in size")
    return np.stack(frames)


# ----------------------------------------------------------------------------- results out


def load_sequence_image(first: Path, name: str):
    img = bpy.data.images.load(str(first), check_existing=False)
    img.name, img.source = name, "SEQUENCE"
    return img


def show_behind_camera(cam_obj, image, frame_start: int, frames: int) -> None:
    """The image sequence as the camera's background, aligned with the scene frames.

    Blender shows file number (scene frame - image_user.frame_start + 1 + frame_offset), so the offset
    is the first file's number minus 1: file N at `frame_start`, whether the files are numbered by
    scene frame (our results) or from any other number (a clip numbered 1001, ...).
    """
    cam = cam_obj.data
    cam.show_background_images = True
    bg = cam.background_images.new()
    bg.image = image
    m = re.match(r"^.*?(\d+)\.[^.]+$", Path(bpy.path.abspath(image.filepath)).name)
    bg.image_user.frame_start, bg.image_user.frame_duration = frame_start, frames
    bg.image_user.frame_offset = int(m.group(1)) - 1 if m else 0
    bg.image_user.use_auto_refresh = True
    bg.alpha = 1.0


def add_strip(scene, name: str, paths: list[Path], frame_start: int, channel: int | None = None):
    """An image strip in the scene's sequencer with one element per file."""
    se = scene.sequence_editor or scene.sequence_editor_create()
    new5 = hasattr(se, "strips")  # Blender 5.0 renamed sequences → strips
    strips, every = (se.strips, se.strips_all) if new5 else (se.sequences, se.sequences_all)
    used = {s.channel for s in every}
    channel = channel or next(c for c in range(1, 129) if c not in used)
    strip = strips.new_image(name=name, filepath=str(paths[0]), channel=channel, frame_start=frame_start)
    for p in paths[1:]:
        strip.elements.append(p.name)
    return strip


def add_mesh(scene, name: str, vertices: np.ndarray, faces: np.ndarray | None = None,
             colors: np.ndarray | None = None):
    """A mesh object from (N, 3) vertices, optional (M, 3) triangles and (N, 3) uint8 colours (a point
    cloud when faces is None); colours become a per-point byte colour attribute 'Col'."""
    vertices = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1, 3)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.ravel())
    if faces is not None and len(faces):
        faces = np.ascontiguousarray(faces, dtype=np.int32).reshape(-1, 3)
        if faces.min() < 0 or faces.max() >= len(vertices):
            raise ValueError(f"faces index vertices outside 0..{len(vertices) - 1}")
        mesh.loops.add(faces.size)
        mesh.loops.foreach_set("vertex_index", faces.ravel())
        mesh.polygons.add(len(faces))
        mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
        mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, np.int32))
    if colors is not None:
        rgba = np.ones((len(vertices), 4), np.float32)
        rgba[:, :3] = np.asarray(colors, np.float32).reshape(-1, 3)[:, :3] / 255.0
        attr = mesh.color_attributes.new("Col", "BYTE_COLOR", "POINT")
        attr.data.foreach_set("color_srgb", rgba.ravel())
    mesh.update()
    mesh.validate()
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    return obj


def set_scene_to_clip(scene, frames: int, width: int, height: int, fps: float | None, frame_start: int = 1) -> None:
    """Frame range, resolution (100 %) and frame rate of the scene follow the clip."""
    scene.frame_start, scene.frame_end = frame_start, frame_start + frames - 1
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
    if fps:
        r.fps, r.fps_base = max(1, round(fps)), max(1, round(fps)) / fps
