"""Warp an RGB-D image into target cameras: the conditioning step of novel-view synthesis.

A thin layer over kernels.splat (forward splatting with a z-buffer, Triton on CUDA, torch elsewhere):
it validates the inputs, and optionally grows the holes by `hole_dilation` pixels (erodes the valid
mask), as the point-cloud-render pipelines do (ViewCrafter, GEN3C, TrajectoryCrafter): thin
disocclusions and the ragged rim of a hole carry stretched or background-coloured pixels, and it is
safer to let the diffusion model regenerate them than to condition on them.

Conventions are backend/geometry/projection.py's: OpenCV axes, K in pixels with continuous pixel
centres (j + 0.5, i + 0.5), z-depth, camera-to-world poses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.splat import check_splat_inputs, splat


class WarpResult(NamedTuple):
    color: Tensor  # (B, V, C, Ht, Wt) float32, 0 where mask is False
    depth: Tensor  # (B, V, Ht, Wt) float32 target z-depth, 0 where mask is False
    mask: Tensor  # (B, V, Ht, Wt) bool, True where the warp is trusted


def _check_camera(name: str, t: Tensor, intrinsics: bool) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has non-finite values")
    if intrinsics and not bool(((t[..., 0, 0] > 0) & (t[..., 1, 1] > 0)).all()):
        raise ValueError(f"{name} must have positive focal lengths (fx = K[0, 0], fy = K[1, 1])")
    if not intrinsics and not bool((t[..., 3, :] == t.new_tensor([0.0, 0.0, 0.0, 1.0])).all()):
        raise ValueError(f"{name} must have a last row of [0, 0, 0, 1]")


def _validate(image, depth, K_src, c2w_src, K_tgt, c2w_tgt, out_hw, hole_dilation) -> None:
    """Every check before any work (splat checks mode and edge_threshold on entry); each error names the
    offending field."""
    if not isinstance(image, Tensor) or image.ndim != 4:
        raise ValueError(f"image must be a (B, C, H, W) tensor, got {getattr(image, 'shape', type(image))}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating tensor, got {image.dtype}")
    try:
        check_splat_inputs(image, depth, K_src, c2w_src, K_tgt, c2w_tgt, out_hw)
    except TypeError as err:  # e.g. out_hw not a sequence
        raise ValueError(f"out_hw must be two positive ints (Ht, Wt), got {out_hw!r}") from err
    for name, t in (("K_src", K_src), ("K_tgt", K_tgt)):
        _check_camera(name, t, intrinsics=True)
    for name, t in (("c2w_src", c2w_src), ("c2w_tgt", c2w_tgt)):
        _check_camera(name, t, intrinsics=False)
    if isinstance(hole_dilation, bool) or not isinstance(hole_dilation, int) or hole_dilation < 0:
        raise ValueError(f"hole_dilation must be an int >= 0, got {hole_dilation!r}")


def dilate_holes(mask: Tensor, radius: int) -> Tensor:
    """Erode a valid mask (..., H, W) with a (2r+1)² square: a pixel stays valid only if every pixel
    within Chebyshev distance r is valid. Outside the image counts as valid (not a hole)."""
    if radius == 0:
        return mask
    lead = mask.shape[:-2]
    holes = (~mask).reshape(-1, 1, *mask.shape[-2:]).float()  # (N, 1, H, W)
    grown = F.max_pool2d(holes, 2 * radius + 1, stride=1, padding=radius)  # pads with -inf: not holes
    return (grown == 0).reshape(*lead, *mask.shape[-2:])


def warp_rgbd(
    image: Tensor,
    depth: Tensor,
    K_src: Tensor,
    c2w_src: Tensor,
    K_tgt: Tensor,
    c2w_tgt: Tensor,
    out_hw: tuple[int, int],
    mode: str = "nearest",
    hole_dilation: int = 0,
    edge_threshold: float | None = 0.1,
) -> WarpResult:
    """Forward-splat image (B, C, H, W) with depth (B, H, W) from cameras K_src (B, 3, 3), c2w_src
    (B, 4, 4) into K_tgt (B, V, 3, 3), c2w_tgt (B, V, 4, 4) at out_hw = (Ht, Wt).

    mode: 'nearest' (z-buffer) or 'soft' (depth-aware bilinear); hole_dilation: grow holes by this
    many pixels; edge_threshold: relative depth jump that marks flying pixels (kernels.splat).
    """
    _validate(image, depth, K_src, c2w_src, K_tgt, c2w_tgt, out_hw, hole_dilation)
    res = splat(image, depth, K_src, c2w_src, K_tgt, c2w_tgt, tuple(out_hw), mode, edge_threshold)
    mask = dilate_holes(res.mask, hole_dilation)  # (B, V, Ht, Wt)
    if hole_dilation == 0:
        return WarpResult(res.color, res.depth, mask)
    return WarpResult(res.color * mask[:, :, None], res.depth * mask, mask)
