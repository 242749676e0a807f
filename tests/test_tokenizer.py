"""TokenLayout: patchify/unpatchify, token order, channel mask and pixel masks against explicit loops."""

from __future__ import annotations

import itertools

import pytest
import torch

from backend.model.tokenizer import MODALITIES, TokenLayout

# odd token grids (3, 3, 5) with a patch that is not a cube, and the default image patch
LAYOUTS = [
    TokenLayout(6, 9, 10, patch=(2, 3, 2), channels=(3, 1, 6)),
    TokenLayout(3, 24, 40, patch=(1, 8, 8), channels=(3, 1, 6)),
    TokenLayout(1, 6, 2, patch=(1, 2, 2), channels=(16, 16, 16)),
]


def _video(layout: TokenLayout, batch: int = 2) -> dict[str, torch.Tensor]:
    return {m: torch.randn(batch, layout.frames, c, layout.height, layout.width)
            for m, c in zip(MODALITIES, layout.channels)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_is_exact(layout):
    video = _video(layout)
    tokens = layout.patchify(video)
    assert tokens.shape == (2, layout.length, layout.patch_dim)
    back = layout.unpatchify(tokens)
    for m in MODALITIES:
        assert torch.equal(back[m], video[m])


def test_sizes():
    lay = TokenLayout(6, 9, 10, patch=(2, 3, 2), channels=(3, 1, 6))
    assert lay.grid == (3, 3, 5)
    assert lay.tokens_per_modality == 45
    assert lay.length == 135
    assert lay.patch_dim == 6 * 12
    assert lay.modality_slice("depth") == slice(45, 90)


def test_token_order_matches_explicit_indexing():
    """Token m·N + (f·H' + h)·W' + w, slot c·vol + (t·ph + i)·pw + j holds video[m][b, f·pt+t, c, h·ph+i, w·pw+j]."""
    lay = LAYOUTS[0]
    video = _video(lay, batch=1)
    tokens = lay.patchify(video)
    (Fg, Hg, Wg), (pt, ph, pw) = lay.grid, lay.patch
    N, vol = lay.tokens_per_modality, lay.patch_volume
    for mi, (m, C) in enumerate(zip(MODALITIES, lay.channels)):
        for f, h, w in itertools.product(range(Fg), range(Hg), range(Wg)):
            tok = mi * N + (f * Hg + h) * Wg + w
            for c, t, i, j in itertools.product(range(C), range(pt), range(ph), range(pw)):
                slot = c * vol + (t * ph + i) * pw + j
                want = video[m][0, f * pt + t, c, h * ph + i, w * pw + j]
                assert tokens[0, tok, slot] == want


def test_ids_positions_and_channel_mask():
    lay = LAYOUTS[0]
    N = lay.tokens_per_modality
    ids = lay.modality_ids()
    assert ids.tolist() == [0] * N + [1] * N + [2] * N
    pos = lay.positions()
    assert pos.shape == (lay.length, 3)
    expected = [list(p) for p in itertools.product(*(range(g) for g in lay.grid))]
    for mi in range(3):
        assert pos[mi * N:(mi + 1) * N].tolist() == expected
    # the mask is True exactly where a token built from all-ones videos holds a one
    ones = {m: torch.ones_like(v) for m, v in _video(lay, batch=1).items()}
    mask = lay.channel_mask()
    assert mask.dtype == torch.bool
    assert torch.equal(mask, lay.patchify(ones)[0] == 1)
    assert mask.sum().item() == N * sum(lay.channels) * lay.patch_volume


def test_missing_modality_is_zero():
    lay = LAYOUTS[1]
    video = _video(lay)
    tokens = lay.patchify({"rgb": video["rgb"]})
    assert torch.equal(tokens[:, lay.modality_slice("rgb")], lay.patchify(video)[:, lay.modality_slice("rgb")])
    assert not tokens[:, lay.modality_slice("rgb").stop:].any()


def test_pixel_mask_to_tokens_is_patch_fraction():
    lay = LAYOUTS[0]
    mask = torch.rand(2, lay.frames, lay.height, lay.width) > 0.5
    frac = lay.pixel_mask_to_tokens(mask)
    assert frac.shape == (2, lay.tokens_per_modality)
    (Fg, Hg, Wg), (pt, ph, pw) = lay.grid, lay.patch
    for b, f, h, w in itertools.product(range(2), range(Fg), range(Hg), range(Wg)):
        block = mask[b, f * pt:(f + 1) * pt, h * ph:(h + 1) * ph, w * pw:(w + 1) * pw]
        want = block.float().sum() / block.numel()
        assert frac[b, (f * Hg + h) * Wg + w] == pytest.approx(want.item(), abs=1e-6)
    assert lay.pixel_mask_to_tokens(torch.ones(1, lay.frames, lay.height, lay.width)).eq(1).all()


@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(frames=5, height=16, width=16, patch=(2, 8, 8)), "frames"),
    (dict(frames=2, height=12, width=16), "height"),
    (dict(frames=2, height=16, width=20), "width"),
    (dict(frames=2, height=16, width=16, channels=(3, 1)), "channels"),
])
def test_bad_layout_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TokenLayout(**kwargs)


def test_bad_inputs_raise():
    lay = LAYOUTS[1]
    with pytest.raises(ValueError, match="depth"):
        lay.patchify({"depth": torch.zeros(1, lay.frames, 3, lay.height, lay.width)})
    with pytest.raises(ValueError, match="unknown modality"):
        lay.patchify({"normals": torch.zeros(1, lay.frames, 3, lay.height, lay.width)})
    with pytest.raises(ValueError, match="modality"):
        lay.modality_slice("normals")
    with pytest.raises(ValueError, match="tokens"):
        lay.unpatchify(torch.zeros(1, lay.length + 1, lay.patch_dim))
