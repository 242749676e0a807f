"""Best-of-N sampling and a photometric reprojection score (DESIGN.md "Diffusion").

The published 4D system (RESEARCH.md) draws 16 samples and keeps the one with the lowest masked L1
photometric reprojection error between anchor frames. A sample carries its own geometry — depth and
Plücker rays for every frame — so it can be checked against itself: every target frame's pixels are
lifted with the target's own depth, moved into an anchor (observed) camera, and the anchor's colour
fetched there by backward warping (bilinear `grid_sample`). Where depth, cameras and colours agree,
the fetched colour equals the target's own. Pixels that land outside the anchor, behind it, or
behind the anchor's own surface (occluded: the projected depth exceeds the anchor's depth by more
than `occlusion_tol`, relative) are left out. Lower is better.

Geometry conventions: backend/geometry/projection.py (OpenCV axes, continuous pixels: the centre of
pixel (i, j) is (j + 0.5, i + 0.5), which is exactly grid_sample's align_corners=False grid).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.geometry.normalize import DEPTH_EPS
from backend.geometry.projection import project_points, unproject_depth
from backend.geometry.rays import rays_to_camera, rays_to_camera_known_K

if TYPE_CHECKING:
    from backend.model.tokenizer import TokenLayout


def best_of_n(
    sample_fn: Callable[[torch.Generator], Tensor],
    n: int,
    score_fn: Callable[[Tensor], Tensor],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Draw n samples and keep, per batch element, the one with the lowest score.

    sample_fn(generator) -> (B, ...) one batch of samples (it draws its noise from `generator`, so a
    seeded generator makes the whole search reproducible); score_fn(sample) -> (B,) lower is better
    (non-finite scores count as worst). Returns (best (B, ...), scores (n, B)). Only the running
    best is kept, so memory does not grow with n.
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    best, best_score, all_scores = None, None, []
    for _ in range(n):
        sample = sample_fn(generator)
        score = torch.as_tensor(score_fn(sample), dtype=torch.float64).reshape(-1).cpu()  # (B,)
        if score.numel() != sample.shape[0]:
            raise ValueError(f"score_fn must return one score per batch element ({sample.shape[0]}), "
                             f"got {score.numel()}")
        all_scores.append(score)
        score = torch.where(torch.isfinite(score), score, torch.full_like(score, float("inf")))
        if best is None:
            best, best_score = sample.clone(), score
            continue
        better = score < best_score  # (B,) strict: ties keep the earlier sample
        shape = (-1,) + (1,) * (sample.ndim - 1)
        best = torch.where(better.to(sample.device).reshape(shape), sample, best)
        best_score = torch.where(better, score, best_score)
    return best, torch.stack(all_scores)


def _warp_pair(rgb_a, depth_a, K_a, c2w_a, rgb_t, depth_t, K_t, c2w_t, valid_t, occlusion_tol):
    """Masked L1 sum and pixel count of warping anchor a into target t. Shapes: rgb (B, 3, H, W),
    depth (B, H, W), K (B, 3, 3), c2w (B, 4, 4), valid (B, H, W) bool."""
    B, _, H, W = rgb_t.shape
    pts = unproject_depth(depth_t, K_t, c2w_t).reshape(B, H * W, 3)  # (B, HW, 3)
    uv, z = project_points(pts, K_a, c2w_a)  # (B, HW, 2), (B, HW)
    grid = torch.stack([2 * uv[..., 0] / W - 1, 2 * uv[..., 1] / H - 1], dim=-1)  # (B, HW, 2)
    grid = torch.nan_to_num(grid, nan=-2.0, posinf=2.0, neginf=-2.0).clamp(-2, 2)  # behind camera: outside
    grid = grid.reshape(B, H, W, 2)
    fetched = F.grid_sample(rgb_a, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = (grid.abs() <= 1).all(-1) & (z.reshape(B, H, W) > 0) & valid_t & (depth_t > 0)  # (B, H, W)
    if occlusion_tol is not None:
        d_a = F.grid_sample(depth_a[:, None], grid, mode="nearest", padding_mode="border", align_corners=False)
        inside &= z.reshape(B, H, W) <= d_a[:, 0] * (1 + occlusion_tol)
    err = (fetched - rgb_t).abs().mean(1)  # (B, H, W)
    return torch.where(inside, err, torch.zeros_like(err)).flatten(1).sum(1), inside.flatten(1).sum(1)


def reprojection_error(
    rgb: Tensor,
    depth: Tensor,
    K: Tensor,
    c2w: Tensor,
    anchors: Sequence[int],
    valid: Tensor | None = None,
    occlusion_tol: float | None = 0.05,
) -> Tensor:
    """Masked L1 photometric error of warping each anchor frame into every other frame. Returns (B,).

    rgb: (B, F, 3, H, W); depth: (B, F, H, W) z-depth (0 = unknown, never scored); K: (B, F, 3, 3);
    c2w: (B, F, 4, 4); anchors: the observed frame indices; valid: optional (B, F, H, W) bool of
    target pixels to score. The error is averaged over all scored pixels of all (anchor, target)
    pairs; a batch element with no scored pixel gets +inf.
    """
    B, Fr, C, H, W = rgb.shape
    if C != 3 or depth.shape != (B, Fr, H, W) or K.shape != (B, Fr, 3, 3) or c2w.shape != (B, Fr, 4, 4):
        raise ValueError(f"reprojection_error: shapes rgb {tuple(rgb.shape)}, depth {tuple(depth.shape)}, "
                         f"K {tuple(K.shape)}, c2w {tuple(c2w.shape)} do not agree")
    if not anchors or any(not 0 <= a < Fr for a in anchors):
        raise ValueError(f"anchors must be frame indices in [0, {Fr}), got {list(anchors)}")
    if valid is None:
        valid = torch.ones(B, Fr, H, W, dtype=torch.bool, device=rgb.device)
    total = rgb.new_zeros(B, dtype=torch.float64)
    count = rgb.new_zeros(B, dtype=torch.float64)
    for a in anchors:
        for t in range(Fr):
            if t == a:
                continue
            s, n = _warp_pair(rgb[:, a], depth[:, a], K[:, a], c2w[:, a], rgb[:, t], depth[:, t], K[:, t],
                              c2w[:, t], valid[:, t], occlusion_tol)
            total, count = total + s.double(), count + n.double()
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("inf")))


def decode_depth(code: Tensor) -> Tensor:
    """Model depth code e = (s − d)/(s + d) → depth in clip units (s = 1): d = (1 − e)/(1 + e).

    Same clamp as backend/geometry/normalize.py, so the decoded depth is finite and >= 0.
    """
    e = code.clamp(-1.0 + DEPTH_EPS, 1.0)
    return (1.0 - e) / (1.0 + e)


def tokens_to_geometry(
    x: Tensor, layout: TokenLayout, K: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Decode sampled tokens (B, L, P) to rgb (B, F, 3, H, W), depth (B, F, H, W) in clip units, and
    cameras K (B, F, 3, 3), c2w (B, F, 4, 4) recovered from the sample's own ray maps
    (backend/geometry/rays.py; with known intrinsics K (B, F, 3, 3) only the poses are solved).
    Raises ValueError (from rays.py) for degenerate ray maps."""
    video = layout.unpatchify(x)
    rgb, rays = video["rgb"], video["rays"]  # (B, F, 3, H, W), (B, F, 6, H, W)
    B, Fr, _, H, W = rays.shape
    depth = decode_depth(video["depth"][:, :, 0])  # (B, F, H, W)
    flat = rays.reshape(B * Fr, 6, H, W).float()
    if K is None:
        K_flat, c2w_flat = rays_to_camera(flat)
    else:
        K_flat = K.reshape(B * Fr, 3, 3).to(flat)
        c2w_flat = rays_to_camera_known_K(flat, K_flat)
    return rgb, depth, K_flat.reshape(B, Fr, 3, 3).to(rgb), c2w_flat.reshape(B, Fr, 4, 4).to(rgb)


def reprojection_score(
    x: Tensor,
    layout: TokenLayout,
    anchors: Sequence[int],
    K: Tensor | None = None,
    occlusion_tol: float | None = 0.05,
) -> Tensor:
    """Score sampled tokens (B, L, P) by the reprojection error of their own depth and rays; (B,).

    A batch element whose ray maps cannot be turned into cameras scores +inf (it loses best-of-N).
    """
    scores = []
    for b in range(x.shape[0]):
        try:
            rgb, depth, Kb, c2w = tokens_to_geometry(x[b : b + 1], layout, None if K is None else K[b : b + 1])
        except ValueError:
            scores.append(torch.tensor([float("inf")], dtype=torch.float64, device=x.device))
            continue
        scores.append(reprojection_error(rgb, depth, Kb, c2w, anchors, occlusion_tol=occlusion_tol))
    return torch.cat(scores)
