"""Flow matching with per-token σ: noising, reading predictions, the masked loss and the denoiser,
on a small real DiT whose output head is randomised (the shipped init zeroes it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backend.diffusion.flow import (
    FlowConfig,
    add_noise,
    flow_loss,
    make_denoiser,
    prediction_to_x0,
    training_sigma,
)
from backend.diffusion.masks import first_frame
from backend.diffusion.samplers import sample_dpmpp_2m
from backend.diffusion.schedule import flow_schedule
from backend.model.config import DiTConfig
from backend.model.dit import DiT
from backend.model.tokenizer import TokenLayout

LAYOUT = TokenLayout(frames=2, height=8, width=8, patch=(1, 4, 4))  # N = 8, L = 24, P = 96


def _model(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    cfg = DiTConfig(dim=32, depth=1, heads=2, mlp_dim=64, freq_dim=32, patch=(1, 4, 4))
    model = DiT(cfg)
    for p in model.head.parameters():  # a zero head would make every prediction 0
        nn.init.normal_(p, std=0.2)
    return model


def _data(B: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, LAYOUT.length, LAYOUT.patch_dim, generator=g)
    return x0 * LAYOUT.channel_mask()  # tokens as patchify makes them: padded slots 0


def _mixed_sigma(B: int = 2) -> torch.Tensor:
    sigma = torch.linspace(0.1, 0.9, LAYOUT.length).repeat(B, 1)  # (B, L)
    sigma[:, 0:3] = 0.0  # three clean rgb tokens
    sigma[:, 16:18] = 0.0  # two clean ray tokens
    return sigma


def test_add_noise_and_prediction_round_trip() -> None:
    x0, eps = _data(), torch.randn(2, LAYOUT.length, LAYOUT.patch_dim)
    sigma = _mixed_sigma()
    eps[:, 0] = float("nan")  # noise at a clean token must not leak
    x = add_noise(x0, sigma, eps)
    assert torch.equal(x[:, :3], x0[:, :3])
    s = sigma[1, 5]
    assert torch.allclose(x[1, 5], (1 - s) * x0[1, 5] + s * eps[1, 5])
    v = eps - x0  # the exact velocity target
    back, clean = prediction_to_x0(v, x, sigma, "velocity"), sigma == 0
    assert torch.equal(back[clean], x[clean])  # σ = 0: x itself, whatever the prediction
    assert torch.allclose(back[~clean], x0[~clean], atol=1e-5)
    assert torch.equal(prediction_to_x0(x0 + 1, x, sigma, "x0")[~clean], x0[~clean] + 1)
    with pytest.raises(ValueError, match="target"):
        prediction_to_x0(v, x, sigma, "eps")


def _hand_loss(model, x0, sigma, noise, available, weights) -> torch.Tensor:
    """The loss written out token by token, as an oracle."""
    mod = LAYOUT.modality_ids()
    s = sigma.clone()
    x_in = torch.empty_like(x0)
    cm = LAYOUT.channel_mask().float()
    for b in range(x0.shape[0]):
        for i in range(LAYOUT.length):
            if not available[b, mod[i]]:
                s[b, i] = 1.0
            x_in[b, i] = noise[b, i] if not available[b, mod[i]] else (1 - s[b, i]) * x0[b, i] + s[b, i] * noise[b, i]
    pred = model(x_in * cm, s, LAYOUT)
    sums, counts = torch.zeros(3), torch.zeros(3)
    for b in range(x0.shape[0]):
        for i in range(LAYOUT.length):
            m = int(mod[i])
            if s[b, i] > 0 and available[b, m]:
                real = cm[i].bool()
                sums[m] += ((pred[b, i] - (noise[b, i] - x0[b, i]))[real] ** 2).sum()
                counts[m] += int(real.sum())
    w = torch.tensor(weights)
    return (w * sums / counts.clamp_min(1)).sum() / w.sum()


def test_flow_loss_matches_hand_computation() -> None:
    model, x0, sigma = _model(), _data(), _mixed_sigma()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    available = torch.tensor([[True, False, True], [True, True, True]])
    cfg = FlowConfig(modality_weights=(1.0, 0.5, 2.0))
    loss, stats = flow_loss(model, x0, sigma, LAYOUT, available, cfg, noise)
    want = _hand_loss(model, x0, sigma, noise, available, cfg.modality_weights)
    assert torch.allclose(loss, want, rtol=1e-5)
    assert stats["loss"] == pytest.approx(float(want.detach()), rel=1e-5)


def test_flow_loss_is_exactly_zero_when_everything_is_clean() -> None:
    model, x0 = _model(), _data()
    loss, stats = flow_loss(model, x0, torch.zeros(2, LAYOUT.length), LAYOUT, torch.ones(2, 3, dtype=torch.bool),
                            FlowConfig())
    assert loss.item() == 0.0 and stats["scored_fraction"] == 0.0
    loss.backward()  # still part of the graph
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_no_gradient_or_dependence_through_clean_and_unavailable_tokens() -> None:
    model, sigma = _model(), _mixed_sigma()
    available = torch.tensor([[True, False, True], [True, True, True]])
    noise = torch.randn(2, LAYOUT.length, LAYOUT.patch_dim, generator=torch.Generator().manual_seed(1))
    x0 = _data().requires_grad_(True)
    loss, _ = flow_loss(model, x0, sigma, LAYOUT, available, FlowConfig(), noise)
    loss.backward()
    g = x0.grad.abs().sum(-1)  # (B, L)
    clean = sigma == 0
    unavailable = torch.zeros_like(clean)
    unavailable[0, 8:16] = True  # sample 0 has no depth (tokens 8..15)
    assert not g[clean | unavailable].any()
    assert bool((g[~clean & ~unavailable] > 0).all())
    # padded slots (rgb beyond 48, depth beyond 16) carry nothing
    assert not x0.grad[:, :8, 48:].any() and not x0.grad[:, 8:16, 16:].any()
    # the loss ignores the noise drawn for clean tokens and the content of unavailable modalities
    noise2, x2 = noise.clone(), _data().clone()
    noise2[clean] = 100.0
    x2[0, 8:16] = -50.0
    l1, _ = flow_loss(model, _data(), sigma, LAYOUT, available, FlowConfig(), noise)
    l2, _ = flow_loss(model, x2, sigma, LAYOUT, available, FlowConfig(), noise2)
    assert torch.equal(l1, l2)


def test_denoiser_clamps_clean_tokens_and_drives_samplers() -> None:
    model, cfg = _model(), FlowConfig()
    den = make_denoiser(model, LAYOUT, cfg)
    x, sigma = torch.randn(2, LAYOUT.length, LAYOUT.patch_dim), _mixed_sigma()
    with torch.no_grad():
        out = den(x, sigma)
        cm = LAYOUT.channel_mask()
        want = (x * cm - sigma[..., None] * model(x * cm, sigma, LAYOUT)) * cm
    assert torch.equal(out[sigma == 0], x[sigma == 0])
    assert torch.allclose(out[sigma > 0], want[sigma > 0], atol=1e-6)
    task = first_frame(LAYOUT, 2, rays=True).task_sigma
    x_obs = _data()
    sample = sample_dpmpp_2m(den, x_obs, task, flow_schedule(4), torch.randn_like(x_obs))
    assert torch.equal(sample[task == 0], x_obs[task == 0])
    assert torch.isfinite(sample).all()
    assert not sample[:, 8:16, 16:].any()  # padded depth slots stay zero


def test_training_sigma_follows_task_levels() -> None:
    task = torch.tensor([[0.0, 1.0, 1.0, 0.3]]).repeat(500, 1)
    s = training_sigma(task, FlowConfig(context_noise_prob=0.5, context_noise_max=0.1),
                       torch.Generator().manual_seed(0))
    t = s[:, 1]
    assert torch.equal(s[:, 2], t) and torch.equal(s[:, 3], torch.minimum(t, torch.tensor(0.3)))
    ctx = s[:, 0]
    assert bool((ctx <= torch.minimum(t, torch.tensor(0.1))).all())
    assert 0.4 < (ctx == 0).float().mean() < 0.6  # clean with probability ½
    assert (t > 0.5).float().mean() > 0.6  # shift 3 favours high levels: P(σ > ½) = 3/4
    none = training_sigma(task, FlowConfig(context_noise_prob=0.0), torch.Generator().manual_seed(0))
    assert not none[:, 0].any()


def test_flow_config_validation() -> None:
    with pytest.raises(ValueError, match="target"):
        FlowConfig(target="eps")
    with pytest.raises(ValueError, match="modality_weights"):
        FlowConfig(modality_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="shift"):
        FlowConfig(shift=0.0)
    with pytest.raises(ValueError, match="available"):
        flow_loss(_model(), _data(), _mixed_sigma(), LAYOUT, torch.ones(2, 3), FlowConfig())
