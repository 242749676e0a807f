"""Mask patterns produce the documented per-token levels on a tiny layout, checked by hand."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from backend.diffusion import masks
from backend.model.tokenizer import TokenLayout

# grid (F', H', W') = (3, 2, 2): N = 12 tokens per modality, L = 36; rgb 0..11, depth 12..23, rays 24..35
LAYOUT = TokenLayout(frames=3, height=8, width=8, patch=(1, 4, 4))


def _expected(rgb=1.0, depth=1.0, rays=1.0) -> torch.Tensor:
    parts = [torch.as_tensor(v, dtype=torch.float32).expand(12) for v in (rgb, depth, rays)]
    return torch.cat(parts)  # (36,)


def test_first_frame_and_endpoints() -> None:
    frame0 = torch.tensor([0.0] * 4 + [1.0] * 8)
    m = masks.first_frame(LAYOUT, 2)
    assert torch.equal(m.task_sigma, _expected(rgb=frame0).expand(2, -1))
    assert m.available.all()
    m = masks.first_frame(LAYOUT, 1, rays=True)
    assert torch.equal(m.task_sigma[0], _expected(rgb=frame0, rays=0.0))
    ends = torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4)
    assert torch.equal(masks.endpoints(LAYOUT, 1).task_sigma[0], _expected(rgb=ends))
    assert torch.equal(masks.endpoints(LAYOUT, 1, rays=True).task_sigma[0], _expected(rgb=ends, rays=0.0))


def test_all_rgb_and_all_depth() -> None:
    assert torch.equal(masks.all_rgb(LAYOUT, 1).task_sigma[0], _expected(rgb=0.0))
    assert torch.equal(masks.all_depth(LAYOUT, 1).task_sigma[0], _expected(depth=0.0))


def test_from_pixel_mask_by_hand() -> None:
    visible = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    visible[0, 0, :4, :4] = True  # frame 0, token (0, 0): fully visible -> 0
    visible[0, 0, :1, 4:8] = True  # frame 0, token (0, 1): 4 of 16 pixels -> partial
    visible[0, 2] = True  # frame 2: every token fully visible -> 0
    m = masks.from_pixel_mask(LAYOUT, visible, partial=0.4)
    rgb = torch.tensor([0.0, 0.4, 1.0, 1.0] + [1.0] * 4 + [0.0] * 4)
    assert torch.allclose(m.task_sigma[0], _expected(rgb=rgb))
    m = masks.from_pixel_mask(LAYOUT, visible, modality="depth", partial=0.7)
    assert torch.allclose(m.task_sigma[0], _expected(depth=torch.where(rgb == 0.4, 0.7, rgb)))
    with pytest.raises(ValueError, match="modality"):
        masks.from_pixel_mask(LAYOUT, visible, modality="normals")
    with pytest.raises(ValueError, match="partial"):
        masks.from_pixel_mask(LAYOUT, visible, partial=1.5)


def test_random_patches_blocks_rates_and_determinism() -> None:
    gen = torch.Generator().manual_seed(0)
    m = masks.random_patches(LAYOUT, 400, gen, keep=(0.1, 0.3), block=(1, 2, 2))
    s = m.task_sigma.reshape(400, 3, 3, 4)  # (B, modality, frame, token in frame)
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(s, s[..., :1].expand_as(s))  # a (1, 2, 2) block covers a whole token frame here
    clean = 1 - m.task_sigma.mean()
    assert 0.15 < clean < 0.25  # E[p] = 0.2 with p ~ U(0.1, 0.3)
    again = masks.random_patches(LAYOUT, 400, torch.Generator().manual_seed(0), keep=(0.1, 0.3))
    assert torch.equal(again.task_sigma, m.task_sigma)
    with pytest.raises(ValueError, match="keep"):
        masks.random_patches(LAYOUT, 1, keep=(0.5, 0.2))


def test_mixture_picks_whole_patterns_with_given_rates() -> None:
    patterns = [(1.0, masks.all_rgb), (3.0, partial(masks.first_frame, rays=True))]
    m = masks.mixture(LAYOUT, 2000, patterns, torch.Generator().manual_seed(1))
    a, b = masks.all_rgb(LAYOUT, 1).task_sigma, masks.first_frame(LAYOUT, 1, rays=True).task_sigma
    is_a, is_b = (m.task_sigma == a).all(1), (m.task_sigma == b).all(1)
    assert bool((is_a ^ is_b).all())  # every row is exactly one of the patterns
    assert 0.21 < is_a.float().mean() < 0.29  # probability 1/4
    again = masks.mixture(LAYOUT, 2000, patterns, torch.Generator().manual_seed(1))
    assert torch.equal(again.task_sigma, m.task_sigma)
    only = masks.mixture(LAYOUT, 50, [(0.0, masks.all_rgb), (1.0, masks.all_depth)])
    assert torch.equal(only.task_sigma, masks.all_depth(LAYOUT, 50).task_sigma)
    full = masks.mixture(LAYOUT, 64, masks.default_training_mixture(), torch.Generator().manual_seed(2))
    assert full.task_sigma.shape == (64, 36) and bool(((full.task_sigma == 0) | (full.task_sigma == 1)).all())
    with pytest.raises(ValueError, match="probabilities"):
        masks.mixture(LAYOUT, 2, [(-1.0, masks.all_rgb)])


def test_combine_and_availability() -> None:
    both = masks.combine(masks.first_frame(LAYOUT, 1), masks.modality_levels(LAYOUT, 1, rays=0.0))
    assert torch.equal(both.task_sigma, masks.first_frame(LAYOUT, 1, rays=True).task_sigma)
    restricted = masks.with_availability(LAYOUT, masks.all_depth(LAYOUT, 2), torch.tensor([[True, False, True],
                                                                                             [True, True, True]]))
    assert torch.equal(restricted.task_sigma[0], _expected())  # no depth: depth is generated, not observed
    assert torch.equal(restricted.task_sigma[1], _expected(depth=0.0))
    assert restricted.available.tolist() == [[True, False, True], [True, True, True]]


def test_task_mask_validation() -> None:
    with pytest.raises(ValueError, match="task_sigma"):
        masks.TaskMask(torch.full((1, 36), 1.5), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="available"):
        masks.TaskMask(torch.ones(1, 36), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="rgb levels"):
        masks.modality_levels(LAYOUT, 2, rgb=torch.zeros(2, 5))
