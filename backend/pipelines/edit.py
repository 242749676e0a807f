"""Propagate an edit of the first frame through a clip (DESIGN.md, job 3).

The edit region is where the edited frame differs from the original (or the user's mask). It is
tracked through the clip with dense optical flow (track.py) and dilated. The model then sees, per
window, the edited frame 0 clean (and already-edited frames clean), and every later frame clean
outside the tracked region and noisy inside it (masks.from_pixel_mask); depth and rays are generated.
This is masked-diffusion inpainting conditioned on the edited frame, as in RePaint-style clamping of
known pixels (Lugmayr et al., CVPR 2022) with the clean context of video inpainting models.
The completion is composited back at full resolution: pixels outside the dilated mask are the input's
own bytes, inside the model's upsampled output with a feathered seam, and frame 0 is the edit exactly.

Clips longer than the model window are done in windows that each keep the edited frame 0 and the last
edited frames as clean context, so the edit keeps its look however long the shot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from backend.data.clips import (
    IMAGE_EXTS,
    META_FILE,
    frame_name,
    read_frames,
    read_image,
    read_mask,
    write_image,
    write_mask,
    write_video,
)
from backend.diffusion.masks import TaskMask, from_pixel_mask
from backend.model.tokenizer import TokenLayout

from .bundle import ModelBundle
from .cli_common import add_model_args, add_sampling_args, bundle_from_args, progress_bar, sampling_kwargs
from .engine import Progress, complete, model_multiple, no_progress, rgb_from_model, rgb_to_model, working_size
from .track import TrackConfig, dilate_mask, edit_region, track_mask

CONTEXT = 2  # already-edited frames carried as clean context into each later window (besides frame 0)
TRACK_SHARE = 0.15  # fraction of the progress bar spent on tracking


@dataclass
class EditResult:
    """The edited clip and the region the model filled in each frame."""

    images: np.ndarray  # (F, H, W, 3) uint8: the input outside `masks`, the completion inside
    masks: np.ndarray  # (F, H, W) bool: tracked + dilated edit region (frame 0: every changed pixel too)
    windows: int = 0  # model windows sampled

    def arrays(self) -> dict[str, np.ndarray]:
        return {"images": self.images, "masks": self.masks}

    def params(self) -> dict:
        return {"frames": int(self.images.shape[0]), "windows": int(self.windows),
                "masked_fraction": float(self.masks[1:].mean()) if len(self.masks) > 1 else 0.0}


def _validate(video, edited, mask, dilate, threshold) -> None:
    if not isinstance(video, np.ndarray) or video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be (F, H, W, 3) uint8, got {getattr(video, 'shape', None)} "
                         f"{getattr(video, 'dtype', type(video))}")
    if min(video.shape[:3]) < 1:
        raise ValueError(f"video must have at least one frame of at least 1x1 pixels, got {video.shape}")
    if not isinstance(edited, np.ndarray) or edited.dtype != np.uint8 or edited.shape != video.shape[1:]:
        raise ValueError(f"edited must be {video.shape[1:]} uint8 like a video frame, got "
                         f"{getattr(edited, 'shape', None)} {getattr(edited, 'dtype', type(edited))}")
    if mask is not None and (not isinstance(mask, np.ndarray) or mask.dtype != np.bool_
                             or mask.shape != video.shape[1:3]):
        raise ValueError(f"mask must be {video.shape[1:3]} bool, got {getattr(mask, 'shape', None)} "
                         f"{getattr(mask, 'dtype', type(mask))}")
    if isinstance(dilate, bool) or not isinstance(dilate, int | np.integer) or dilate < 0:
        raise ValueError(f"dilate must be an int >= 0, got {dilate!r}")
    if not isinstance(threshold, int | float | np.number) or not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")


def edit_masks(video: np.ndarray, edited: np.ndarray, mask: np.ndarray | None = None, dilate: int = 8,
               threshold: float = 12, progress: Progress = no_progress) -> np.ndarray:
    """The region to regenerate in every frame, (F, H, W) bool: the edit region (the user's mask or the
    thresholded difference) tracked through the original video and dilated by `dilate` pixels.

    Frame 0's mask also holds every pixel the edit changed at all, so "outside the mask the output is
    the input" holds for frame 0 too.
    """
    region = mask if mask is not None else edit_region(video[0], edited, threshold)
    if not region.any():
        why = "mask is empty" if mask is not None else (
            f"edited: no pixel differs from video frame 0 by more than threshold={threshold}")
        raise ValueError(f"nothing to propagate: {why}")
    tracked = track_mask(video, region, TrackConfig(), progress)
    masks = dilate_mask(tracked, int(dilate))
    masks[0] |= (edited != video[0]).any(axis=-1)
    return masks


def plan_windows(frames: int, window: int, context: int = CONTEXT) -> list[tuple[list[int], list[int]]]:
    """Split frames 1..F−1 into model windows: a list of (clean context frames, frames to generate).

    Every window starts with frame 0 (the edit) and then the last already-done frames, up to `context`
    of them — more when the clip's tail leaves room, so every window is as full as the clip allows.
    """
    if window < 2:
        raise ValueError(f"edit propagation needs a model window of at least 2 frames, got {window}")
    context = max(0, min(context, window - 2))
    plans, done = [], 0  # frames 0..done are finished
    while done < frames - 1:
        keep = context if done else 0  # frame 0 is the first window's only context
        new = list(range(done + 1, min(frames, done + window - keep)))
        room = window - 1 - len(new)
        ctx = [0, *range(max(1, done - room + 1), done + 1)]
        plans.append((ctx, new))
        done = new[-1]
    return plans


def feather_alpha(mask: np.ndarray, width: int) -> np.ndarray:
    """Blend weight (H, W) float32 in [0, 1]: 0 outside `mask`, rising to 1 at `width` px inside its border."""
    m = mask.astype(np.uint8)
    if width <= 1 or not m.any():
        return m.astype(np.float32)
    dist = cv2.distanceTransform(m, cv2.DIST_L2, 3)  # px to the nearest pixel outside the mask
    return np.clip(dist / width, 0.0, 1.0).astype(np.float32)


def composite(frame: np.ndarray, completion: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray:
    """(H, W, 3) uint8: `frame`'s own bytes outside `mask`, the completion inside with a feathered seam."""
    a = feather_alpha(mask, width)[..., None]  # (H, W, 1)
    mixed = np.rint(a * completion.astype(np.float32) + (1 - a) * frame.astype(np.float32)).astype(np.uint8)
    return np.where(mask[..., None], mixed, frame)


