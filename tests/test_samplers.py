"""Samplers against closed-form Gaussian denoisers.

For x₀ ~ N(μ, Σ) and x_σ = A·x₀ + S·ε with A = diag(1 − σᵢ), S = diag(σᵢ) (one level per token),
the exact denoiser is E[x₀ | x_σ] = μ + ΣA (AΣA + S²)⁻¹ (x_σ − Aμ), and with Σ diagonal the
probability-flow ODE from ε ends exactly at μ + sd·ε. Sampling with some tokens clamped must give
the conditional Gaussian of the others given the clamped values (the Schur complement).
"""

from __future__ import annotations

import pytest
import torch

from backend.diffusion.samplers import SAMPLERS, SamplingCancelled, get_sampler, sample_euler
from backend.diffusion.schedule import flow_schedule, shift_sigma

MU = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
SD = torch.tensor([0.5, 1.5, 0.3], dtype=torch.float64)


def diag_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact E[x₀ | x_σ] for independent channels x₀ ~ N(MU, SD²). x: (B, L, 3); sigma: (B, L)."""
    s = sigma[..., None]
    gain = (1 - s) * SD**2 / ((1 - s) ** 2 * SD**2 + s**2)
    return torch.where(s == 0, x, MU + gain * (x - (1 - s) * MU))


class CorrelatedToy:
    """x₀ ~ N(μ, Σ) over L tokens of one channel, Σ an exponential kernel: tokens inform each other."""

    def __init__(self, length: int = 6) -> None:
        i = torch.arange(length, dtype=torch.float64)
        self.mu = torch.linspace(-1.0, 1.0, length, dtype=torch.float64)  # (L,)
        self.cov = 0.8 * torch.exp(-(i[:, None] - i[None]).abs() / 2.0)  # (L, L)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        shared = bool((sigma == sigma[:1]).all())  # one solve for the whole batch when levels agree
        a = 1 - (sigma[:1] if shared else sigma)  # (B or 1, L)
        M = a[:, :, None] * self.cov * a[:, None, :] + torch.diag_embed((1 - a) ** 2)  # (B or 1, L, L)
        r = (x[..., 0] - (1 - sigma) * self.mu).T[None] if shared else (x[..., 0] - a * self.mu)[..., None]
        sol = (self.cov * a[:, None, :]) @ torch.linalg.solve(M, r)  # (1, L, B) or (B, L, 1)
        x0 = self.mu + (sol[0].T if shared else sol[..., 0])  # (B, L)
        return torch.where(sigma[..., None] == 0, x, x0[..., None])

    def conditional(self, obs_idx: list[int], obs_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of the other tokens given x₀[obs_idx] = obs_val (Schur complement)."""
        free = [i for i in range(self.mu.numel()) if i not in obs_idx]
        S = self.cov
        Sfo, Soo = S[free][:, obs_idx], S[obs_idx][:, obs_idx]
        gain = Sfo @ torch.linalg.inv(Soo)
        mean = self.mu[free] + gain @ (obs_val - self.mu[obs_idx])
        return mean, S[free][:, free] - gain @ Sfo.T


