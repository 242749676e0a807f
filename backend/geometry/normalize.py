"""Per-clip depth and pose normalisation (DESIGN.md, "Depth and pose normalisation").

A clip gets one scale s (by default the median valid depth of its first frame; depth 0 = unknown).
Depth enters the model as the bounded, disparity-like code e = 2/(1 + d/s) − 1 = (s − d)/(s + d) in
(−1, 1]: d = 0 ↦ 1, d = s ↦ 0, d → ∞ ↦ −1 (the encoding of the "4D scene understanding" write-up in
RESEARCH.md). Cameras are expressed relative to the first frame, c2w_rel = inv(c2w_0) @ c2w_i, with
translations divided by s. Depth and translations share s, so a world point X maps to
inv(c2w_0)·X / s and unprojecting d/s through the normalised cameras lands exactly there:
reprojection is preserved, and scaling the whole scene by k leaves every normalised quantity unchanged.

Everything is differentiable in the depth, codes and poses; the scale and origin are constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from backend.geometry.projection import invert_pose

# Codes are clamped to >= -1 + DEPTH_EPS before decoding, so decoded depth is at most
# s·(2 − DEPTH_EPS)/DEPTH_EPS ≈ 2·10⁴·s (and the division never reaches zero).
DEPTH_EPS = 1e-4


def _check_poses(name: str, c2w: Tensor) -> None:
    if not isinstance(c2w, Tensor) or c2w.ndim < 2 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must be a tensor of shape (..., 4, 4), got {getattr(c2w, 'shape', None)}")


def _scale_translation(c2w: Tensor, factor: float) -> Tensor:
    """c2w (..., 4, 4) with its translation column multiplied by factor (out of place, for autograd)."""
    top = torch.cat([c2w[..., :3, :3], c2w[..., :3, 3:] * factor], dim=-1)  # (..., 3, 4)
    return torch.cat([top, c2w[..., 3:, :]], dim=-2)  # (..., 4, 4)


@dataclass
class ClipNormalization:
    """The constants that map one clip into the model's normalised frame, and back."""

    scale: float  # s, scene units per normalised unit (median first-frame depth unless given)
    origin_c2w: Tensor  # (4, 4) camera-to-world of the clip's first frame: the normalised world frame

    def __post_init__(self) -> None:
        self.scale = float(self.scale)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be finite and > 0, got {self.scale}")
        _check_poses("origin_c2w", self.origin_c2w)
        if self.origin_c2w.shape != (4, 4):
            raise ValueError(f"origin_c2w must have shape (4, 4), got {tuple(self.origin_c2w.shape)}")
        if not torch.isfinite(self.origin_c2w).all():
            raise ValueError("origin_c2w contains non-finite values")
        R = self.origin_c2w[:3, :3].double()
        if not torch.allclose(R.T @ R, torch.eye(3, dtype=torch.float64), atol=1e-4) or torch.det(R) <= 0:
            raise ValueError("origin_c2w rotation block must be a proper rotation (orthonormal, det +1)")

    @property
    def max_depth(self) -> float:
        """Largest depth denormalize_depth can return (the code clamp at −1 + DEPTH_EPS)."""
        return self.scale * (2.0 - DEPTH_EPS) / DEPTH_EPS

    # -- depth ----------------------------------------------------------------------------------

    def normalize_depth(self, depth: Tensor, fill: float = 0.0) -> tuple[Tensor, Tensor]:
        """Encode depth (any shape) as e = (s − d)/(s + d) ∈ (−1, 1].

        Returns (encoded, valid): valid = finite and d > 0; invalid pixels (0 = unknown) get `fill`
        (default 0, the code of d = s) — callers must use the mask, not the value. Gradients at
        invalid pixels are exactly zero (the formula never sees their values).
        """
        valid = torch.isfinite(depth) & (depth > 0)
        d = torch.where(valid, depth, torch.full_like(depth, self.scale)) / self.scale  # safe for grads
        encoded = (1.0 - d) / (1.0 + d)
        return torch.where(valid, encoded, torch.full_like(encoded, fill)), valid

    def denormalize_depth(self, encoded: Tensor) -> Tensor:
        """Decode d = s·(1 − e)/(1 + e), with e clamped to [−1 + DEPTH_EPS, 1] so d ∈ [0, max_depth]."""
        e = encoded.clamp(-1.0 + DEPTH_EPS, 1.0)
        return self.scale * (1.0 - e) / (1.0 + e)

    # -- poses and points -----------------------------------------------------------------------

    def _origin(self, like: Tensor) -> Tensor:
        return self.origin_c2w.to(dtype=like.dtype, device=like.device)

    def normalize_poses(self, c2w: Tensor) -> Tensor:
        """World c2w (..., 4, 4) → first-frame-relative c2w with translation divided by s."""
        _check_poses("c2w", c2w)
        rel = invert_pose(self._origin(c2w)) @ c2w  # (..., 4, 4)
        return _scale_translation(rel, 1.0 / self.scale)

    def denormalize_poses(self, c2w_norm: Tensor) -> Tensor:
        """Inverse of normalize_poses: (..., 4, 4) normalised c2w → world c2w."""
        _check_poses("c2w_norm", c2w_norm)
        return self._origin(c2w_norm) @ _scale_translation(c2w_norm, self.scale)

    def normalize_points(self, points: Tensor) -> Tensor:
        """World points (..., 3) → normalised frame: inv(c2w_0)·X / s."""
        w2c = invert_pose(self._origin(points))
        return (points @ w2c[:3, :3].T + w2c[:3, 3]) / self.scale

    def denormalize_points(self, points_norm: Tensor) -> Tensor:
        """Normalised points (..., 3) → world: c2w_0·(s·X)."""
        c2w = self._origin(points_norm)
        return (points_norm * self.scale) @ c2w[:3, :3].T + c2w[:3, 3]


