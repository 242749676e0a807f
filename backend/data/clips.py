"""Clip folders, images, masks and videos: all file I/O for frames, in one place (numpy + OpenCV).

A *clip folder* (see DESIGN.md, "Files"):

    images/0000.png ...     RGB frames, 4-digit zero-padded, 0-based (`frame_name`)
    depth/0000.npy ...      optional float32 z-depth in scene units, 0 = unknown; all frames or none
    transforms.json         optional cameras in nerfstudio's format (`backend.geometry.cameras`),
                            `file_path` / `depth_file_path` relative to the folder
    clip.json               optional metadata, {"fps": float}: the frame rate has no place in
                            transforms.json and must survive clips without cameras

Writers are atomic: files go to a temp sibling and are renamed into place (os.replace for files, a
folder rename for clips), so a crash or a bad input never leaves a half-written result behind.
Videos are written with OpenCV's FFMPEG backend as MPEG-4 Part 2 ('mp4v') in .mp4 or Motion-JPEG
('MJPG') in .avi, the two codecs the headless OpenCV wheel can both encode and decode.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass

import cv2
import numpy as np

from backend.data.ply import atomic_write_bytes
from backend.geometry.cameras import Cameras, cameras_from_transforms, cameras_to_transforms

IMAGES_DIR = "images"  # clip sub-folder of RGB frames
DEPTH_DIR = "depth"  # clip sub-folder of float32 depth maps
TRANSFORMS_FILE = "transforms.json"  # nerfstudio cameras
META_FILE = "clip.json"  # {"fps": float}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".exr")
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}  # extension -> FourCC that OpenCV can write and read


def frame_name(i: int, ext: str = ".png") -> str:
    """File name of frame i: 0 -> '0000.png' (4 digits, more when needed). Every writer uses this."""
    if isinstance(i, bool) or not isinstance(i, int | np.integer) or i < 0:
        raise ValueError(f"frame index must be an int >= 0, got {i!r}")
    return f"{int(i):04d}{ext}"


def image_relpath(i: int) -> str:
    """Path of frame i's image relative to the clip folder, as written into transforms.json."""
    return f"{IMAGES_DIR}/{frame_name(i)}"


def depth_relpath(i: int) -> str:
    """Path of frame i's depth map relative to the clip folder."""
    return f"{DEPTH_DIR}/{frame_name(i, '.npy')}"


def natural_key(name: str) -> list:
    """Sort key where digit runs compare as numbers ('frame_2' < 'frame_10'); equals plain order for NNNN."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image file names in `folder` (by extension), in natural name order."""
    names = [n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTS]
    return sorted(names, key=natural_key)


# ----------------------------------------------------------------------------------------------------
# the Clip


def _check_images(images) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"Clip.images must be a uint8 ndarray, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[:3]) < 1:
        raise ValueError(f"Clip.images must have shape (F, H, W, 3) with F, H, W >= 1, got {images.shape}")


def _check_depth(depth, shape: tuple[int, ...], name: str = "Clip.depth") -> None:
    """depth: float32 of `shape`, finite, >= 0 (0 marks unknown)."""
    if not isinstance(depth, np.ndarray) or depth.dtype != np.float32:
        raise ValueError(f"{name} must be a float32 ndarray, got {getattr(depth, 'dtype', type(depth))}")
    if depth.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {depth.shape}")
    if not np.isfinite(depth).all():
        raise ValueError(f"{name} has non-finite values (use 0 for unknown depth)")
    if (depth < 0).any():
        raise ValueError(f"{name} has negative values (min {depth.min()})")


