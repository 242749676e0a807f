"""Flow matching with a noise level per token (DESIGN.md "Diffusion").

Rectified flow (Liu et al. 2022; Lipman et al. 2022, "Flow Matching for Generative Modeling"):
x_σ = (1 − σ)·x₀ + σ·ε with ε ~ N(0, I), and the network regresses the velocity v = ε − x₀ (the
Wan2.1 / SD3 target) or x₀ itself. Here σ is a tensor (B, L): every token has its own level, which is
what turns one model into many tasks. σ = 0 marks an observed (clean) token; σ = 1 a token generated
from pure noise; levels in between are partially observed tokens.

The loss (the published 4D system in RESEARCH.md): mean squared error over the noisy tokens (σ > 0)
of the modalities a sample has, and over the real (non-padded) channels of each token; each
modality's mean is weighted and the weighted sum divided by the sum of the weights. A modality the
sample lacks (a plain video has no depth or rays) enters the network as pure noise at σ = 1 and is
never scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from backend.diffusion.schedule import sample_training_sigma
from backend.model.tokenizer import MODALITIES

if TYPE_CHECKING:
    from backend.model.tokenizer import TokenLayout

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x (B, L, P), sigma (B, L)) -> x0_hat (B, L, P)
TARGETS = ("velocity", "x0")


@dataclass
class FlowConfig:
    """How the network's output is read and how the training loss is formed."""

    target: str = "velocity"  # what the network predicts: "velocity" (v = ε − x₀, Wan2.1) or "x0"
    shift: float = 3.0  # timestep shift of the training levels (SD3 §5.3.2; the 4D system uses 3)
    modality_weights: tuple[float, ...] = (1.0, 1.0, 1.0)  # loss weight per modality, MODALITIES order
    context_noise_prob: float = 0.5  # training: chance a sample's observed tokens are noised at all
    context_noise_max: float = 0.2  # training: their level ~ U(0, max), capped by the sample's level

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if not self.shift > 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        w = tuple(float(v) for v in self.modality_weights)
        if len(w) != len(MODALITIES) or min(w) < 0 or sum(w) <= 0:
            raise ValueError(
                f"modality_weights must be {len(MODALITIES)} non-negative numbers with a positive sum, "
                f"got {self.modality_weights}"
            )
        self.modality_weights = w
        if not 0.0 <= self.context_noise_prob <= 1.0:
            raise ValueError(f"context_noise_prob must be in [0, 1], got {self.context_noise_prob}")
        if not 0.0 <= self.context_noise_max <= 1.0:
            raise ValueError(f"context_noise_max must be in [0, 1], got {self.context_noise_max}")


def _check_sigma(sigma: Tensor, x: Tensor) -> None:
    if sigma.shape != x.shape[:2]:
        raise ValueError(f"sigma must have shape {tuple(x.shape[:2])} (B, L), got {tuple(sigma.shape)}")
    if not bool(((sigma >= 0) & (sigma <= 1)).all()):
        raise ValueError("sigma must lie in [0, 1]")


