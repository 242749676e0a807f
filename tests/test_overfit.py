"""The real `tiny` DiT trained with the real flow_loss overfits one clip on the CPU.

A smoke test of the whole training signal: tokenizer → masked flow-matching loss → DiT → Adam. With
the mask, the noise and the levels fixed, the target is a fixed function of the input, so a working
model and loss must drive the error down by an order of magnitude within a few dozen steps; a
broken mask (loss on nothing), a detached graph or a wrong target would not.
"""

from __future__ import annotations

import torch

from backend.diffusion.flow import FlowConfig, flow_loss
from backend.diffusion.masks import first_frame
from backend.geometry.rays import ray_map
from backend.model.config import preset
from backend.model.dit import DiT

FRAMES, SIZE, MAX_STEPS = 4, 32, 60


def _clip(layout) -> torch.Tensor:
    """One smooth synthetic clip (rgb, depth code, rays of a sideways-moving camera) as tokens (1, L, P)."""
    f = torch.arange(FRAMES, dtype=torch.float32)[:, None, None]
    v, u = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    pattern = torch.sin(u * v * 4).expand(FRAMES, -1, -1)
    rgb = torch.stack([torch.sin(3 * u + f), torch.cos(2 * v - f), pattern], dim=1)  # (F, 3, H, W)
    depth = (0.3 * torch.cos(2 * u + 0.5 * f) * v)[:, None]  # (F, 1, H, W) depth code in (−1, 1)
    K = torch.tensor([[30.0, 0, SIZE / 2], [0, 30.0, SIZE / 2], [0, 0, 1]]).expand(FRAMES, 3, 3)
    c2w = torch.eye(4).repeat(FRAMES, 1, 1)
    c2w[:, 0, 3] = 0.1 * torch.arange(FRAMES)
    rays = ray_map(K, c2w, SIZE, SIZE)  # (F, 6, H, W)
    return layout.patchify({"rgb": rgb[None], "depth": depth[None], "rays": rays[None]})


def test_tiny_dit_overfits_one_clip_with_flow_loss() -> None:
    torch.manual_seed(0)
    model = DiT(preset("tiny"))
    layout = model.token_layout(FRAMES, SIZE, SIZE)
    x0 = _clip(layout)
    task = first_frame(layout, 1, rays=True).task_sigma  # frame 0 rgb and all rays observed
    sigma = 0.7 * task  # generated tokens at one fixed level
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    available = torch.ones(1, 3, dtype=torch.bool)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # this size gains nothing from threads, and a busy 2-core box punishes them
    try:
        for _ in range(MAX_STEPS):
            loss, stats = flow_loss(model, x0, sigma, layout, available, FlowConfig(), noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if losses[-1] < losses[0] / 10:
                break
    finally:
        torch.set_num_threads(threads)
    assert stats["scored_fraction"] > 0.5  # the loss is on the generated tokens, not on nothing
    assert losses[0] > 0.1  # a zero-initialised head starts at the data's scale, not at 0
    assert min(losses) < losses[0] / 10, f"loss fell only from {losses[0]:.3f} to {min(losses):.3f}"