@dataclass
class Clip:
    """A clip in memory: frames plus whatever geometry is known about them."""

    images: np.ndarray  # (F, H, W, 3) uint8 RGB
    depth: np.ndarray | None = None  # (F, H, W) float32 z-depth in scene units, 0 = unknown
    cameras: Cameras | None = None  # F cameras of size W x H, OpenCV axes, continuous pixels
    fps: float | None = None  # frames per second, None when unknown

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_frames(self) -> int:
        return self.images.shape[0]

    def validate(self) -> None:
        """Raise ValueError naming the field that is inconsistent."""
        _check_images(self.images)
        F, H, W = self.images.shape[:3]
        if self.depth is not None:
            _check_depth(self.depth, (F, H, W))
        if self.cameras is not None:
            if not isinstance(self.cameras, Cameras):
                raise ValueError(f"Clip.cameras must be a Cameras, got {type(self.cameras).__name__}")
            if len(self.cameras) != F:
                raise ValueError(f"Clip.cameras has {len(self.cameras)} cameras for {F} frames")
            if (self.cameras.width, self.cameras.height) != (W, H):
                raise ValueError(f"Clip.cameras size {self.cameras.width}x{self.cameras.height} != image size {W}x{H}")
        if self.fps is not None:
            if isinstance(self.fps, bool) or not isinstance(self.fps, int | float | np.number):
                raise ValueError(f"Clip.fps must be a number or None, got {self.fps!r}")
            if not (math.isfinite(self.fps) and self.fps > 0):
                raise ValueError(f"Clip.fps must be finite and > 0, got {self.fps!r}")
            self.fps = float(self.fps)


# ----------------------------------------------------------------------------------------------------
# images and masks


def _temp_sibling(path: str, suffix: str = ".tmp") -> str:
    """A fresh hidden name beside `path`: same folder, so the final os.replace is an atomic rename."""
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}.{uuid.uuid4().hex[:12]}{suffix}")


def _decode(path: str) -> np.ndarray:
    """Decode any image OpenCV reads, unchanged (bit depth, channels); ValueError naming the path."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode also works for non-ASCII paths
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise ValueError(f"cannot decode image {path} (corrupt or unsupported format)")
    return img


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Scale 16-bit (v/257, exact for 8-bit values stored as 16) and float (0..1) images to uint8."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return np.round(img / 257.0).astype(np.uint8)
    if img.dtype.kind == "f":
        return np.round(np.clip(np.nan_to_num(img), 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {img.dtype}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB.

    Grayscale is repeated into three channels, alpha is dropped (not composited), 16-bit is divided
    by 257 and float images are taken as 0..1. ValueError naming the path if it cannot be decoded.
    """
    path = os.fspath(path)
    img = _decode(path)
    try:
        img = _to_uint8(img)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"{path}: unsupported image layout {img.shape}")
    if img.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    return np.ascontiguousarray(img[:, :, 2::-1])  # BGR(A) -> RGB


def _encode(path: str, img: np.ndarray) -> bytes:
    """Encode with the codec of the path's extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in IMAGE_EXTS:
        raise ValueError(f"unsupported image extension {ext!r} for {path}; use one of {IMAGE_EXTS}")
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise ValueError(f"OpenCV could not encode {path}")
    return buf.tobytes()


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image atomically; the format follows the extension (PNG is lossless)."""
    path = os.fspath(path)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"write_image: rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    atomic_write_bytes(path, _encode(path, np.ascontiguousarray(rgb[:, :, ::-1])))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask image as (H, W) bool: True where the pixel is above half of full scale.

    A non-constant alpha channel is the mask (a painted alpha); otherwise the brightest colour channel
    is, so white-on-black masks in any format work.
    """
    path = os.fspath(path)
    img = _decode(path)
    try:
        img = _to_uint8(img)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if img.ndim == 3 and img.shape[2] == 4 and img[:, :, 3].min() != img[:, :, 3].max():
        return img[:, :, 3] >= 128
    return (img.max(axis=2) if img.ndim == 3 else img) >= 128


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write an (H, W) bool mask as a black/white 8-bit image, atomically (read back by `read_mask`)."""
    path = os.fspath(path)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim != 2:
        raise ValueError(f"write_mask: mask must be (H, W) bool, got {mask.shape} {mask.dtype}")
    atomic_write_bytes(path, _encode(path, mask.astype(np.uint8) * 255))


