"""The one mechanism behind every job: fill a window of modalities, choose the noise mask, sample.

Pipelines convert their inputs into model space with the helpers here (working resolution, RGB in
[-1, 1], depth and cameras normalised per clip, Plücker rays in the first camera's frame), build a
`TaskMask` from backend/diffusion/masks.py and call `complete`. Clips longer than the model's window
are cut by `windows` into overlapping spans that the pipelines stitch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from backend.diffusion.flow import make_denoiser
from backend.diffusion.masks import TaskMask
from backend.diffusion.samplers import get_sampler
from backend.diffusion.schedule import flow_schedule
from backend.geometry.normalize import ClipNormalization
from backend.geometry.rays import ray_map
from backend.model.tokenizer import MODALITIES, TokenLayout

from .bundle import ModelBundle

# progress(fraction in [0, 1], message); may raise to cancel (the server's JobCancelled).
Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str = "") -> None:
    """The default progress callback: ignore."""


def sub_progress(progress: Progress, lo: float, hi: float) -> Progress:
    """progress for a sub-task that reports fractions in [0, 1], mapped onto [lo, hi]."""
    return lambda f, msg="": progress(lo + (hi - lo) * min(max(f, 0.0), 1.0), msg)


def model_multiple(bundle: ModelBundle) -> int:
    """Working sizes must be multiples of the patch's height and width."""
    return math.lcm(bundle.cfg.patch[1], bundle.cfg.patch[2])


def working_size(height: int, width: int, area: int, multiple: int) -> tuple[int, int]:
    """(h, w) with the aspect ratio of (height, width), about `area` pixels, both multiples of `multiple`."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = math.sqrt(area / (height * width))
    h = max(multiple, round(height * scale / multiple) * multiple)
    w = max(multiple, round(width * scale / multiple) * multiple)
    return h, w


def scale_intrinsics(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics for a resized image (continuous pixel convention: a pure scale of each axis)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    S = np.diag([sx, sy, 1.0])
    return S @ np.asarray(K, np.float64)


def rgb_to_model(images: np.ndarray, size: tuple[int, int], device: torch.device) -> Tensor:
    """(F, H, W, 3) uint8 -> (1, F, 3, h, w) float in [-1, 1], area-resampled to `size`."""
    x = torch.as_tensor(np.ascontiguousarray(images), device=device).permute(0, 3, 1, 2).float() / 127.5 - 1
    x = F.interpolate(x, size=size, mode="area") if x.shape[-2:] != size else x
    return x[None]


def rgb_from_model(x: Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """(1, F, 3, h, w) in [-1, 1] -> (F, H, W, 3) uint8, bicubically upsampled to `size` if given."""
    x = x[0].float()
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def resize_depth(depth: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize z-depth maps (F, H, W) ignoring unknown (0) pixels: valid-weighted area average."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    valid = (depth > 0).float()[:, None]
    num = F.interpolate(depth[:, None] * valid, size=size, mode="area")
    den = F.interpolate(valid, size=size, mode="area")
    return torch.where(den > 0.5, num / den.clamp(min=1e-6), torch.zeros_like(num))[:, 0]


def rays_to_model(K: np.ndarray, c2w: np.ndarray, norm: ClipNormalization, size: tuple[int, int],
                  device: torch.device) -> Tensor:
    """Plücker ray maps of cameras (already scaled to `size`), in the clip's normalised frame. (1, F, 6, h, w)."""
    Kt = torch.as_tensor(K, dtype=torch.float64)
    c2w_n = norm.normalize_poses(torch.as_tensor(c2w, dtype=torch.float64))
    return ray_map(Kt, c2w_n, *size).float().to(device)[None]


def windows(frames: int, window: int, overlap: int) -> list[range]:
    """Cover range(frames) with spans of at most `window` frames overlapping by `overlap`.

    The last span is shifted back to end at the last frame, so every span is full when frames >= window.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got {window}, {overlap}")
    if frames <= window:
        return [range(frames)]
    spans, start, step = [], 0, window - overlap
    while True:
        end = min(start + window, frames)
        spans.append(range(end - window, end))
        if end == frames:
            return spans
        start += step


def complete(bundle: ModelBundle, video: dict[str, Tensor], mask: TaskMask, *, steps: int = 20, seed: int = 0,
             sampler: str = "heun", cond_threshold: float | None = None,
             progress: Progress = no_progress) -> dict[str, Tensor]:
    """Sample the tokens `mask` leaves noisy, keeping the observed ones; returns all modalities.

    video: modality -> (B, F, C, h, w) in model space; absent modalities are zeros and must be marked
    generated (or unavailable) in `mask`. Deterministic for a given seed.
    """
    first = next(iter(video.values()))
    B, Fr, _, h, w = first.shape
    cfg = bundle.cfg
    layout = TokenLayout(Fr, h, w, cfg.patch, cfg.channels)
    full = {m: video.get(m, torch.zeros(B, Fr, c, h, w, device=bundle.device)).to(bundle.device)
            for m, c in zip(MODALITIES, cfg.channels)}
    x_obs = layout.patchify(full)  # (B, L, P)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(x_obs.shape, generator=gen).to(bundle.device)
    denoiser = make_denoiser(bundle.model, layout, bundle.flow)
    schedule = flow_schedule(steps, bundle.flow.shift, device=bundle.device)

    def callback(step: int, total: int, x0: Tensor) -> bool:
        progress(step / total, f"denoising {step}/{total}")
        return True

    autocast = (torch.autocast(bundle.device.type, dtype=bundle.autocast_dtype) if bundle.autocast_dtype
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        x = get_sampler(sampler)(denoiser, x_obs, mask.task_sigma.to(bundle.device), schedule, noise,
                                 cond_threshold=cond_threshold, callback=callback)
    return layout.unpatchify(x.float())
