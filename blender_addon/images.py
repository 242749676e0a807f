"""Frames as numpy arrays: PNG writing (numpy + zlib, no bpy) and Blender pixel buffers.

PNG (ISO/IEC 15948): signature, IHDR, one zlib-compressed IDAT of scanlines each prefixed by a filter
byte (0 = none; the "up" filter would compress better but none keeps this trivially correct), IEND;
each chunk carries a CRC-32 of its type and data. Writing through bpy would need an Image datablock
per frame; this is faster and keeps result writing off bpy entirely.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from pathlib import Path

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """uint8 image (H, W, 3) RGB or (H, W, 4) RGBA, rows top-down → PNG bytes."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4) or 0 in image.shape:
        raise ValueError(f"image must be uint8 (H, W, 3|4), got {image.dtype} {image.shape}")
    H, W, C = image.shape
    rows = np.concatenate([np.zeros((H, 1), np.uint8), image.reshape(H, W * C)], axis=1)  # filter 0
    header = struct.pack(">IIBBBBB", W, H, 8, 2 if C == 3 else 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _chunk(b"IEND", b""))


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write atomically (temp file + rename) so a viewer never sees half a frame."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(encode_png(image))
    os.replace(tmp, path)
    return path


def write_sequence(folder: str | os.PathLike, frames: np.ndarray, start: int = 1) -> list[Path]:
    """uint8 frames (F, H, W, 3) → folder/NNNN.png numbered from `start`; returns the paths."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames must be (F, H, W, 3), got {frames.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_png(folder / f"{start + i:04d}.png", f) for i, f in enumerate(frames)]


def from_blender_pixels(pixels: np.ndarray, width: int, height: int, channels: int = 4) -> np.ndarray:
    """Blender's flat float pixels (bottom-up rows, `channels` per pixel, 0..1) → uint8 (H, W, 3) top-down."""
    px = np.asarray(pixels, dtype=np.float32).reshape(height, width, channels)[::-1]
    if channels == 1:
        px = np.repeat(px, 3, axis=2)
    rgb = px[:, :, :3] if channels >= 3 else np.repeat(px[:, :, :1], 3, axis=2)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def to_blender_pixels(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3|4) top-down → Blender's flat float32 RGBA pixels, bottom-up rows."""
    image = np.asarray(image)
    H, W = image.shape[:2]
    rgba = np.ones((H, W, 4), np.float32)
    rgba[:, :, : image.shape[2]] = image / np.float32(255.0)
    return rgba[::-1].ravel()


def contact_sheet(frames: np.ndarray, columns: int = 4, pad: int = 2) -> np.ndarray:
    """uint8 frames (F, H, W, 3) tiled into one image, `columns` wide, with black padding."""
    frames = np.asarray(frames)
    F, H, W, C = frames.shape
    rows = -(-F // columns)
    sheet = np.zeros((rows * (H + pad) + pad, columns * (W + pad) + pad, C), np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = f
    return sheet
