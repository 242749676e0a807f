"""Mask patterns: which tokens a task observes, which it generates, and how noisy each starts.

A job is nothing but a choice of per-token levels (DESIGN.md): a pattern returns a `TaskMask` with
`task_sigma` (B, L) in [0, 1] — 0 observed (clean, clamped while sampling), 1 generated from pure
noise, in between partially observed (sampling starts that token at that level from its observed
value, SDEdit-style, Meng et al. 2022) — and `available` (B, 3): which modalities the sample has.
Training mixes the patterns per sample (`mixture`, as the five conditioning patterns of the 4D system
in RESEARCH.md); the jobs build their masks from the same functions, so the model is asked at
inference exactly what it was taught.

Token order follows backend/model/tokenizer.py: modality-major [rgb | depth | rays], each an
(f, h, w) raster over the token grid (F', H', W'). "Frame f" below means token frame f (with a
temporal patch of 1, the video frame f).

Every pattern has the signature `pattern(layout, batch, generator=None, device=None) -> TaskMask`;
bind extra arguments with functools.partial.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from backend.model.tokenizer import MODALITIES

if TYPE_CHECKING:
    from backend.model.tokenizer import TokenLayout


@dataclass
class TaskMask:
    """Per-token starting levels and per-sample modality availability."""

    task_sigma: Tensor  # (B, L) float32 in [0, 1]: 0 observed, 1 generated, between: partially observed
    available: Tensor  # (B, 3) bool: the sample has this modality (MODALITIES order)

    def __post_init__(self) -> None:
        if self.task_sigma.ndim != 2:
            raise ValueError(f"task_sigma must be (B, L), got {tuple(self.task_sigma.shape)}")
        if self.available.shape != (self.task_sigma.shape[0], len(MODALITIES)):
            raise ValueError(f"available must be (B, {len(MODALITIES)}), got {tuple(self.available.shape)}")
        if self.available.dtype != torch.bool:
            raise ValueError(f"available must be bool, got {self.available.dtype}")
        if not bool(((self.task_sigma >= 0) & (self.task_sigma <= 1)).all()):
            raise ValueError("task_sigma must lie in [0, 1]")

    def to(self, device: torch.device | str) -> TaskMask:
        return TaskMask(self.task_sigma.to(device), self.available.to(device))


Pattern = Callable[..., TaskMask]


def _check_modality(name: str) -> int:
    if name not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {name!r}")
    return MODALITIES.index(name)


def modality_levels(
    layout: TokenLayout, batch: int, device: torch.device | str | None = None, **levels: float | Tensor
) -> TaskMask:
    """Build a mask modality by modality: each keyword (rgb=, depth=, rays=) is a constant level or a
    (B, N) tensor of per-token levels; modalities not named are generated (level 1)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    N = layout.tokens_per_modality
    sigma = torch.ones(batch, layout.length, device=device)  # (B, L)
    for name, level in levels.items():
        _check_modality(name)
        sl = layout.modality_slice(name)
        if isinstance(level, Tensor):
            if level.shape != (batch, N):
                raise ValueError(f"{name} levels must have shape ({batch}, {N}), got {tuple(level.shape)}")
            sigma[:, sl] = level.to(sigma)
        else:
            sigma[:, sl] = float(level)
    available = torch.ones(batch, len(MODALITIES), dtype=torch.bool, device=device)
    return TaskMask(sigma, available)


def _frame_levels(layout: TokenLayout, batch: int, frames: Sequence[int], device) -> Tensor:
    """(B, N) levels: 0 on the given token frames, 1 elsewhere."""
    Fp, Hp, Wp = layout.grid
    per_frame = torch.ones(Fp, Hp * Wp, device=device)  # (F', H'·W')
    for f in frames:
        per_frame[f] = 0.0
    return per_frame.reshape(1, -1).expand(batch, -1).clone()  # (B, N)


def first_frame(
    layout: TokenLayout, batch: int, generator: torch.Generator | None = None, device=None, *, rays: bool = False
) -> TaskMask:
    """Frame 0's RGB observed, everything else generated; rays=True also observes every frame's rays
    (novel views along a known camera path)."""
    extra = {"rays": 0.0} if rays else {}
    return modality_levels(layout, batch, device, rgb=_frame_levels(layout, batch, [0], device), **extra)


def endpoints(
    layout: TokenLayout, batch: int, generator: torch.Generator | None = None, device=None, *, rays: bool = False
) -> TaskMask:
    """First and last frame's RGB observed (two-view interpolation); rays=True also observes every
    frame's rays (interpolation along a given camera path)."""
    last = layout.grid[0] - 1
    extra = {"rays": 0.0} if rays else {}
    return modality_levels(layout, batch, device, rgb=_frame_levels(layout, batch, [0, last], device), **extra)


def all_rgb(layout: TokenLayout, batch: int, generator: torch.Generator | None = None, device=None) -> TaskMask:
    """All RGB observed; depth and rays generated: depth estimation and camera recovery."""
    return modality_levels(layout, batch, device, rgb=0.0)


def all_depth(layout: TokenLayout, batch: int, generator: torch.Generator | None = None, device=None) -> TaskMask:
    """All depth observed; RGB and rays generated."""
    return modality_levels(layout, batch, device, depth=0.0)