def _window_input(bundle: ModelBundle, current: torch.Tensor, masks_w: torch.Tensor, ctx: list[int],
                  new: list[int]) -> tuple[dict[str, torch.Tensor], TaskMask]:
    """Model input of one window: context frames clean, new frames noisy inside their masks."""
    idx = ctx + new
    visible = torch.ones(1, len(idx), *current.shape[-2:], dtype=torch.bool, device=current.device)
    visible[0, len(ctx):] = ~masks_w[new]  # (1, n, h, w)
    rgb = current[idx][None] * visible[:, :, None]  # (1, n, 3, h, w); masked pixels mid-grey (0)
    layout = TokenLayout(len(idx), *current.shape[-2:], bundle.cfg.patch, bundle.cfg.channels)
    return {"rgb": rgb}, from_pixel_mask(layout, visible)


def propagate_edit(bundle: ModelBundle, video: np.ndarray, edited: np.ndarray, *, mask: np.ndarray | None = None,
                   dilate: int = 8, threshold: float = 12, steps: int = 20, seed: int = 0, sampler: str = "heun",
                   progress: Progress = no_progress) -> EditResult:
    """Propagate `edited` (the user's version of video[0]) through `video` (F, H, W, 3) uint8.

    mask: optional (H, W) bool edit region (default: |edited − video[0]| > threshold, cleaned).
    Returns the edited clip and per-frame masks; deterministic for a given seed.
    """
    _validate(video, edited, mask, dilate, threshold)
    F, H, W, _ = video.shape
    masks = edit_masks(video, edited, mask, int(dilate), threshold,
                       lambda f, m: progress(TRACK_SHARE * f, m))
    out = video.copy()
    out[0] = edited
    if F == 1:
        progress(1.0, "done")
        return EditResult(out, masks)
    size = working_size(H, W, bundle.area, model_multiple(bundle))
    current = rgb_to_model(out, size, bundle.device)[0]  # (F, 3, h, w)
    m = torch.as_tensor(masks, device=bundle.device).float()[:, None]  # (F, 1, H, W)
    masks_w = torch.nn.functional.interpolate(m, size=size, mode="area")[:, 0] > 0  # (F, h, w): any masked pixel
    plans = plan_windows(F, bundle.window)
    feather = max(1, int(dilate) // 2)
    for i, (ctx, new) in enumerate(plans):
        video_w, task = _window_input(bundle, current, masks_w, ctx, new)
        base, span = TRACK_SHARE + (1 - TRACK_SHARE) * i / len(plans), (1 - TRACK_SHARE) / len(plans)
        result = complete(bundle, video_w, task, steps=steps, seed=seed + i, sampler=sampler,
                          progress=lambda f, msg, b=base, s=span, k=i: progress(b + s * f, f"window {k + 1}: {msg}"))
        filled = rgb_from_model(result["rgb"][:, len(ctx):], (H, W))  # (n, H, W, 3)
        for j, f in enumerate(new):
            out[f] = composite(video[f], filled[j], masks[f], feather)
        current[new] = rgb_to_model(out[new], size, bundle.device)[0]  # done frames become clean context
    progress(1.0, "done")
    return EditResult(out, masks, windows=len(plans))


# ----------------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", required=True, help="video file, clip folder or folder of frames")
    parser.add_argument("--edited", required=True, help="the edited first frame (image)")
    parser.add_argument("--mask", default=None, help="edit region as a mask image (default: the difference)")
    parser.add_argument("--out", required=True, help="output folder (images/, masks/, edited.mp4 for videos)")
    parser.add_argument("--dilate", type=int, default=8, help="grow the tracked region by N pixels")
    parser.add_argument("--threshold", type=float, default=12, help="difference (0..255) that counts as edited")
    add_model_args(parser)
    add_sampling_args(parser)


def _is_video_file(path: str) -> bool:
    return os.path.isfile(path) and os.path.splitext(path)[1].lower() not in IMAGE_EXTS


def write_result(out: str, result: EditResult, fps: float | None, video: bool) -> None:
    """images/NNNN.png, masks/NNNN.png (+ clip.json with the frame rate, edited.mp4 for a video input)."""
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    for i, (img, m) in enumerate(zip(result.images, result.masks)):
        write_image(os.path.join(out, "images", frame_name(i)), img)
        write_mask(os.path.join(out, "masks", frame_name(i)), m)
    if fps is not None:
        with open(os.path.join(out, META_FILE), "w", encoding="utf-8") as f:
            json.dump({"fps": fps}, f)
    if video:
        H, W = result.images.shape[1:3]
        if H % 2 or W % 2:
            print(f"note: {W}x{H} is odd-sized, so no edited.mp4 was written (the PNG frames are complete)")
        else:
            write_video(os.path.join(out, "edited.mp4"), result.images, fps or 24.0)


def run(args: argparse.Namespace) -> int:
    frames, fps = read_frames(args.video)
    edited = read_image(args.edited)
    mask = read_mask(args.mask) if args.mask else None
    kwargs = sampling_kwargs(args)
    bundle = bundle_from_args(args)
    with progress_bar("edit") as bar:
        result = propagate_edit(bundle, frames, edited, mask=mask, dilate=args.dilate, threshold=args.threshold,
                                progress=bar, **kwargs)
    write_result(args.out, result, fps, _is_video_file(args.video))
    print(f"wrote {len(result.images)} edited frames and masks to {args.out}")
    return 0