# ----------------------------------------------------------------------------------------------------
# videos


def _check_video_args(max_frames, stride) -> None:
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise ValueError(f"read_video: stride must be an int >= 1, got {stride!r}")
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, int | np.integer) or max_frames < 1
    ):
        raise ValueError(f"read_video: max_frames must be None or an int >= 1, got {max_frames!r}")


def read_video(path: str | os.PathLike, max_frames: int | None = None, stride: int = 1) -> tuple[np.ndarray, float]:
    """Decode a video with cv2.VideoCapture: every `stride`-th frame, at most `max_frames` of them.

    Returns frames (F, H, W, 3) uint8 RGB and the frame rate *of the returned frames*, i.e. the
    container's fps / stride, so that writing them back keeps the clip's duration.
    FileNotFoundError if the file is missing; ValueError naming the path if it cannot be decoded,
    has no frames or reports no frame rate.
    """
    path = os.fspath(path)
    _check_video_args(max_frames, stride)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file {path} does not exist")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise ValueError(f"cannot open video {path} (empty, corrupt or unsupported codec)")
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        frames: list[np.ndarray] = []
        index = 0
        while (max_frames is None or len(frames) < max_frames) and cap.grab():
            if index % stride == 0:  # grab() alone skips a frame without the colour conversion
                ok, bgr = cap.retrieve()
                if not ok:
                    break
                if frames and bgr.shape != frames[0].shape:
                    raise ValueError(f"{path}: frame {index} is {bgr.shape}, frame 0 was {frames[0].shape}")
                frames.append(bgr)
            index += 1
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"video {path} has no decodable frames")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"video {path} reports no valid frame rate ({fps})")
    return np.ascontiguousarray(np.stack(frames)[..., ::-1]), fps / stride  # BGR -> RGB, (F, H, W, 3)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Write (F, H, W, 3) uint8 RGB frames as .mp4 (MPEG-4 'mp4v') or .avi (Motion-JPEG), atomically.

    Both codecs are lossy; MJPG at OpenCV's default quality is the closer of the two. The file is
    encoded under a temp name beside `path` (same extension, so OpenCV picks the same container)
    and renamed into place only when complete.
    """
    path = os.fspath(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[:3]) < 1:
        raise ValueError(f"write_video: frames must be (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if isinstance(fps, bool) or not isinstance(fps, int | float | np.number) or not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"write_video: fps must be finite and > 0, got {fps!r}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in VIDEO_CODECS:
        raise ValueError(f"write_video: extension {ext!r} of {path} not in {sorted(VIDEO_CODECS)}")
    _F, H, W, _ = frames.shape
    if H % 2 or W % 2:  # both codecs store 4:2:0 chroma and would silently crop the odd row/column
        raise ValueError(f"write_video: frame size {W}x{H} must be even in both dimensions (crop or pad)")
    tmp = _temp_sibling(path, suffix=ext)
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*VIDEO_CODECS[ext]), float(fps), (W, H))
    try:
        if not writer.isOpened():
            raise ValueError(f"OpenCV cannot open a {VIDEO_CODECS[ext]} writer for {path} at {W}x{H}")
        for rgb in frames:
            writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
        writer.release()
        if not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
            raise ValueError(f"OpenCV wrote nothing for {path}")
        os.replace(tmp, path)
    finally:
        writer.release()
        if os.path.exists(tmp):
            os.unlink(tmp)


# ----------------------------------------------------------------------------------------------------
# clip folders: reading


def _read_image_stack(paths: list[str]) -> np.ndarray:
    """Read images of one size into (F, H, W, 3) uint8; ValueError naming the first odd one out."""
    first = read_image(paths[0])
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)  # (F, H, W, 3)
    out[0] = first
    for i, p in enumerate(paths[1:], start=1):
        img = read_image(p)
        if img.shape != first.shape:
            raise ValueError(f"{p} is {img.shape[1]}x{img.shape[0]} but {paths[0]} is "
                             f"{first.shape[1]}x{first.shape[0]}")  # fmt: skip
        out[i] = img
    return out


def _read_depth(folder: str, stems: list[str], hw: tuple[int, int]) -> np.ndarray | None:
    """depth/<stem>.npy for every image stem, or None when depth/ is absent or empty."""
    ddir = os.path.join(folder, DEPTH_DIR)
    found = {os.path.splitext(n)[0] for n in os.listdir(ddir) if n.endswith(".npy")} if os.path.isdir(
        ddir) else set()  # fmt: skip
    if not found:
        return None
    for stem in stems:
        if stem not in found:
            raise ValueError(f"{os.path.join(ddir, stem + '.npy')} is missing: depth must cover all frames or none")
    if extra := sorted(found - set(stems)):
        raise ValueError(f"{os.path.join(ddir, extra[0] + '.npy')} has no matching image in {IMAGES_DIR}/")
    out = np.empty((len(stems), *hw), dtype=np.float32)  # (F, H, W)
    for i, stem in enumerate(stems):
        p = os.path.join(ddir, stem + ".npy")
        try:
            d = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read depth {p}: {e}") from e
        if d.dtype.kind not in "fiu":
            raise ValueError(f"depth {p} has non-numeric dtype {d.dtype}")
        with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf and is reported below
            _check_depth(d.astype(np.float32), hw, name=f"depth {p}")
        out[i] = d
    return out


def _norm_relpath(p: str, folder: str) -> str:
    """Normalise a transforms.json path ('./images/0000.png', absolute, backslashes) for matching."""
    p = p.replace("\\", "/")
    if os.path.isabs(p):
        p = os.path.relpath(p, folder)
    return os.path.normpath(p).replace("\\", "/")


def _read_cameras(folder: str, names: list[str], width: int, height: int) -> Cameras | None:
    """Cameras from transforms.json, reordered to the image order by matching `file_path`."""
    tf = os.path.join(folder, TRANSFORMS_FILE)
    if not os.path.exists(tf):
        return None
    try:
        with open(tf, encoding="utf-8") as f:
            d = json.load(f)
        cams, paths = cameras_from_transforms(d)
    except (OSError, ValueError, TypeError, KeyError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{tf}: {e}") from e
    if len(paths) != len(names):
        raise ValueError(f"{tf} has {len(paths)} frames but {IMAGES_DIR}/ has {len(names)} images")
    index: dict[str, int] = {}
    for i, n in enumerate(names):  # match with or without extension (NeRF-synthetic omits it)
        rel = f"{IMAGES_DIR}/{n}"
        index[rel] = index[os.path.splitext(rel)[0]] = i
    order = np.full(len(names), -1)
    for k, p in enumerate(paths):
        rel = _norm_relpath(str(p), folder)
        i = index.get(rel, index.get(os.path.splitext(rel)[0]))
        if i is None or order[i] >= 0:
            why = "matches no image" if i is None else "repeats an image"
            raise ValueError(f"{tf}: frame {k} file_path {p!r} {why} in {IMAGES_DIR}/")
        order[i] = k
    if (cams.width, cams.height) != (width, height):
        raise ValueError(f"{tf}: cameras are {cams.width}x{cams.height} but images are {width}x{height}")
    return cams[order]


def _read_fps(folder: str) -> float | None:
    meta = os.path.join(folder, META_FILE)
    if not os.path.exists(meta):
        return None
    try:
        with open(meta, encoding="utf-8") as f:
            fps = json.load(f).get("fps")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"cannot read {meta}: {e}") from e
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float) or not fps > 0):
        raise ValueError(f"{meta}: fps must be a number > 0, got {fps!r}")
    return None if fps is None else float(fps)


def _require_folder(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not os.path.isdir(path):
        raise ValueError(f"{what} {path} is not a folder")


def read_clip(path: str | os.PathLike) -> Clip:
    """Read a clip folder (images/, optional depth/, transforms.json, clip.json) into a Clip.

    Images are taken in natural name order (plain order for NNNN names); depth maps and cameras are
    matched to them by name. FileNotFoundError for a missing folder, ValueError naming the file for
    anything unreadable or inconsistent.
    """
    path = os.fspath(path)
    _require_folder(path, "clip folder")
    img_dir = os.path.join(path, IMAGES_DIR)
    if not os.path.isdir(img_dir):
        raise ValueError(f"{path} is not a clip folder: no {IMAGES_DIR}/ sub-folder")
    names = list_images(img_dir)
    if not names:
        raise ValueError(f"{img_dir} has no images")
    images = _read_image_stack([os.path.join(img_dir, n) for n in names])  # (F, H, W, 3)
    _F, H, W, _ = images.shape
    depth = _read_depth(path, [os.path.splitext(n)[0] for n in names], (H, W))
    cameras = _read_cameras(path, names, W, H)
    return Clip(images=images, depth=depth, cameras=cameras, fps=_read_fps(path))


def read_frames(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """Frames (F, H, W, 3) uint8 RGB and fps (None if unknown) from a video file, a single image,
    a clip folder (its images/ and clip.json) or a plain folder of images (natural name order)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() in IMAGE_EXTS:
            return read_image(path)[None], None
        return read_video(path)
    _require_folder(path, "frames path")
    img_dir = os.path.join(path, IMAGES_DIR)
    is_clip = os.path.isdir(img_dir)
    folder = img_dir if is_clip else path
    names = list_images(folder)
    if not names:
        raise ValueError(f"{folder} has no images")
    frames = _read_image_stack([os.path.join(folder, n) for n in names])
    return frames, _read_fps(path) if is_clip else None