def add_noise(x0: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
    """x_σ = (1 − σ)·x₀ + σ·ε per token. x0, noise: (B, L, P); sigma: (B, L).

    Tokens at σ = 0 are returned as x₀ bit for bit (whatever the noise holds there).
    """
    _check_sigma(sigma, x0)
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
    s = sigma[..., None].to(x0.dtype)  # (B, L, 1)
    return torch.where(s == 0, x0, (1 - s) * x0 + s * noise)  # (B, L, P)


def prediction_to_x0(pred: Tensor, x: Tensor, sigma: Tensor, target: str) -> Tensor:
    """The network's raw output → x̂₀. With v = ε − x₀, x_σ = x₀ + σ·v so x̂₀ = x_σ − σ·v̂.

    Tokens at σ = 0 return x exactly (an observed token is its own best estimate).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    s = sigma[..., None].to(x.dtype)  # (B, L, 1)
    pred = pred.to(x.dtype)
    x0 = x - s * pred if target == "velocity" else pred  # (B, L, P)
    return torch.where(s == 0, x, x0)


def make_denoiser(
    model: nn.Module, layout: TokenLayout, cfg: FlowConfig, context: Tensor | None = None
) -> Denoiser:
    """Wrap a DiT into the samplers' denoiser: (x (B, L, P), sigma (B, L)) → x̂₀ (B, L, P).

    Padded channels (beyond a modality's own) are zeroed on the way in — as in training — and out;
    clean tokens (σ = 0) come back as x exactly.
    """
    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        cmask = layout.channel_mask().to(device=x.device, dtype=x.dtype)  # (L, P)
        x_in = x * cmask  # (B, L, P)
        pred = model(x_in, sigma, layout, context=context)  # (B, L, P)
        x0 = prediction_to_x0(pred, x_in, sigma, cfg.target) * cmask
        return torch.where(sigma[..., None] == 0, x, x0)

    return denoiser


def training_sigma(task_sigma: Tensor, cfg: FlowConfig, generator: torch.Generator | None = None) -> Tensor:
    """Per-token training levels (B, L) from a mask pattern's task_sigma (B, L).

    Each sample draws one shifted level t; a token sits at min(t, task_sigma), exactly the level the
    sampler gives it at global level t. With probability `context_noise_prob` a sample's observed
    tokens (task_sigma = 0) are lifted to min(t, u·context_noise_max), u ~ U(0, 1): the published
    system's "context clean with probability ½, otherwise a low noise level", which is also what the
    stochastic-conditioning sampler feeds the network once it frees the conditioning.
    """
    B = task_sigma.shape[0]
    dev = task_sigma.device
    t = sample_training_sigma((B,), cfg.shift, generator, dev)[:, None]  # (B, 1)
    gdev = generator.device if generator is not None else dev
    coin = torch.rand((B, 1), generator=generator, device=gdev).to(dev) < cfg.context_noise_prob
    u = torch.rand((B, 1), generator=generator, device=gdev).to(dev) * cfg.context_noise_max
    sigma = torch.minimum(t, task_sigma)  # (B, L)
    ctx = torch.where(coin, torch.minimum(t, u), torch.zeros_like(u))  # (B, 1)
    return torch.where(task_sigma == 0, ctx.expand_as(sigma), sigma)


def flow_loss(
    model: nn.Module,
    x0: Tensor,
    sigma: Tensor,
    layout: TokenLayout,
    available: Tensor,
    cfg: FlowConfig,
    noise: Tensor | None = None,
    context: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Masked flow-matching loss. x0: (B, L, P) clean tokens; sigma: (B, L); available: (B, 3) bool.

    Unavailable modalities are fed as pure noise at σ = 1 and get no loss. The network input is
    treated as data (detached): gradients reach the parameters, and x0 only through the targets of
    scored tokens, never through clean or unavailable tokens. Returns (loss, stats); the loss is
    exactly 0 (and still differentiable) when no token is scored.
    """
    _check_sigma(sigma, x0)
    B, L, _P = x0.shape
    if available.shape != (B, len(MODALITIES)) or available.dtype != torch.bool:
        raise ValueError(f"available must be a bool tensor of shape ({B}, {len(MODALITIES)})")
    if noise is None:
        noise = torch.randn_like(x0)
    mod = layout.modality_ids().to(x0.device)  # (L,)
    avail_tok = available.gather(1, mod[None].expand(B, L))  # (B, L)
    sigma = torch.where(avail_tok, sigma, torch.ones_like(sigma))  # missing modality: pure noise
    cmask = layout.channel_mask().to(device=x0.device, dtype=x0.dtype)  # (L, P)
    x0_in = torch.where(avail_tok[..., None], x0, torch.zeros_like(x0))  # its content never enters
    x_sigma = (add_noise(x0_in, sigma, noise) * cmask).detach()  # (B, L, P)
    pred = model(x_sigma, sigma, layout, context=context).to(x0.dtype)  # (B, L, P)
    target = noise - x0 if cfg.target == "velocity" else x0  # (B, L, P)
    scored = ((sigma > 0) & avail_tok)[..., None] & (cmask > 0)  # (B, L, P)
    err = torch.where(scored, (pred - target) ** 2, torch.zeros_like(pred))  # (B, L, P)
    loss = pred.new_zeros(()) + 0.0 * pred.sum()  # keeps the graph when nothing is scored
    stats: dict[str, float] = {}
    for m, name in enumerate(MODALITIES):
        sel = (mod == m)[None, :, None]  # (1, L, 1)
        count = (scored & sel).sum()
        mean = (err * sel).sum() / count.clamp_min(1)
        loss = loss + cfg.modality_weights[m] * mean
        stats[f"loss_{name}"] = float(mean.detach())
    loss = loss / sum(cfg.modality_weights)
    stats["loss"] = float(loss.detach())
    stats["scored_fraction"] = float(((sigma > 0) & avail_tok).float().mean())
    return loss, stats