def random_patches(
    layout: TokenLayout,
    batch: int,
    generator: torch.Generator | None = None,
    device=None,
    *,
    keep: tuple[float, float] = (0.05, 0.25),
    block: tuple[int, int, int] = (1, 2, 2),
) -> TaskMask:
    """Random spacetime blocks observed, independently per modality; the rest generated.

    The token grid is tiled by blocks of `block` tokens (f, h, w); each sample draws a keep rate
    p ~ U(keep) and each block of each modality is observed with probability p, so a small clean
    subset is kept (Bachmann et al. 2022, MultiMAE, samples its visible tokens per modality alike).
    """
    lo, hi = keep
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"keep must satisfy 0 <= lo <= hi <= 1, got {keep}")
    if len(block) != 3 or min(block) < 1:
        raise ValueError(f"block must be three positive ints, got {block}")
    Fp, Hp, Wp = layout.grid
    nb = [-(-g // b) for g, b in zip((Fp, Hp, Wp), block)]  # blocks per axis (ceil)
    p = lo + (hi - lo) * torch.rand(batch, 1, 1, 1, 1, generator=generator)  # (B, 1, 1, 1, 1)
    u = torch.rand(batch, len(MODALITIES), *nb, generator=generator)  # (B, 3, nF, nH, nW)
    clean = u < p
    for axis, b in zip((2, 3, 4), block):
        clean = clean.repeat_interleave(b, dim=axis)
    clean = clean[:, :, :Fp, :Hp, :Wp].reshape(batch, len(MODALITIES), -1)  # (B, 3, N)
    levels = (~clean).float().to(device)
    return modality_levels(layout, batch, device, **{m: levels[:, i] for i, m in enumerate(MODALITIES)})


def from_pixel_mask(
    layout: TokenLayout, visible: Tensor, modality: str = "rgb", partial: float = 1.0
) -> TaskMask:
    """Per-pixel visibility (B, F, H, W) — a warp's valid mask, a tracked region's complement — to
    per-token levels for one modality: fully visible patches observed (0), patches with no visible
    pixel generated (1), partly visible ones start at `partial`. The default 1 generates them: at
    inference their hidden pixels hold a filler (the warp's hole value), while in training they would
    hold the truth, so a level below 1 would teach the model to trust pixels it never has. Other
    modalities are generated."""
    _check_modality(modality)
    if not 0.0 <= partial <= 1.0:
        raise ValueError(f"partial must be in [0, 1], got {partial}")
    if visible.ndim != 4:
        raise ValueError(f"visible must be (B, F, H, W), got {tuple(visible.shape)}")
    frac = layout.pixel_mask_to_tokens(visible.bool())  # (B, N) visible fraction per patch
    level = torch.where(frac >= 1, 0.0, torch.where(frac <= 0, 1.0, partial))  # (B, N)
    return modality_levels(layout, visible.shape[0], visible.device, **{modality: level})


def combine(*masks: TaskMask) -> TaskMask:
    """Observe what any mask observes: elementwise minimum of levels, AND of availability."""
    if not masks:
        raise ValueError("combine needs at least one mask")
    sigma, avail = masks[0].task_sigma, masks[0].available
    for m in masks[1:]:
        sigma, avail = torch.minimum(sigma, m.task_sigma), avail & m.available
    return TaskMask(sigma, avail)


def with_availability(layout: TokenLayout, mask: TaskMask, available: Tensor) -> TaskMask:
    """Restrict a mask to the modalities a sample has: a missing modality is generated (level 1)
    and marked unavailable, so flow_loss feeds it as pure noise and never scores it."""
    avail = mask.available & available.to(mask.available.device)
    tok = avail.gather(1, layout.modality_ids().to(avail.device)[None].expand(avail.shape[0], -1))  # (B, L)
    return TaskMask(torch.where(tok, mask.task_sigma, torch.ones_like(mask.task_sigma)), avail)


def mixture(
    layout: TokenLayout,
    batch: int,
    patterns: Sequence[tuple[float, Pattern]],
    generator: torch.Generator | None = None,
    device=None,
) -> TaskMask:
    """Training masks: each sample draws one pattern with the given (unnormalised) probabilities.

    Every pattern is evaluated for the whole batch with the same generator (in list order) and the
    rows are picked per sample, so a fixed generator seed gives a fixed batch of masks.
    """
    if not patterns:
        raise ValueError("patterns must not be empty")
    probs = torch.tensor([float(p) for p, _ in patterns])
    if (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"pattern probabilities must be >= 0 with a positive sum, got {probs.tolist()}")
    choice = torch.multinomial(probs / probs.sum(), batch, replacement=True, generator=generator)  # (B,)
    sigma = torch.ones(batch, layout.length, device=device)
    avail = torch.ones(batch, len(MODALITIES), dtype=torch.bool, device=device)
    for i, (_, pattern) in enumerate(patterns):
        m = pattern(layout, batch, generator, device)
        rows = (choice == i).to(sigma.device)  # (B,)
        sigma = torch.where(rows[:, None], m.task_sigma.to(sigma.device), sigma)
        avail = torch.where(rows[:, None], m.available.to(avail.device), avail)
    return TaskMask(sigma, avail)


def default_training_mixture() -> list[tuple[float, Pattern]]:
    """The training mix of DESIGN.md "Training" (warp- and track-derived masks come from the data
    loader through from_pixel_mask, which needs the clip's geometry)."""
    from functools import partial

    return [
        (0.3, random_patches),
        (0.15, first_frame),
        (0.1, partial(first_frame, rays=True)),
        (0.1, endpoints),
        (0.1, partial(endpoints, rays=True)),
        (0.15, all_rgb),
        (0.1, all_depth),
    ]