def _noise(shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(("name", "steps"), [("euler", 64), ("heun", 32), ("dpmpp_2m", 32)])
def test_samplers_reproduce_gaussian_moments(name: str, steps: int) -> None:
    noise = _noise((200, 20, 3))  # 4000 samples per channel
    x = get_sampler(name)(diag_denoiser, torch.zeros_like(noise), torch.ones(200, 20), flow_schedule(steps, 1.0),
                          noise).reshape(-1, 3)
    tol_mean = 4 * SD / 4000**0.5 + 0.01  # four standard errors of the sample mean
    assert torch.all((x.mean(0) - MU).abs() < tol_mean)
    assert torch.all((x.var(0) / SD**2 - 1).abs() < 0.1)
    # the ODE endpoint is known sample by sample: the sampler must track it, not just the moments
    assert (x - (MU + SD * noise.reshape(-1, 3))).abs().mean() < 0.02


def test_second_order_samplers_need_fewer_steps() -> None:
    noise = _noise((50, 20, 3))
    exact = MU + SD * noise

    def steps_to_reach(name: str, tol: float = 0.01) -> int:
        for steps in (4, 8, 16, 32, 64, 128, 256, 512):
            x = get_sampler(name)(diag_denoiser, torch.zeros_like(noise), torch.ones(50, 20),
                                  flow_schedule(steps, 1.0), noise)
            if (x - exact).abs().mean() < tol:
                return steps
        return 10**9

    euler = steps_to_reach("euler")
    assert euler <= 512  # Euler converges, only slowly
    assert steps_to_reach("heun") < euler
    assert steps_to_reach("dpmpp_2m") < euler


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_clamped_tokens_bit_identical_and_conditional_correct(name: str) -> None:
    toy = CorrelatedToy(6)
    obs_idx, obs_val = [0, 5], torch.tensor([1.3, -0.2], dtype=torch.float64)
    B = 3000
    x_obs = torch.full((B, 6, 1), 7.0, dtype=torch.float64)  # junk where not observed: must be ignored
    x_obs[:, obs_idx, 0] = obs_val
    task = torch.ones(B, 6)
    task[:, obs_idx] = 0.0
    x = get_sampler(name)(toy, x_obs, task, flow_schedule(48, 1.0), _noise((B, 6, 1)))
    assert torch.equal(x[:, obs_idx], x_obs[:, obs_idx])
    mean, cov = toy.conditional(obs_idx, obs_val)
    free = x[:, [1, 2, 3, 4], 0]  # (B, 4)
    assert torch.allclose(free.mean(0), mean, atol=0.06)
    assert torch.allclose(torch.cov(free.T), cov, atol=0.06)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_partially_observed_tokens_start_at_their_level(name: str) -> None:
    """A token at task level p waits untouched while the global level is above p, then follows the
    schedule: identical to sampling from x_obs noised to p with the schedule cut at p (SDEdit)."""
    noise, x_obs = _noise((4, 5, 3)), _noise((4, 5, 3), seed=1)
    sched = flow_schedule(10, 1.0)  # 1.0, 0.9, ..., 0
    p = float(sched[3])  # exactly a schedule level
    seen = []
    out = get_sampler(name)(diag_denoiser, x_obs, torch.full((4, 5), p), sched, noise,
                            callback=lambda k, n, x0: seen.append(x0.clone()))
    ref = get_sampler(name)(diag_denoiser, x_obs, torch.ones(4, 5), sched[3:], noise)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    assert torch.equal(seen[0], seen[2])  # the waiting steps saw the same unchanged input


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_stochastic_conditioning_frees_observations_only_below_threshold(name: str) -> None:
    toy = CorrelatedToy(6)
    B = 8
    x_obs = torch.zeros(B, 6, 1, dtype=torch.float64)
    x_obs[:, 0, 0], x_obs[:, 1, 0] = 3.0, -3.0  # neighbours that the prior finds very unlikely
    task = torch.ones(B, 6)
    task[:, :2] = 0.0
    sched, noise = flow_schedule(20, 3.0), _noise((B, 6, 1))
    sampler = get_sampler(name)
    min_positive = float(sched[-2])
    for tau in (None, 0.0, min_positive / 2):
        x = sampler(toy, x_obs, task, sched, noise, cond_threshold=tau)
        assert torch.equal(x[:, :2], x_obs[:, :2])
    seen: list[torch.Tensor] = []
    x = sampler(toy, x_obs, task, sched, noise, cond_threshold=0.5,
                callback=lambda k, n, x0: seen.append(x0[:, :2].clone()))
    assert not torch.allclose(x[:, :2], x_obs[:, :2], atol=1e-3)
    for k, x0 in enumerate(seen):  # clamped (x̂₀ = x_obs) exactly while the level is above τ
        assert torch.equal(x0, x_obs[:, :2]) == (float(sched[k]) > 0.5)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_fixed_noise_is_deterministic(name: str) -> None:
    sampler, sched = get_sampler(name), flow_schedule(8)
    task = torch.rand(2, 7, generator=torch.Generator().manual_seed(3))
    x_obs = _noise((2, 7, 3), seed=5)
    a = sampler(diag_denoiser, x_obs, task, sched, _noise((2, 7, 3)), cond_threshold=0.3)
    b = sampler(diag_denoiser, x_obs, task, sched, _noise((2, 7, 3)), cond_threshold=0.3)
    c = sampler(diag_denoiser, x_obs, task, sched, _noise((2, 7, 3), seed=9), cond_threshold=0.3)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_callback_cancels_and_reports_progress() -> None:
    calls = []

    def cb(step: int, total: int, x0: torch.Tensor) -> bool:
        calls.append((step, total, tuple(x0.shape)))
        return step < 3

    noise = _noise((1, 4, 3))
    with pytest.raises(SamplingCancelled):
        sample_euler(diag_denoiser, torch.zeros_like(noise), torch.ones(1, 4), flow_schedule(10), noise, callback=cb)
    assert calls == [(1, 10, (1, 4, 3)), (2, 10, (1, 4, 3)), (3, 10, (1, 4, 3))]


def test_schedule_and_bad_inputs() -> None:
    sched = flow_schedule(4, shift=3.0)
    t = torch.linspace(1, 0, 5, dtype=torch.float64)
    assert torch.allclose(sched.double(), 3 * t / (1 + 2 * t), atol=1e-7)
    assert sched[0] == 1 and sched[-1] == 0
    assert shift_sigma(0.5, 1.0) == 0.5
    noise = _noise((1, 4, 3))
    x0, task = torch.zeros_like(noise), torch.ones(1, 4)
    with pytest.raises(ValueError, match="schedule"):
        sample_euler(diag_denoiser, x0, task, torch.tensor([1.0, 0.5]), noise)
    with pytest.raises(ValueError, match="task_sigma"):
        sample_euler(diag_denoiser, x0, task * 2, sched, noise)
    with pytest.raises(ValueError, match="noise"):
        sample_euler(diag_denoiser, x0, task, sched, noise[:, :2])
    with pytest.raises(ValueError, match="cond_threshold"):
        sample_euler(diag_denoiser, x0, task, sched, noise, cond_threshold=2.0)
    with pytest.raises(ValueError, match="sampler"):
        get_sampler("ddpm")


# ----------------------------------------------------------------------------------------------
# Best-of-N and the photometric reprojection score, on a textured plane seen by three cameras


def _rot_y(deg: float) -> torch.Tensor:
    a = torch.tensor(deg * torch.pi / 180)
    c, s = torch.cos(a), torch.sin(a)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _plane_scene(H: int = 24, W: int = 32):
    """A plane Z = 2 with a smooth colour texture, rendered exactly (ray-plane intersection) by three
    cameras. Returns rgb (1, 3, 3, H, W), depth (1, 3, H, W), K (1, 3, 3, 3), c2w (1, 3, 4, 4)."""
    from backend.geometry.projection import camera_directions

    K = torch.tensor([[28.0, 0, W / 2], [0, 28.0, H / 2], [0, 0, 1]])
    poses = [(0.0, (0.0, 0.0, 0.0)), (6.0, (0.3, 0.0, 0.05)), (-5.0, (-0.25, 0.1, 0.0))]
    c2w = torch.eye(4).repeat(3, 1, 1)
    for i, (deg, t) in enumerate(poses):
        c2w[i, :3, :3], c2w[i, :3, 3] = _rot_y(deg), torch.tensor(t)
    cam = camera_directions(K.expand(3, 3, 3), H, W)  # (3, H, W, 3), z = 1
    d = torch.einsum("fij,fhwj->fhwi", c2w[:, :3, :3], cam)
    o = c2w[:, None, None, :3, 3]
    depth = (2.0 - o[..., 2]) / d[..., 2]  # z-depth = ray parameter, since the camera-frame z is 1
    X, Y = (o + depth[..., None] * d).unbind(-1)[:2]
    rgb = torch.stack([torch.sin(4 * X) * torch.cos(3 * Y), torch.cos(5 * X + 1), torch.sin(3 * Y - X)], dim=1)
    return rgb[None], depth[None], K.expand(1, 3, 3, 3).clone(), c2w[None]


def _scene_tokens(layout, rgb, depth, K, c2w):
    from backend.geometry.rays import ray_map

    B, Fr = depth.shape[:2]
    rays = ray_map(K.flatten(0, 1), c2w.flatten(0, 1), layout.height, layout.width)  # (B·F, 6, H, W)
    rays = rays.reshape(B, Fr, 6, layout.height, layout.width)
    code = ((1 - depth) / (1 + depth))[:, :, None]  # the model's depth code at clip scale 1
    return layout.patchify({"rgb": rgb, "depth": code, "rays": rays})


def test_reprojection_error_prefers_true_geometry() -> None:
    from backend.diffusion.scoring import reprojection_error

    rgb, depth, K, c2w = _plane_scene()
    good = reprojection_error(rgb, depth, K, c2w, anchors=[0])
    assert good.shape == (1,) and good.item() < 0.03
    assert reprojection_error(rgb, depth * 1.2, K, c2w, anchors=[0]).item() > 4 * good.item()
    shifted = c2w.clone()
    shifted[0, 1, 0, 3] += 0.1
    assert reprojection_error(rgb, depth, K, shifted, anchors=[0]).item() > 4 * good.item()
    none_valid = torch.zeros(1, 3, 24, 32, dtype=torch.bool)
    assert reprojection_error(rgb, depth, K, c2w, anchors=[0], valid=none_valid).item() == float("inf")
    with pytest.raises(ValueError, match="anchors"):
        reprojection_error(rgb, depth, K, c2w, anchors=[3])


def test_reprojection_score_decodes_depth_and_rays_from_tokens() -> None:
    from backend.diffusion.scoring import reprojection_error, reprojection_score
    from backend.model.tokenizer import TokenLayout

    layout = TokenLayout(frames=3, height=24, width=32, patch=(1, 8, 8))
    rgb, depth, K, c2w = _plane_scene()
    x = _scene_tokens(layout, rgb, depth, K, c2w)
    want = reprojection_error(rgb, depth, K, c2w, anchors=[0, 2])
    assert torch.allclose(reprojection_score(x, layout, [0, 2], K=K), want, rtol=1e-3)
    assert torch.allclose(reprojection_score(x, layout, [0, 2]), want, rtol=1e-2)  # K from the rays too
    x[:, layout.modality_slice("rays")] = 0.0  # no directions at all: cameras undefined
    assert reprojection_score(x, layout, [0]).item() == float("inf")


def test_best_of_n_keeps_the_lowest_score_per_element() -> None:
    from backend.diffusion.scoring import best_of_n, reprojection_score
    from backend.model.tokenizer import TokenLayout

    layout = TokenLayout(frames=3, height=24, width=32, patch=(1, 8, 8))
    rgb, depth, K, c2w = _plane_scene()
    # per draw and batch element a depth error; element 0 is exact on draw 2, element 1 on draw 1
    factors = iter([[1.3, 0.7], [0.8, 1.0], [1.0, 1.25], [1.15, 0.9]])

    def sample_fn(gen: torch.Generator) -> torch.Tensor:
        f = torch.tensor(next(factors))[:, None, None, None]  # (2, 1, 1, 1)
        return _scene_tokens(layout, rgb.expand(2, -1, -1, -1, -1), depth * f, K.expand(2, -1, -1, -1),
                             c2w.expand(2, -1, -1, -1))

    best, scores = best_of_n(sample_fn, 4, lambda x: reprojection_score(x, layout, [0], K=K.expand(2, -1, -1, -1)),
                             torch.Generator().manual_seed(0))
    assert scores.shape == (4, 2)
    assert scores[:, 0].argmin() == 2 and scores[:, 1].argmin() == 1
    exact = _scene_tokens(layout, rgb, depth, K, c2w)[0]
    assert torch.equal(best[0], exact) and torch.equal(best[1], exact)
    with pytest.raises(ValueError, match="n must"):
        best_of_n(sample_fn, 0, lambda x: x, torch.Generator())
