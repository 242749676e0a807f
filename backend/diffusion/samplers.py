"""Samplers for per-token flow matching: small pure functions sharing one signature.

    sampler(denoiser, x_obs (B, L, P), task_sigma (B, L), schedule (K + 1,), noise (B, L, P),
            *, cond_threshold=None, callback=None) -> x (B, L, P)

`denoiser(x, sigma) -> x̂₀` is E[x₀ | x_σ] as estimated by the model (flow.make_denoiser); the
schedule (schedule.flow_schedule) is the global level, decreasing to 0. At step k every token sits at
min(schedule[k], task_sigma): observed tokens (task_sigma = 0) stay at 0 and are clamped to x_obs
after every step (bit-identical at the end); a partially observed token starts from x_obs at its own
level and joins the trajectory once the global level falls below it (SDEdit, Meng et al. 2022);
generated tokens start from `noise`. Nothing is random inside: the same noise gives the same sample.

Stochastic conditioning (the "context clean or at a low level" of the 4D system in RESEARCH.md;
cf. history guidance, Song et al. 2025 "History-Guided Video Diffusion"): with `cond_threshold` τ,
while the global level is above τ the observed tokens are clamped; at the first step whose level
t ≤ τ they are re-noised to t from x_obs (with their entries of `noise`) and from then on denoised
jointly with the rest, so the final sample may move them to agree with what was generated.

The integrators, all in the flow parameterisation x_σ = (1 − σ)·x₀ + σ·ε:
- Euler: the first-order step x' = x̂₀ + (σ'/σ)·(x − x̂₀) — identical to DDIM (Song et al. 2021).
- Heun: Karras et al. 2022 ("Elucidating the Design Space…", Alg. 1), Euler on the final step.
- DPM-Solver++(2M): Lu et al. 2022 ("DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
  Probabilistic Models", Alg. 2) with α = 1 − σ, λ = log(α/σ): the data prediction is extrapolated
  D = (1 + 1/(2r))·x̂₀ₖ − 1/(2r)·x̂₀ₖ₋₁, r = hₖ₋₁/hₖ, h = λ' − λ, then the first-order update with D.
  Per token: a token that did not move on the previous step (or starts at σ = 1, where λ = −∞, or
  lands on σ' = 0) takes the first-order step.

`callback(step, total, x̂₀) -> bool` is called after each step; returning False raises
SamplingCancelled (None or True continue), which is how the server cancels a job.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, int, Tensor], "bool | None"]
# A step maps (denoiser, x, σ (B, L), σ' (B, L), state) to (x', x̂₀); state carries solver history.
Step = Callable[[Denoiser, Tensor, Tensor, Tensor, dict], tuple[Tensor, Tensor]]


class SamplingCancelled(RuntimeError):
    """Raised when the progress callback returns False."""


def _validate(x_obs: Tensor, task_sigma: Tensor, schedule: Tensor, noise: Tensor, tau: float | None) -> None:
    if x_obs.ndim != 3:
        raise ValueError(f"x_obs must be (B, L, P), got {tuple(x_obs.shape)}")
    if noise.shape != x_obs.shape:
        raise ValueError(f"noise must have shape {tuple(x_obs.shape)}, got {tuple(noise.shape)}")
    if task_sigma.shape != x_obs.shape[:2]:
        raise ValueError(f"task_sigma must have shape {tuple(x_obs.shape[:2])}, got {tuple(task_sigma.shape)}")
    if not bool(((task_sigma >= 0) & (task_sigma <= 1)).all()):
        raise ValueError("task_sigma must lie in [0, 1]")
    if schedule.ndim != 1 or schedule.numel() < 2:
        raise ValueError(f"schedule must be a 1-D tensor of at least 2 levels, got {tuple(schedule.shape)}")
    if not bool((schedule[1:] <= schedule[:-1]).all()) or float(schedule[0]) > 1 or float(schedule[-1]) != 0:
        raise ValueError("schedule must be non-increasing, start at <= 1 and end at exactly 0")
    if tau is not None and not 0.0 <= tau <= 1.0:
        raise ValueError(f"cond_threshold must be None or in [0, 1], got {tau}")


def _ddim(x: Tensor, x0: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """First-order flow step x' = x̂₀ + (σ'/σ)·(x − x̂₀) per token; tokens that do not move keep x."""
    s_, sn = s[..., None], s_next[..., None]  # (B, L, 1)
    ratio = sn / torch.where(s_ > 0, s_, torch.ones_like(s_))
    return torch.where(sn == s_, x, x0 + ratio * (x - x0))  # (B, L, P)


@torch.no_grad()
def _run(
    step: Step,
    denoiser: Denoiser,
    x_obs: Tensor,
    task_sigma: Tensor,
    schedule: Tensor,
    noise: Tensor,
    cond_threshold: float | None,
    callback: Callback | None,
) -> Tensor:
    """The loop every sampler shares: per-token levels, clamping, stochastic conditioning, callback."""
    _validate(x_obs, task_sigma, schedule, noise, cond_threshold)
    sched = schedule.to(device=x_obs.device, dtype=x_obs.dtype)
    ts = task_sigma.to(device=x_obs.device, dtype=x_obs.dtype)  # (B, L)
    cond = (ts == 0)[..., None]  # (B, L, 1) observed tokens
    s0 = torch.minimum(sched[0], ts)[..., None]  # (B, L, 1)
    x = torch.where(s0 == 0, x_obs, (1 - s0) * x_obs + s0 * noise)  # (B, L, P)
    total, freed, state = sched.numel() - 1, False, {}
    for k in range(total):
        t, t_next = sched[k], sched[k + 1]
        if cond_threshold is not None and not freed and 0 < float(t) <= cond_threshold:
            freed = True  # from here on the observations are noisy inputs, not constraints
            x = torch.where(cond, (1 - t) * x_obs + t * noise, x)
        s, s_next = torch.minimum(t, ts), torch.minimum(t_next, ts)  # (B, L)
        if freed:
            s, s_next = torch.where(cond[..., 0], t, s), torch.where(cond[..., 0], t_next, s_next)
        x, x0_hat = step(denoiser, x, s, s_next, state)
        if not freed:
            x = torch.where(cond, x_obs, x)
        if callback is not None and callback(k + 1, total, x0_hat) is False:
            raise SamplingCancelled(f"sampling cancelled after step {k + 1} of {total}")
    return x


def _euler_step(denoiser: Denoiser, x: Tensor, s: Tensor, s_next: Tensor, state: dict) -> tuple[Tensor, Tensor]:
    x0 = denoiser(x, s)  # (B, L, P)
    return _ddim(x, x0, s, s_next), x0


def _heun_step(denoiser: Denoiser, x: Tensor, s: Tensor, s_next: Tensor, state: dict) -> tuple[Tensor, Tensor]:
    x0 = denoiser(x, s)  # (B, L, P)
    x_euler = _ddim(x, x0, s, s_next)
    correct = (s_next > 0) & (s_next != s)  # (B, L) tokens with a second evaluation
    if not bool(correct.any()):
        return x_euler, x0  # the final step to σ = 0 stays first order (Karras Alg. 1)
    x0_e = denoiser(x_euler, s_next)
    s_, sn = s[..., None], s_next[..., None]  # (B, L, 1)
    d = (x - x0) / torch.where(s_ > 0, s_, torch.ones_like(s_))  # dx/dσ at the start
    d_e = (x_euler - x0_e) / torch.where(sn > 0, sn, torch.ones_like(sn))  # and at the Euler end point
    x_heun = x + (sn - s_) * 0.5 * (d + d_e)
    return torch.where(correct[..., None], x_heun, x_euler), x0


def _log_snr(s: Tensor) -> Tensor:
    """λ = log(α/σ) with α = 1 − σ: −∞ at σ = 1, +∞ at σ = 0 (float64)."""
    s = s.double()
    return torch.log1p(-s) - torch.log(s)


def _dpmpp_2m_step(
    denoiser: Denoiser, x: Tensor, s: Tensor, s_next: Tensor, state: dict
) -> tuple[Tensor, Tensor]:
    x0 = denoiser(x, s)  # (B, L, P)
    h = _log_snr(s_next) - _log_snr(s)  # (B, L); nan/inf where a level is 0 or 1
    h_prev, x0_prev = state.get("h"), state.get("x0")
    d = x0
    if h_prev is not None:
        use2 = torch.isfinite(h) & torch.isfinite(h_prev) & (h > 0) & (h_prev > 0)  # (B, L)
        safe = torch.where(use2, h_prev, torch.ones_like(h_prev))
        c = torch.where(use2, h / (2 * safe), torch.zeros_like(h)).to(x.dtype)[..., None]  # 1/(2r)
        d = x0 + c * (x0 - x0_prev)  # (B, L, P)
    state["h"], state["x0"] = h, x0
    return _ddim(x, d, s, s_next), x0


def sample_euler(
    denoiser: Denoiser,
    x_obs: Tensor,
    task_sigma: Tensor,
    schedule: Tensor,
    noise: Tensor,
    *,
    cond_threshold: float | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """First-order (Euler = DDIM) sampler; one network evaluation per step."""
    return _run(_euler_step, denoiser, x_obs, task_sigma, schedule, noise, cond_threshold, callback)


def sample_heun(
    denoiser: Denoiser,
    x_obs: Tensor,
    task_sigma: Tensor,
    schedule: Tensor,
    noise: Tensor,
    *,
    cond_threshold: float | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Second-order Heun sampler (Karras et al. 2022); two evaluations per step, one on the last."""
    return _run(_heun_step, denoiser, x_obs, task_sigma, schedule, noise, cond_threshold, callback)


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x_obs: Tensor,
    task_sigma: Tensor,
    schedule: Tensor,
    noise: Tensor,
    *,
    cond_threshold: float | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Second-order multistep DPM-Solver++(2M) (Lu et al. 2022); one evaluation per step."""
    return _run(_dpmpp_2m_step, denoiser, x_obs, task_sigma, schedule, noise, cond_threshold, callback)


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """Look a sampler up by name (the CLI's and the server's `sampler` parameter)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]
