"""Depth for an image, a video or a folder of frames: RGB observed, depth and rays generated.

The clip is cut into overlapping windows of `bundle.window` frames (engine.windows) and each window is
sampled at the working resolution with every RGB token clean (masks.all_rgb). A window's depth code
decodes to depth in that window's own units (its first frame's median ≈ 1, DESIGN.md "Depth and pose
normalisation"); the windows are chained by the least-squares scale in log-depth on their overlap
frames (chain.chain_depth), upsampled bilinearly to the input resolution and finally divided by the
median of frame 0, so the whole clip shares one scale with median(depth[0]) = 1. A single image is a
clip of one frame.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from backend.data.clips import Clip, frame_name, read_frames, write_clip, write_image

from .bundle import ModelBundle
from .chain import chain_depth, depth_code_to_depth, sample_windows
from .cli_common import add_model_args, add_sampling_args, bundle_from_args, progress_bar, sampling_kwargs
from .engine import Progress, model_multiple, no_progress, windows, working_size

DEPTH_OVERLAP = 2  # frames shared by consecutive windows (capped at window − 1)
VIS_DIR = "depth_vis"  # clip sub-folder of colourised depth PNGs written by the CLI


@dataclass
class DepthResult:
    """Depth for every input frame at the input resolution."""

    depth: np.ndarray  # (F, H, W) float32 z-depth, median of frame 0 = 1
    windows: int = 1  # number of model windows
    window_scales: list[float] = field(default_factory=list)  # each window's chaining scale (first = 1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"depth": self.depth}

    def params(self) -> dict:
        F_, H, W = self.depth.shape
        return {"frames": F_, "width": W, "height": H, "windows": self.windows,
                "window_scales": [float(s) for s in self.window_scales], "scale": "median of frame 0 = 1"}


def check_frames(name: str, frames: np.ndarray) -> np.ndarray:
    """A (F, H, W, 3) uint8 array with F, H, W >= 1, or ValueError naming `name`."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 ndarray, got {getattr(frames, 'dtype', type(frames))}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[:3]) < 1:
        raise ValueError(f"{name} must have shape (F, H, W, 3) with F, H, W >= 1, got {frames.shape}")
    return frames


def plan_windows(bundle: ModelBundle, frames: int, height: int, width: int,
                 overlap: int) -> tuple[tuple[int, int], list[range]]:
    """Working size (h, w) and window spans for a clip; ValueError when a long clip cannot be chained."""
    size = working_size(height, width, bundle.area, model_multiple(bundle))
    if frames > bundle.window and bundle.window < 2:
        raise ValueError(f"bundle.window={bundle.window} leaves no overlap to chain {frames} frames")
    return size, windows(frames, bundle.window, min(overlap, bundle.window - 1))


def upsample_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of depth maps (F, h, w) to (F, H, W) (continuous pixel centres: align_corners=False)."""
    d = torch.from_numpy(np.ascontiguousarray(depth, np.float64))[:, None]  # (F, 1, h, w)
    if tuple(d.shape[-2:]) != tuple(size):
        d = F.interpolate(d, size=size, mode="bilinear", align_corners=False)
    return d[:, 0].numpy()


def frame0_median(depth: np.ndarray) -> float:
    """Median of frame 0's known (finite, > 0) depth; ValueError if it has none."""
    d0 = depth[0][np.isfinite(depth[0]) & (depth[0] > 0)]
    if d0.size == 0:
        raise ValueError("the decoded depth of frame 0 has no positive value: the clip scale is undefined")
    return float(np.median(d0))


def estimate_depth(bundle: ModelBundle, images: np.ndarray, *, steps: int = 20, seed: int = 0, sampler: str = "heun",
                   progress: Progress = no_progress) -> DepthResult:
    """Depth (F, H, W) float32 for frames (F, H, W, 3) uint8, one scale for the clip (median of frame 0 = 1)."""
    images = check_frames("images", images)
    Fr, H, W, _ = images.shape
    size, spans = plan_windows(bundle, Fr, H, W, DEPTH_OVERLAP)
    samples = sample_windows(bundle, images, size, spans, steps=steps, seed=seed, sampler=sampler,
                             progress=lambda f, m="": progress(0.95 * f, m))
    depth, scales = chain_depth([depth_code_to_depth(s["depth"]) for s in samples], spans, Fr)  # (F, h, w)
    depth = upsample_depth(depth, (H, W))
    depth = depth / frame0_median(depth)
    progress(1.0, "depth done")
    return DepthResult(depth=depth.astype(np.float32), windows=len(spans), window_scales=scales)


def colorize_depth(depth: np.ndarray) -> np.ndarray:
    """Depth (F, H, W) → (F, H, W, 3) uint8 RGB: inverse depth through the Turbo colour map.

    One range for the whole clip (2nd–98th percentile of the known inverse depth), so colours compare
    across frames; near is warm, far is cool, unknown (≤ 0) is black.
    """
    known = np.isfinite(depth) & (depth > 0)
    inv = np.where(known, 1.0 / np.where(known, depth, 1.0), 0.0)
    lo, hi = np.percentile(inv[known], [2, 98]) if known.any() else (0.0, 1.0)
    t = np.clip((inv - lo) / max(hi - lo, 1e-12), 0, 1)
    gray = np.round(t * 255).astype(np.uint8)
    out = np.stack([cv2.applyColorMap(g, cv2.COLORMAP_TURBO)[:, :, ::-1] for g in gray])  # BGR -> RGB
    out[~known] = 0
    return out


# ----------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="image, video file, clip folder or folder of frames")
    parser.add_argument("--out", required=True, help="output clip folder (images/, depth/, depth_vis/)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    add_model_args(parser)
    add_sampling_args(parser)


def prepare_out(out: str, overwrite: bool) -> bool:
    """Whether write_clip may replace `out`: it is missing, an empty folder, or --overwrite was given."""
    if os.path.isdir(out) and not os.listdir(out):
        return True
    if os.path.lexists(out) and not overwrite:
        raise ValueError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")
    return overwrite


def run(args: argparse.Namespace) -> int:
    frames, fps = read_frames(args.input)
    kwargs = sampling_kwargs(args)
    overwrite = prepare_out(args.out, args.overwrite)
    bundle = bundle_from_args(args)
    with progress_bar("depth") as bar:
        result = estimate_depth(bundle, frames, progress=bar, **kwargs)
    write_clip(args.out, Clip(images=frames, depth=result.depth, fps=fps), overwrite=overwrite)
    os.makedirs(os.path.join(args.out, VIS_DIR), exist_ok=True)
    for i, vis in enumerate(colorize_depth(result.depth)):
        write_image(os.path.join(args.out, VIS_DIR, frame_name(i)), vis)
    print(f"wrote depth for {len(frames)} frame(s) to {args.out} (depth/, {VIS_DIR}/, images/)")
    return 0
