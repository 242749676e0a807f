"""Plücker ray maps and their inverse: rays → cameras.

A ray map holds per pixel (d̂, m): the unit world direction of the viewing ray and its moment
m = o × d̂ about the world origin, o the camera centre (kernels/rays.py builds them). Going back:

- centre: the point nearest to every ray in the least-squares sense,
  Σ w (I − d̂d̂ᵀ) c = Σ w (I − d̂d̂ᵀ) p with p = d̂ × m the ray's point closest to the origin
  (RayDiffusion, Zhang et al. 2024, "Cameras as Rays");
- rotation, K known: Procrustes between reference camera-frame directions K⁻¹[u v 1]ᵀ and the
  predicted world directions, by SVD of their cross-covariance with the determinant fixed
  (Kabsch 1976; Umeyama 1991);
- K unknown: d̂ ∝ R·K⁻¹·[u v 1]ᵀ, so the 3×3 map M = R·K⁻¹ is a homography from pixels to ray
  directions. It is fitted by the normalised DLT (Hartley 1997; Hartley & Zisserman, *Multiple View
  Geometry*, 2nd ed., Alg. 4.2) and split by QR (M = Q·U, U upper triangular with a positive
  diagonal, so K = U⁻¹ / (U⁻¹)₂₂; the same factorisation as H&Z's RQ of M⁻¹ = K·Rᵀ, §A4.1.1).
  The rotation is then refitted by Procrustes with that K, which keeps det R = +1 even on noisy maps.

Everything is solved in float64 and returned in the ray map's dtype. Pixel centres follow
backend/geometry/projection.py: (u, v) = (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import torch
from torch import Tensor

from backend.geometry.projection import camera_directions, pixel_centres
from kernels.rays import plucker_rays


def ray_map(K: Tensor, c2w: Tensor, height: int, width: int) -> Tensor:
    """Plücker ray maps of cameras. K: (B, 3, 3); c2w: (B, 4, 4). Returns (B, 6, H, W)."""
    for name, value in (("K", K), ("c2w", c2w)):
        if isinstance(value, Tensor) and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} has non-finite entries")
    return plucker_rays(K, c2w, height, width)  # shapes checked by the kernel module


def _check_rays(rays: Tensor) -> None:
    if not isinstance(rays, Tensor) or rays.ndim != 4 or rays.shape[1] != 6:
        raise ValueError(f"rays must be a (B, 6, H, W) tensor, got {getattr(rays, 'shape', type(rays))}")
    if not rays.is_floating_point():
        raise ValueError(f"rays must be floating point, got {rays.dtype}")
    if rays.shape[0] == 0 or rays.shape[2] * rays.shape[3] < 4:
        raise ValueError(f"rays needs a camera and at least 4 pixels, got shape {tuple(rays.shape)}")
    if not bool(torch.isfinite(rays).all()):
        raise ValueError("rays has non-finite entries")


def _split_rays(rays: Tensor) -> tuple[Tensor, Tensor]:
    """Unit directions and matching moments (B, N, 3) in float64.

    Plücker coordinates are homogeneous: (d, m) and (s·d, s·m) name one line, so a predicted map
    whose directions are not unit is rescaled as a whole.
    """
    r = rays.to(torch.float64).flatten(2).transpose(1, 2)  # (B, N, 6)
    norm = torch.linalg.vector_norm(r[..., :3], dim=-1, keepdim=True)  # (B, N, 1)
    if bool((norm <= 1e-12).any()):
        raise ValueError("rays has zero-length directions")
    return r[..., :3] / norm, r[..., 3:] / norm


def _check_weights(weights: Tensor | None, rays: Tensor) -> Tensor:
    """Per-pixel confidences (B, H, W) → (B, N) float64; None means all ones."""
    B, _, H, W = rays.shape
    if weights is None:
        return torch.ones(B, H * W, dtype=torch.float64, device=rays.device)
    if not isinstance(weights, Tensor) or tuple(weights.shape) != (B, H, W):
        raise ValueError(f"weights must be ({B}, {H}, {W}), got {getattr(weights, 'shape', type(weights))}")
    w = weights.to(device=rays.device, dtype=torch.float64).reshape(B, H * W)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and non-negative")
    if bool((w.sum(-1) <= 0).any()):
        raise ValueError("weights are all zero for some camera")
    return w


def _check_intrinsics(K: Tensor, batch: int) -> None:
    if not isinstance(K, Tensor) or tuple(K.shape) != (batch, 3, 3):
        raise ValueError(f"K must be ({batch}, 3, 3), got {getattr(K, 'shape', type(K))}")
    if not bool(torch.isfinite(K).all()):
        raise ValueError("K has non-finite entries")
    if bool((K[:, 0, 0] == 0).any()) or bool((K[:, 1, 1] == 0).any()):
        raise ValueError("K has a zero focal length")


def rays_centre(d: Tensor, m: Tensor, w: Tensor) -> Tensor:
    """Least-squares nearest point to all rays. d, m: (B, N, 3) unit directions and moments;
    w: (B, N). Returns (B, 3). Solves Σ w (I − d̂d̂ᵀ) c = Σ w (I − d̂d̂ᵀ) p, p = d̂ × m.
    """
    p = torch.linalg.cross(d, m, dim=-1)  # (B, N, 3) closest points to the origin
    eye = torch.eye(3, dtype=d.dtype, device=d.device)
    proj = eye - d[..., :, None] * d[..., None, :]  # (B, N, 3, 3)
    A = torch.einsum("bn,bnij->bij", w, proj)  # (B, 3, 3)
    b = torch.einsum("bn,bnij,bnj->bi", w, proj, p)  # (B, 3)
    return torch.linalg.solve(A, b)


def procrustes_rotation(ref: Tensor, pred: Tensor, w: Tensor) -> Tensor:
    """Rotation R (B, 3, 3) minimising Σ w ‖pred − R·ref‖² (Kabsch 1976 / Umeyama 1991).

    ref, pred: (B, N, 3); w: (B, N). The sign of the last singular direction is chosen so det R = +1.
    """
    C = torch.einsum("bn,bni,bnj->bij", w, pred, ref)  # (B, 3, 3) cross-covariance
    U, _S, Vh = torch.linalg.svd(C)
    s = torch.sign(torch.linalg.det(U @ Vh))
    s = torch.where(s == 0, torch.ones_like(s), s)
    D = torch.diag_embed(torch.stack([torch.ones_like(s), torch.ones_like(s), s], dim=-1))  # (B, 3, 3)
    return U @ D @ Vh


def _camera_from_rays(d: Tensor, m: Tensor, w: Tensor, K: Tensor, height: int, width: int) -> Tensor:
    """c2w (B, 4, 4) float64 from unit directions/moments (B, N, 3), weights (B, N) and K (B, 3, 3)."""
    ref = camera_directions(K, height, width).flatten(1, 2)  # (B, N, 3)
    ref = ref / torch.linalg.vector_norm(ref, dim=-1, keepdim=True)
    c2w = torch.zeros(d.shape[0], 4, 4, dtype=torch.float64, device=d.device)
    c2w[:, :3, :3] = procrustes_rotation(ref, d, w)
    c2w[:, :3, 3] = rays_centre(d, m, w)
    c2w[:, 3, 3] = 1
    return c2w


def rays_to_camera_known_K(rays: Tensor, K: Tensor, weights: Tensor | None = None) -> Tensor:  # noqa: N802
    """Camera-to-world poses from ray maps and known intrinsics.

    rays: (B, 6, H, W) Plücker maps; K: (B, 3, 3) pixels, continuous convention; weights: optional
    (B, H, W) non-negative per-pixel confidences. Returns c2w (B, 4, 4) in the rays' dtype.
    """
    _check_rays(rays)
    B, _, H, W = rays.shape
    _check_intrinsics(K, B)
    w = _check_weights(weights, rays)
    d, m = _split_rays(rays)
    c2w = _camera_from_rays(d, m, w, K.to(device=rays.device, dtype=torch.float64), H, W)
    return c2w.to(rays.dtype)


def _hartley(pts: Tensor, w: Tensor) -> Tensor:
    """Similarity T (B, 3, 3) moving the weighted centroid to 0 and the mean distance to √2
    (Hartley 1997). pts: (B, N, 2); w: (B, N).
    """
    wsum = w.sum(-1, keepdim=True)  # (B, 1)
    mu = torch.einsum("bn,bnk->bk", w, pts) / wsum  # (B, 2)
    dist = torch.linalg.vector_norm(pts - mu[:, None], dim=-1)  # (B, N)
    scale = 2**0.5 / ((w * dist).sum(-1) / wsum[:, 0]).clamp_min(1e-300)  # (B,)
    T = torch.zeros(pts.shape[0], 3, 3, dtype=pts.dtype, device=pts.device)
    T[:, 0, 0] = T[:, 1, 1] = scale
    T[:, :2, 2] = -scale[:, None] * mu
    T[:, 2, 2] = 1
    return T


def _homogeneous(T: Tensor, pts: Tensor) -> Tensor:
    """Apply 3×3 T (B, 3, 3) to 2D points (B, N, 2); returns homogeneous (B, N, 3)."""
    ones = torch.ones_like(pts[..., :1])
    return torch.einsum("bij,bnj->bni", T, torch.cat([pts, ones], dim=-1))


def dlt_homography(src: Tensor, dst: Tensor, w: Tensor) -> Tensor:
    """Normalised weighted DLT (H&Z Alg. 4.2): H (B, 3, 3) with dst ∝ H·src, ‖H‖_F = 1.

    src, dst: (B, N, 2) inhomogeneous points; w: (B, N) weights on each point's two equations.
    """
    Ts, Td = _hartley(src, w), _hartley(dst, w)
    x = _homogeneous(Ts, src)  # (B, N, 3)
    q = _homogeneous(Td, dst)  # (B, N, 3), third coordinate 1
    a, b = q[..., 0:1], q[..., 1:2]
    zero = torch.zeros_like(x)
    rows = torch.stack(  # (B, N, 2, 9): the two independent rows of q × (H x) = 0
        [torch.cat([zero, -x, b * x], dim=-1), torch.cat([x, zero, -a * x], dim=-1)], dim=2
    )
    AtA = torch.einsum("bn,bnki,bnkj->bij", w, rows, rows)  # (B, 9, 9)
    _evals, evecs = torch.linalg.eigh(AtA)
    Hn = evecs[..., 0].reshape(-1, 3, 3)  # null vector = eigenvector of the smallest eigenvalue
    H = torch.linalg.solve(Td, Hn @ Ts)  # undo the normalisations: Td⁻¹ Hn Ts
    return H / torch.linalg.matrix_norm(H, keepdim=True)


def _frame_facing(axis: Tensor) -> Tensor:
    """Rotations Q (B, 3, 3) whose third row is the unit vector `axis` (B, 3)."""
    helper = torch.zeros_like(axis)
    helper[:, 0] = 1
    near_x = axis[:, 0].abs() > 0.9  # pick a helper axis far from `axis`
    helper[near_x] = torch.tensor([0.0, 1.0, 0.0], dtype=axis.dtype, device=axis.device)
    x = torch.linalg.cross(helper, axis, dim=-1)
    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    y = torch.linalg.cross(axis, x, dim=-1)
    return torch.stack([x, y, axis], dim=1)


def intrinsics_from_map(M: Tensor) -> Tensor:
    """K (B, 3, 3) from M ∝ R·K⁻¹ (B, 3, 3), any scale or sign.

    QR gives M = Q·U with U upper triangular; flipping signs so diag(U) > 0 makes the split unique,
    and U ∝ K⁻¹. The global scale (and sign) of M is absorbed by Q and by normalising K₂₂ = 1.
    """
    _Q, U = torch.linalg.qr(M)
    s = torch.sign(torch.diagonal(U, dim1=-2, dim2=-1))  # (B, 3)
    s = torch.where(s == 0, torch.ones_like(s), s)
    U = s[..., :, None] * U
    K = torch.linalg.inv(U)
    return K / K[:, 2:3, 2:3]


def rays_to_camera(rays: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Intrinsics and camera-to-world poses from ray maps alone.

    rays: (B, 6, H, W); weights: optional (B, H, W) confidences. Returns K (B, 3, 3) with K₂₂ = 1 and
    positive focal lengths, and c2w (B, 4, 4) with det R = +1, both in the rays' dtype.
    Directions are rotated so their mean is +z, projected to the plane z = 1 (x/z, y/z), and a
    pixel → plane homography H is fitted; then d̂ ∝ Qᵀ·H·[u v 1]ᵀ, i.e. M = Qᵀ·H ∝ R·K⁻¹.
    """
    _check_rays(rays)
    B, _, H, W = rays.shape
    w = _check_weights(weights, rays)
    d, m = _split_rays(rays)
    axis = torch.einsum("bn,bni->bi", w, d)  # (B, 3) mean direction, inside the field of view
    axis = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True).clamp_min(1e-12)
    Q = _frame_facing(axis)  # (B, 3, 3)
    local = torch.einsum("bij,bnj->bni", Q, d)  # (B, N, 3)
    ahead = local[..., 2] > 1e-6  # rays at or behind 90° from the axis cannot be projected
    w_fit = w * ahead
    plane = local[..., :2] / local[..., 2:].clamp_min(1e-6)  # (B, N, 2)
    uv = pixel_centres(H, W, torch.float64, rays.device).reshape(1, H * W, 2).expand(B, -1, -1)
    Hmat = dlt_homography(uv, plane, w_fit)
    K = intrinsics_from_map(Q.transpose(1, 2) @ Hmat)
    c2w = _camera_from_rays(d, m, w, K, H, W)
    return K.to(rays.dtype), c2w.to(rays.dtype)
