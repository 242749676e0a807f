"""Noise-level schedules for rectified flow: x_σ = (1 − σ)·x₀ + σ·ε, σ ∈ [0, 1].

The schedule is kept apart from the samplers (as in k-diffusion): a sampler receives a decreasing
tensor of levels and never decides them. The one knob is the *timestep shift* of SD3 (Esser et al.
2024, "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", §5.3.2) also used by
Wan2.1: σ' = s·σ / (1 + (s − 1)·σ). A shift s > 1 spends more steps (and more training samples) at
high noise, where the coarse structure of a larger-than-trained signal is decided.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_shift(shift: float) -> None:
    if not (isinstance(shift, int | float) and shift > 0):
        raise ValueError(f"shift must be a positive number, got {shift!r}")


def shift_sigma(sigma: Tensor | float, shift: float) -> Tensor | float:
    """SD3/Wan timestep shift σ' = s·σ / (1 + (s − 1)·σ); maps 0 → 0 and 1 → 1, monotone.

    Works on floats and tensors of any shape; s = 1 is the identity.
    """
    _check_shift(shift)
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_schedule(steps: int, shift: float = 3.0, device: torch.device | str | None = None) -> Tensor:
    """Sampling levels σ_0 = 1 > σ_1 > … > σ_steps = 0: uniform in t, then shifted. Returns (steps + 1,).

    Computed in float64 and returned as float32, so the end points are exactly 1 and 0.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)  # (steps + 1,)
    return shift_sigma(t, shift).to(torch.float32)


def sample_training_sigma(
    shape: tuple[int, ...] | torch.Size,
    shift: float = 3.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training noise levels: t ~ U(0, 1) shifted like the sampling schedule, so training sees the
    levels the sampler visits. Returns float32 of `shape` in [0, 1).

    `generator` (a CPU generator unless `device` matches it) makes the draw reproducible.
    """
    _check_shift(shift)
    gen_device = generator.device if generator is not None else device
    t = torch.rand(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32)
    return shift_sigma(t, shift).to(device)