def median_valid_depth(depth: Tensor) -> float | None:
    """Median (mean of the two middle values for an even count) of finite depths > 0; None if none."""
    vals = depth[torch.isfinite(depth) & (depth > 0)].detach().double().flatten()
    if vals.numel() == 0:
        return None
    vals, n = vals.sort().values, vals.numel()
    return float((vals[(n - 1) // 2] + vals[n // 2]) / 2)


def baseline_scale(c2w: Tensor) -> float:
    """The scale of a clip without depth: the largest camera distance from the first camera, else 1.

    Training normalises depth-less windows with it, so jobs given cameras but no depth must too: the
    ray moments then have the range the model learned, whatever units the user's scene is in.
    """
    spread = float((c2w[:, :3, 3] - c2w[:1, :3, 3]).norm(dim=-1).max())
    return spread if spread > 1e-6 else 1.0


def clip_normalization(depth: Tensor | None, c2w: Tensor, scale: float | None = None) -> ClipNormalization:
    """The normalisation of one clip.

    depth: (F_d, H, W) scene-unit z-depth, 0 = unknown, or None; only depth[0] (the first frame's)
    is read, so a clip whose later frames have no depth may pass just (1, H, W).
    c2w: (F, 4, 4) camera-to-world; c2w[0] becomes the origin (stored detached).
    scale: use this s instead of the first frame's median valid depth.
    Raises ValueError when there is neither a scale nor any valid depth in the first frame.
    """
    _check_poses("c2w", c2w)
    if c2w.ndim != 3 or c2w.shape[0] < 1:
        raise ValueError(f"c2w must have shape (F, 4, 4) with F >= 1, got {tuple(c2w.shape)}")
    if scale is None:
        if depth is None:
            raise ValueError("depth is None and no scale was given: the clip scale is undefined")
        if not isinstance(depth, Tensor) or depth.ndim != 3 or depth.shape[0] < 1:
            shape = getattr(depth, "shape", None)
            raise ValueError(f"depth must be a tensor of shape (F, H, W), got {shape}")
        scale = median_valid_depth(depth[0])
        if scale is None:
            raise ValueError("depth[0] has no valid (finite, > 0) pixel and no scale was given")
    return ClipNormalization(scale=scale, origin_c2w=c2w[0].detach().clone())
