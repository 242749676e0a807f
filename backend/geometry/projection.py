"""Pinhole projection in the backend's one convention.

Axes: OpenCV (x right, y down, z forward); intrinsics `K` in pixels; poses camera-to-world 4x4.
Pixel coordinates are *continuous*: the centre of pixel column j, row i is (j + 0.5, i + 0.5), as in
Blender and nerfstudio's transforms.json, so a centred camera has cx = W/2. OpenCV's integer-centre
convention differs by half a pixel and is converted only at the edge (see cameras.py).
Depth is z-depth (distance along the optical axis), not distance along the ray.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pixel_centres(height: int, width: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Continuous pixel-centre coordinates (u, v) = (j + 0.5, i + 0.5). Returns (H, W, 2)."""
    v = torch.arange(height, dtype=dtype, device=device) + 0.5
    u = torch.arange(width, dtype=dtype, device=device) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)  # (H, W, 2)


def invert_pose(c2w: Tensor) -> Tensor:
    """Invert rigid 4x4 poses [..., 4, 4] without a general matrix inverse."""
    R = c2w[..., :3, :3]
    t = c2w[..., :3, 3:]
    out = torch.zeros_like(c2w)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1
    return out


def camera_directions(K: Tensor, height: int, width: int) -> Tensor:
    """Un-normalised camera-frame directions K⁻¹[u v 1]ᵀ for every pixel centre.

    K: (B, 3, 3). Returns (B, H, W, 3) with z = 1.
    """
    uv = pixel_centres(height, width, K.dtype, K.device)  # (H, W, 2)
    fx, fy = K[:, 0, 0], K[:, 1, 1]
    cx, cy, skew = K[:, 0, 2], K[:, 1, 2], K[:, 0, 1]
    y = (uv[..., 1] - cy[:, None, None]) / fy[:, None, None]  # (B, H, W)
    x = (uv[..., 0] - cx[:, None, None] - skew[:, None, None] * y) / fx[:, None, None]
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (B, H, W, 3)


def unproject_depth(depth: Tensor, K: Tensor, c2w: Tensor) -> Tensor:
    """Lift z-depth maps to world points: X = R·(z·K⁻¹[u v 1]ᵀ) + t.

    depth: (B, H, W); K: (B, 3, 3); c2w: (B, 4, 4). Returns (B, H, W, 3).
    """
    _B, H, W = depth.shape
    cam = camera_directions(K, H, W) * depth[..., None]  # (B, H, W, 3)
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    return torch.einsum("bij,bhwj->bhwi", R, cam) + t[:, None, None, :]


def project_points(points: Tensor, K: Tensor, c2w: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points into cameras.

    points: (B, N, 3); K: (B, 3, 3); c2w: (B, 4, 4).
    Returns uv (B, N, 2) in continuous pixel coordinates and z (B, N) camera depth; points with
    z <= 0 get uv = nan so callers cannot mistake them for visible ones.
    """
    w2c = invert_pose(c2w)
    cam = torch.einsum("bij,bnj->bni", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]  # (B, N, 3)
    z = cam[..., 2]
    pix = torch.einsum("bij,bnj->bni", K, cam)  # (B, N, 3)
    uv = pix[..., :2] / z[..., None]
    uv = torch.where((z > 0)[..., None], uv, torch.full_like(uv, float("nan")))
    return uv, z
