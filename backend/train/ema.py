"""Exponential moving average of model weights: the weights that get shipped.

θ_ema ← d·θ_ema + (1 − d)·θ after every optimizer step (Polyak & Juditsky 1992; the EMA every
diffusion model ships, e.g. DiT, Peebles & Xie 2023, with d = 0.9999). Early in training the average
would be dominated by the random initialisation, so the effective decay warms up as
d_t = min(d, (1 + t) / (10 + t)) (the schedule of TensorFlow's ExponentialMovingAverage with
num_updates), which makes the EMA follow the weights closely for the first few hundred steps of a
short CPU run. The average is kept in fp32 whatever the training dtype.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An fp32 shadow copy of a module's parameters and buffers, updated in place."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.updates = 0  # optimizer steps averaged so far (drives the warm-up of the decay)
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        t = self.updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend `model`'s current parameters into the average (buffers are copied as they are)."""
        d = self.current_decay()
        shadow = [p for p in self.module.parameters()]
        live = [p.detach().float() for p in model.parameters()]
        if len(shadow) != len(live):
            raise ValueError(f"EMA.update: model has {len(live)} parameters, the EMA {len(shadow)}")
        torch._foreach_lerp_(shadow, live, 1.0 - d)  # e ← e + (1 − d)(θ − e) = d·e + (1 − d)·θ
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.updates += 1
