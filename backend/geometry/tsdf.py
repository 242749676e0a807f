"""TSDF fusion of RGB-D frames with known cameras, and mesh extraction by marching cubes.

Volumetric integration after Curless & Levoy, "A Volumetric Method for Building Complex Models from
Range Images" (SIGGRAPH 1996), in the projective form of KinectFusion (Newcombe et al. 2011): every
voxel centre is projected into each frame; its signed distance along the view axis, truncated to
±trunc and divided by trunc, is averaged with a running weight. The zero level set is extracted with
marching cubes (Lorensen & Cline 1987; scikit-image's implementation) and coloured from the volume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .projection import project_points

AUTO_VOXELS = 160  # auto voxel size: the scene's largest extent over this many voxels
MAX_VOXELS = 4_000_000  # the grid is coarsened until it holds at most this many voxels
TRUNC_VOXELS = 4  # truncation distance in voxels

@dataclass
class TSDFVolume:
    """A dense voxel grid: truncated signed distance, fusion weight and colour per voxel."""

    origin: Tensor  # (3,) world position of voxel (0, 0, 0)'s centre
    voxel_size: float  # edge length of a voxel, scene units
    trunc: float  # truncation distance, scene units
    tsdf: Tensor  # (X, Y, Z) in [-1, 1], 1 where unobserved
    weight: Tensor  # (X, Y, Z) accumulated observation weight
    color: Tensor  # (X, Y, Z, 3) running mean colour in [0, 1]

    @classmethod
    def empty(cls, lo: Tensor, hi: Tensor, voxel_size: float, trunc: float) -> TSDFVolume:
        dims = torch.ceil((hi - lo) / voxel_size).long().clamp(min=2) + 1
        X, Y, Z = (int(d) for d in dims)
        return cls(origin=lo.float(), voxel_size=float(voxel_size), trunc=float(trunc),
                   tsdf=torch.ones(X, Y, Z), weight=torch.zeros(X, Y, Z), color=torch.zeros(X, Y, Z, 3))

    def centres(self) -> Tensor:
        """World positions of all voxel centres, (X·Y·Z, 3) in x-major order."""
        axes = [torch.arange(n, dtype=torch.float32) for n in self.tsdf.shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (X, Y, Z, 3)
        return (grid * self.voxel_size + self.origin).reshape(-1, 3)


def scene_bounds(depth: Tensor, K: Tensor, c2w: Tensor, quantile: float = 0.01) -> tuple[Tensor, Tensor]:
    """Robust axis-aligned bounds of the unprojected valid depth (quantiles drop stray points).

    depth: (F, H, W); K: (F, 3, 3); c2w: (F, 4, 4). Returns lo, hi: (3,).
    """
    from .projection import unproject_depth

    pts = unproject_depth(depth.float(), K.float(), c2w.float())  # (F, H, W, 3)
    pts = pts[(depth > 0) & torch.isfinite(depth)]
    if len(pts) == 0:
        raise ValueError("depth: no valid (positive, finite) pixels to fuse")
    if len(pts) > 1_000_000:  # quantile() has a size limit; a strided subset is plenty
        pts = pts[:: len(pts) // 1_000_000 + 1]
    q = torch.tensor([quantile, 1 - quantile])
    lo, hi = (torch.quantile(pts, q, dim=0)).unbind(0)
    return lo, hi


def integrate(volume: TSDFVolume, rgb: Tensor, depth: Tensor, K: Tensor, c2w: Tensor) -> None:
    """Fuse one RGB-D frame into `volume` in place.

    rgb: (H, W, 3) in [0, 1]; depth: (H, W) z-depth, 0 = unknown; K: (3, 3); c2w: (4, 4).
    """
    H, W = depth.shape
    centres = volume.centres()
    uv, z = project_points(centres[None], K[None].float(), c2w[None].float())
    uv, z = uv[0], z[0]  # (N, 2), (N,)
    col = torch.floor(uv[:, 0]).nan_to_num(-1).long()
    row = torch.floor(uv[:, 1]).nan_to_num(-1).long()
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H) & (z > 0)
    d = torch.zeros_like(z)
    d[inside] = depth[row[inside], col[inside]].float()
    sdf = d - z  # positive in front of the surface
    update = inside & (d > 0) & (sdf > -volume.trunc)
    value = (sdf / volume.trunc).clamp(max=1.0)
    flat_t, flat_w, flat_c = volume.tsdf.view(-1), volume.weight.view(-1), volume.color.view(-1, 3)
    w_old = flat_w[update]
    w_new = w_old + 1
    flat_t[update] = (flat_t[update] * w_old + value[update]) / w_new
    colour = rgb[row[update], col[update]].float()  # (M, 3)
    flat_c[update] = (flat_c[update] * w_old[:, None] + colour) / w_new[:, None]
    flat_w[update] = w_new


def fuse(images: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray,
         voxel_size: float | None = None, max_voxels: int = MAX_VOXELS,
         progress: Callable[[int, int], None] | None = None) -> TSDFVolume:
    """TSDF-fuse a clip. images (F,H,W,3) uint8, depth (F,H,W), K (F,3,3), c2w (F,4,4) OpenCV axes.

    voxel_size defaults to the largest bound over AUTO_VOXELS voxels; any size is grown until the grid
    holds at most `max_voxels` (a tiny voxel on a big scene cannot exhaust memory); the truncation is
    TRUNC_VOXELS voxels. progress(f, F), if given, is called before frame f is integrated (it may raise
    to cancel between frames).
    """
    if not (images.shape[:3] == depth.shape and len(K) == len(c2w) == len(depth)):
        raise ValueError(f"images {images.shape}, depth {depth.shape}, K {K.shape}, c2w {c2w.shape} disagree")
    d = torch.as_tensor(np.asarray(depth, np.float32))
    Kt, Pt = torch.as_tensor(K, dtype=torch.float32), torch.as_tensor(c2w, dtype=torch.float32)
    lo, hi = scene_bounds(d, Kt, Pt)
    extent = (hi - lo).clamp(min=1e-6)
    if voxel_size is None:
        voxel_size = float(extent.max()) / AUTO_VOXELS
    voxel_size = max(voxel_size, float((extent.prod() / max_voxels) ** (1 / 3)))
    margin = TRUNC_VOXELS * voxel_size
    volume = TSDFVolume.empty(lo - margin, hi + margin, voxel_size, trunc=TRUNC_VOXELS * voxel_size)
    rgb = torch.as_tensor(images).float() / 255  # (F, H, W, 3)
    for f in range(len(d)):
        if progress is not None:
            progress(f, len(d))
        integrate(volume, rgb[f], d[f], Kt[f], Pt[f])
    return volume


def extract_mesh(volume: TSDFVolume, min_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marching cubes on the zero level set. Returns vertices (N,3) world, faces (M,3) int32, colours (N,3) uint8.

    A vertex lies on a voxel edge; it is kept only when both ends of that edge were observed at
    least `min_weight` times, so the border between observed and unobserved space (e.g. behind a
    surface, beyond the truncation) closes no spurious surface. Faces losing a vertex are dropped.
    """
    from skimage.measure import marching_cubes

    tsdf = volume.tsdf.numpy()
    observed = volume.weight.numpy() >= min_weight
    empty = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8)
    if not observed.any() or tsdf[observed].min() >= 0 or tsdf[observed].max() <= 0:
        return empty
    verts, faces, _, _ = marching_cubes(np.where(observed, tsdf, 1.0), level=0.0)
    lo = np.floor(verts).astype(np.int64)
    hi = np.minimum(np.ceil(verts).astype(np.int64), np.array(tsdf.shape) - 1)
    keep = observed[tuple(lo.T)] & observed[tuple(hi.T)]
    faces = faces[keep[faces].all(axis=1)]
    used = np.unique(faces)
    if len(used) == 0:
        return empty
    remap = np.full(len(verts), -1, np.int64)
    remap[used] = np.arange(len(used))
    verts, faces = verts[used], remap[faces]
    idx = np.clip(np.rint(verts).astype(np.int64), 0, np.array(tsdf.shape) - 1)
    colours = volume.color.numpy()[idx[:, 0], idx[:, 1], idx[:, 2]]
    world = verts * volume.voxel_size + volume.origin.numpy()
    return world.astype(np.float32), faces.astype(np.int32), np.clip(colours * 255 + 0.5, 0, 255).astype(np.uint8)
