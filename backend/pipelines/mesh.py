"""Fuse a clip with depth and cameras into a coloured triangle mesh.

TSDF fusion (Curless & Levoy 1996, in KinectFusion's projective form) and marching cubes (Lorensen &
Cline 1987) live in backend/geometry/tsdf.py (as does the voxel-sizing rule); this job validates the
inputs, fuses with a per-frame progress callback so progress is reported and a cancel lands between
frames, and extracts the mesh. The NVS job's optional mesh and the add-on's "import mesh" both come through here.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np

from backend.data.clips import read_clip
from backend.data.ply import write_ply
from backend.geometry.cameras import Cameras
from backend.geometry.tsdf import extract_mesh, fuse

from .cli_common import progress_bar
from .engine import Progress, no_progress


@dataclass
class MeshResult:
    """A triangle mesh in world coordinates (the cameras' frame and units)."""

    vertices: np.ndarray  # (N, 3) float32 world positions
    faces: np.ndarray  # (M, 3) int32 vertex indices, counter-clockwise seen from outside
    colors: np.ndarray  # (N, 3) uint8 RGB fused from the images
    voxel: float = 0.0  # voxel edge length used, scene units

    def arrays(self) -> dict[str, np.ndarray]:
        return {"vertices": self.vertices, "faces": self.faces, "colors": self.colors}

    def params(self) -> dict:
        return {"voxel": float(self.voxel), "vertices": len(self.vertices), "faces": len(self.faces)}


def _validate(images, depth, K, c2w, voxel) -> Cameras:
    """Check every input up front; returns the validated cameras."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (F, H, W, 3) uint8, got {getattr(images, 'shape', None)} "
                         f"{getattr(images, 'dtype', type(images))}")
    F, H, W = images.shape[:3]
    if F < 1 or H < 2 or W < 2:
        raise ValueError(f"images must hold at least one frame of at least 2x2 pixels, got {images.shape}")
    if not isinstance(depth, np.ndarray) or depth.dtype.kind != "f" or depth.shape != (F, H, W):
        raise ValueError(f"depth must be a float array of shape {(F, H, W)}, got {getattr(depth, 'shape', None)} "
                         f"{getattr(depth, 'dtype', type(depth))}")
    if not np.isfinite(depth).all():
        raise ValueError("depth has non-finite values (use 0 for unknown depth)")
    if (depth < 0).any():
        raise ValueError(f"depth has negative values (min {float(depth.min())}); 0 marks unknown depth")
    if not (depth > 0).any():
        raise ValueError("depth has no valid (> 0) pixel to fuse")
    cams = Cameras(np.asarray(K), np.asarray(c2w), W, H)  # ValueError naming K / c2w
    if len(cams) != F:
        raise ValueError(f"K and c2w have {len(cams)} cameras for {F} frames")
    if isinstance(voxel, bool) or not isinstance(voxel, int | float | np.number) or not math.isfinite(voxel) \
            or voxel < 0:
        raise ValueError(f"voxel must be a finite number >= 0 (0 = auto), got {voxel!r}")
    return cams


def fuse_mesh(images: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, *, voxel: float = 0.0,
              progress: Progress = no_progress) -> MeshResult:
    """TSDF-fuse images (F, H, W, 3) uint8 with depth (F, H, W) (0 = unknown), K (F, 3, 3) and
    c2w (F, 4, 4) (OpenCV axes, continuous pixels) into a coloured mesh. voxel 0 = auto (tsdf.fuse's
    sizing rule). Progress is reported per frame, so a cancel lands between frames."""
    cams = _validate(images, depth, K, c2w, voxel)
    progress(0.0, "sizing the volume")
    volume = fuse(images, depth, cams.K, cams.c2w, voxel_size=float(voxel) or None,
                  progress=lambda f, n: progress(0.05 + 0.85 * f / n, f"fusing frame {f + 1}/{n}"))
    progress(0.9, "extracting the mesh")
    vertices, faces, colors = extract_mesh(volume)
    progress(1.0, f"{len(vertices)} vertices, {len(faces)} faces")
    return MeshResult(vertices, faces, colors, voxel=volume.voxel_size)


# ----------------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clip", required=True, help="clip folder with images/, depth/ and transforms.json")
    parser.add_argument("--out", required=True, help="output mesh (.ply)")
    parser.add_argument("--voxel", type=float, default=0.0, help="voxel size in scene units (0 = auto)")


def run(args: argparse.Namespace) -> int:
    if not args.out.lower().endswith(".ply"):
        raise ValueError(f"--out must be a .ply file, got {args.out}")
    clip = read_clip(args.clip)
    if clip.depth is None:
        raise ValueError(f"{args.clip} has no depth/ folder: run `parallax depth` first")
    if clip.cameras is None:
        raise ValueError(f"{args.clip} has no transforms.json: run `parallax cameras` first")
    with progress_bar("mesh") as bar:
        result = fuse_mesh(clip.images, clip.depth, clip.cameras.K, clip.cameras.c2w, voxel=args.voxel,
                           progress=bar)
    if len(result.faces) == 0:
        raise ValueError("the fused volume holds no surface (check depth units and cameras)")
    write_ply(args.out, result.vertices, colors=result.colors, faces=result.faces)
    print(f"wrote {len(result.vertices)} vertices, {len(result.faces)} faces (voxel {result.voxel:.4g}) to {args.out}")
    return 0
