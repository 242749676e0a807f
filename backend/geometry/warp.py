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


def _front_window(depth: Tensor, valid: Tensor, k: int) -> Tensor:
    """Smallest valid depth in each k×k window; +inf where the window holds no valid pixel."""
    far = torch.where(valid, depth, torch.full_like(depth, float("inf")))
    return -F.max_pool2d(-far, k, stride=1, padding=k // 2)


def fill_cracks(color: Tensor, depth: Tensor, mask: Tensor, radius: int = 2, depth_tol: float = 0.1,
                passes: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Close the pinholes and cracks a forward splat leaves where the view magnifies the source.

    Splatting one point per source pixel leaves gaps between neighbouring points whenever a target
    pixel is smaller than a source pixel's footprint (the camera moves closer, or turns), and farther
    surfaces show through those gaps. Both are repaired the way point renderers do with a screen-space
    filter (Pfister et al., "Surfels", 2000; the hole-filling pass of depth-image-based rendering):
    a morphological closing of the valid mask with a (2r+1)² square marks gaps narrower than the
    square — real disocclusions, wider than that, stay holes — and pixels whose depth lies more than
    `depth_tol` behind the front surface of their 3×3 neighbourhood count as gaps too. Each gap pixel
    takes the mean colour and depth of the valid pixels of its (2r+1)² window that lie on that front
    surface (within `depth_tol` of the window's nearest depth).

    color (N, C, H, W), depth (N, H, W), mask (N, H, W) bool. Returns filled copies of all three.
    """
    k = 2 * radius + 1
    color, depth, mask = color.clone(), depth.clone(), mask.clone()
    d, m = depth[:, None], mask[:, None]  # (N, 1, H, W) views of the clones
    for _ in range(passes):
        front3 = _front_window(d, m, 3)
        see_through = m & (d > front3 * (1 + depth_tol))
        grown = F.max_pool2d(m.float(), k, stride=1, padding=radius) > 0
        closed = ~(F.max_pool2d((~grown).float(), k, stride=1, padding=radius) > 0)  # closing of the mask
        gaps = (closed & ~m) | see_through  # (N, 1, H, W)
        keep = m & ~see_through
        front = _front_window(d, keep, k)
        src = keep & (d <= front * (1 + depth_tol))  # this pixel may donate to a gap in its window
        weight = F.avg_pool2d(src.float(), k, stride=1, padding=radius, count_include_pad=False)
        c_sum = F.avg_pool2d(color * src, k, stride=1, padding=radius, count_include_pad=False)
        d_sum = F.avg_pool2d(d * src, k, stride=1, padding=radius, count_include_pad=False)
        fill = gaps & (weight > 0)
        if not bool(fill.any()):
            break
        safe = weight.clamp(min=1e-12)
        color = torch.where(fill, c_sum / safe, color)
        d = torch.where(fill, d_sum / safe, d)
        m = (m & ~see_through) | fill
    return color, d[:, 0], m[:, 0]


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
    crack_radius: int = 2,
) -> WarpResult:
    """Forward-splat image (B, C, H, W) with depth (B, H, W) from cameras K_src (B, 3, 3), c2w_src
    (B, 4, 4) into K_tgt (B, V, 3, 3), c2w_tgt (B, V, 4, 4) at out_hw = (Ht, Wt).

    mode: 'nearest' (z-buffer) or 'soft' (depth-aware bilinear); hole_dilation: grow holes by this
    many pixels; edge_threshold: relative depth jump that marks flying pixels (kernels.splat);
    crack_radius: close splatting cracks narrower than 2·r + 1 pixels (`fill_cracks`; 0 = off).
    """
    _validate(image, depth, K_src, c2w_src, K_tgt, c2w_tgt, out_hw, hole_dilation)
    if isinstance(crack_radius, bool) or not isinstance(crack_radius, int) or crack_radius < 0:
        raise ValueError(f"crack_radius must be an int >= 0, got {crack_radius!r}")
    res = splat(image, depth, K_src, c2w_src, K_tgt, c2w_tgt, tuple(out_hw), mode, edge_threshold)
    color, tdepth, mask = res.color, res.depth, res.mask
    if crack_radius > 0:
        B, V, C, Ht, Wt = color.shape
        c, d, m = fill_cracks(color.reshape(B * V, C, Ht, Wt), tdepth.reshape(B * V, Ht, Wt),
                              mask.reshape(B * V, Ht, Wt), radius=crack_radius)
        color, tdepth, mask = c.reshape(B, V, C, Ht, Wt), d.reshape(B, V, Ht, Wt), m.reshape(B, V, Ht, Wt)
    mask = dilate_holes(mask, hole_dilation)  # (B, V, Ht, Wt)
    return WarpResult(color * mask[:, :, None], tdepth * mask, mask)
