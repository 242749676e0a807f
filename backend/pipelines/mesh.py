"""Fuse a clip with depth and cameras into a coloured triangle mesh.

TSDF fusion (Curless & Levoy 1996, in KinectFusion's projective form) and marching cubes (Lorensen &
Cline 1987) live in backend/geometry/tsdf.py; this job validates the inputs, sizes the voxel grid,
integrates frame by frame so progress is reported and a cancel lands between frames, and extracts the
mesh. The NVS job's optional mesh and the add-on's "import mesh" both come through here.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
import torch

from backend.data.clips import read_clip
from backend.data.ply import write_ply
from backend.geometry.cameras import Cameras
from backend.geometry.tsdf import TSDFVolume, extract_mesh, integrate, scene_bounds

from .cli_common import progress_bar
from .engine import Progress, no_progress

AUTO_VOXELS = 160  # auto voxel size: the scene's largest extent over this many voxels
MAX_VOXELS = 4_000_000  # the grid is coarsened until it holds at most this many voxels
TRUNC_VOXELS = 4  # truncation distance in voxels


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


def empty_volume(depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, voxel: float = 0.0) -> TSDFVolume:
    """An empty grid around the unprojected depth (robust bounds plus a truncation margin).

    voxel 0 picks the largest extent / AUTO_VOXELS; any voxel is coarsened until the grid holds at most
    MAX_VOXELS, so a tiny voxel on a big scene cannot exhaust memory.
    """
    lo, hi = scene_bounds(depth, K, c2w)
    extent = (hi - lo).clamp(min=1e-6)
    size = float(voxel) if voxel > 0 else float(extent.max()) / AUTO_VOXELS
    size = max(size, float((extent.prod() / MAX_VOXELS) ** (1 / 3)))
    margin = TRUNC_VOXELS * size
    return TSDFVolume.empty(lo - margin, hi + margin, size, trunc=TRUNC_VOXELS * size)


def fuse_mesh(images: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, *, voxel: float = 0.0,
              progress: Progress = no_progress) -> MeshResult:
    """TSDF-fuse images (F, H, W, 3) uint8 with depth (F, H, W) (0 = unknown), K (F, 3, 3) and
    c2w (F, 4, 4) (OpenCV axes, continuous pixels) into a coloured mesh. voxel 0 = auto."""
    cams = _validate(images, depth, K, c2w, voxel)
    F = len(images)
    d = torch.as_tensor(np.asarray(depth, np.float32))  # (F, H, W)
    Kt = torch.as_tensor(cams.K, dtype=torch.float32)  # (F, 3, 3)
    Pt = torch.as_tensor(cams.c2w, dtype=torch.float32)  # (F, 4, 4)
    progress(0.0, "sizing the volume")
    volume = empty_volume(d, Kt, Pt, float(voxel))
    rgb = torch.as_tensor(images).float() / 255  # (F, H, W, 3)
    for f in range(F):
        progress(0.05 + 0.85 * f / F, f"fusing frame {f + 1}/{F}")
        integrate(volume, rgb[f], d[f], Kt[f], Pt[f])
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