# ----------------------------------------------------------------------------------------------------
# clip folders: writing


def _write_clip_contents(folder: str, clip: Clip) -> None:
    """Write every file of `clip` into the (new, empty) `folder`."""
    F = clip.num_frames
    os.mkdir(os.path.join(folder, IMAGES_DIR))
    for i in range(F):
        with open(os.path.join(folder, image_relpath(i)), "wb") as f:
            f.write(_encode(f.name, np.ascontiguousarray(clip.images[i, :, :, ::-1])))  # RGB -> BGR
    if clip.depth is not None:
        os.mkdir(os.path.join(folder, DEPTH_DIR))
        for i in range(F):
            np.save(os.path.join(folder, depth_relpath(i)), clip.depth[i], allow_pickle=False)
    if clip.cameras is not None:
        d = cameras_to_transforms(clip.cameras, [image_relpath(i) for i in range(F)])
        if clip.depth is not None:
            for i, frame in enumerate(d["frames"]):
                frame["depth_file_path"] = depth_relpath(i)
        with open(os.path.join(folder, TRANSFORMS_FILE), "w", encoding="utf-8") as f:
            json.dump(d, f, indent=2)
    if clip.fps is not None:
        with open(os.path.join(folder, META_FILE), "w", encoding="utf-8") as f:
            json.dump({"fps": clip.fps}, f)


def write_clip(path: str | os.PathLike, clip: Clip, overwrite: bool = False) -> None:
    """Write a clip folder atomically: build it in a hidden sibling folder, then rename it into place.

    The clip is re-validated first (it may have been mutated since construction). With
    overwrite=True an existing folder is swapped out only after the new one is complete. On any
    error the temp folder is removed and an existing folder is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    if not isinstance(clip, Clip):
        raise ValueError(f"write_clip: clip must be a Clip, got {type(clip).__name__}")
    clip.validate()
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
        if not os.path.isdir(path) or os.path.islink(path):
            raise ValueError(f"{path} exists and is not a folder; refusing to replace it")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp, old = _temp_sibling(path), None
    try:
        os.mkdir(tmp)
        _write_clip_contents(tmp, clip)
        if os.path.lexists(path):
            old = _temp_sibling(path, ".old")
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        if old is not None and not os.path.lexists(path):
            os.rename(old, path)  # put the previous clip back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
