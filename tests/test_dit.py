"""DiT: presets, Wan2.1 state-dict names, per-token modulation, MoT routing, RoPE, padding."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from backend.model.config import PRESETS, DiTConfig, preset
from backend.model.dit import DiT
from backend.model.layers import apply_rope, rope_tables, sinusoidal_embedding
from backend.model.tokenizer import MODALITIES


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls: one thread avoids OpenMP barrier stalls on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = DiTConfig(dim=64, depth=2, heads=2, mlp_dim=96, freq_dim=32, patch=(1, 4, 4), channels=(3, 1, 6))


def wan_shapes(dim, mlp, depth, freq, text_dim, in_ch, patch) -> dict[str, tuple]:
    """Names and shapes of the original Wan2.1 T2V DiT state dict (RESEARCH.md), written out by hand."""
    lin = lambda o, i, name: {f"{name}.weight": (o, i), f"{name}.bias": (o,)}  # noqa: E731
    s = {"patch_embedding.weight": (dim, in_ch, *patch), "patch_embedding.bias": (dim,)}
    s |= lin(dim, text_dim, "text_embedding.0") | lin(dim, dim, "text_embedding.2")
    s |= lin(dim, freq, "time_embedding.0") | lin(dim, dim, "time_embedding.2")
    s |= lin(6 * dim, dim, "time_projection.1")
    for n in range(depth):
        b = f"blocks.{n}"
        s[f"{b}.modulation"] = (1, 6, dim)
        for att in ("self_attn", "cross_attn"):
            for p in "qkvo":
                s |= lin(dim, dim, f"{b}.{att}.{p}")
            s[f"{b}.{att}.norm_q.weight"] = (dim,)
            s[f"{b}.{att}.norm_k.weight"] = (dim,)
        s[f"{b}.norm3.weight"] = (dim,)
        s[f"{b}.norm3.bias"] = (dim,)
        s |= lin(mlp, dim, f"{b}.ffn.0") | lin(dim, mlp, f"{b}.ffn.2")
    s["head.modulation"] = (1, 2, dim)
    s |= lin(in_ch * patch[0] * patch[1] * patch[2], dim, "head.head")
    return s


def _randomise_head(model: DiT) -> None:
    """The head is zero-initialised; give it weights so outputs carry information."""
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(std=0.1)


def _inputs(model: DiT, frames=2, height=8, width=12, batch=2):
    ph, pw = model.cfg.patch[1:]
    lay = model.token_layout(frames, height * ph // 4, width * pw // 4)
    x = torch.randn(batch, lay.length, lay.patch_dim) * lay.channel_mask()
    return lay, x, torch.rand(batch, lay.length)


def test_wan_preset_state_dict_matches_wan21_names_and_shapes():
    with torch.device("meta"):
        model = DiT(preset("wan-1.3b"))
    want = wan_shapes(dim=1536, mlp=8960, depth=30, freq=256, text_dim=4096, in_ch=16, patch=(1, 2, 2))
    assert want["head.head.weight"] == (64, 1536)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wan_part = {k: v for k, v in got.items() if k in want}
    assert wan_part == want
    # every other name is a modality stream or the modality embedding, never a Wan name
    extra = set(got) - set(want)
    pattern = re.compile(r"(^|\.)[a-z_]+_(depth|rays)(\.|$)|^modality_embedding$")
    assert extra and all(pattern.search(k) for k in extra)
    assert "blocks.29.self_attn.q_depth.weight" in extra and "head.head_rays.weight" in extra


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_presets_forward_shapes(name):
    model = DiT(preset(name))
    _randomise_head(model)
    lay, x, s = _inputs(model, frames=1, height=8, width=8, batch=1)
    with torch.no_grad():
        y = model(x, s, lay)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert (y != 0).any()


def test_wan_preset_forward_on_meta():
    with torch.device("meta"):
        model = DiT(preset("wan-1.3b"))
        lay = model.token_layout(2, 4, 6)
        x, s = torch.zeros(1, lay.length, lay.patch_dim), torch.zeros(1, lay.length)
        y = model(x, s, lay, context=torch.zeros(1, 7, 4096))
    assert y.shape == (1, 3 * 2 * 2 * 3, 64)


def test_untrained_model_predicts_zero_and_padding_is_zero():
    model = DiT(SMALL)
    lay, x, s = _inputs(model)
    assert not model(x, s, lay).any()  # zero-initialised head (adaLN-Zero)
    _randomise_head(model)
    y = model(x, s, lay)
    mask = lay.channel_mask()
    assert not y[:, ~mask].any()
    assert (y[:, mask] != 0).float().mean() > 0.99


def test_modulation_is_per_token():
    """With attention's output projection zeroed the model is token-wise, so token j's output under a
    per-token σ must equal its output when every token has σ_j."""
    model = DiT(SMALL)
    _randomise_head(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"self_attn\.o(_\w+)?\.", name):
                p.zero_()
    lay, x, _ = _inputs(model, batch=1)
    sigma = torch.tensor([0.0, 0.3, 1.0])[torch.arange(lay.length) % 3][None]  # (1, L)
    with torch.no_grad():
        y = model(x, sigma, lay)
        for value in (0.0, 0.3, 1.0):
            sel = sigma[0] == value
            y_uniform = model(x, torch.full_like(sigma, value), lay)
            torch.testing.assert_close(y[0, sel], y_uniform[0, sel], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model(x, torch.zeros_like(sigma), lay), y, atol=1e-3)


def test_mot_with_copied_streams_equals_shared_model():
    """MoT routing oracle: streams holding the RGB weights must reproduce the shared-weight model."""
    shared = DiT(dataclasses.replace(SMALL, mot=False))
    _randomise_head(shared)
    mot = DiT(dataclasses.replace(SMALL, mot=True))
    src = shared.state_dict()
    state = {k: src[re.sub(r"_(depth|rays)(?=\.)", "", k)] if k not in src else src[k] for k in mot.state_dict()}
    mot.load_state_dict(state)
    assert any("_depth" in k for k in state) and not any("_depth." in k and "ffn" in k for k in src)
    lay, x, s = _inputs(shared)
    with torch.no_grad():
        torch.testing.assert_close(mot(x, s, lay), shared(x, s, lay), rtol=1e-5, atol=1e-6)
        mot.blocks[0].ffn_depth[0].weight.add_(0.5)  # now depth tokens see a different FFN
        assert not torch.allclose(mot(x, s, lay), shared(x, s, lay), atol=1e-4)


def test_mot_streams_receive_gradients():
    model = DiT(SMALL)
    _randomise_head(model)
    lay, x, s = _inputs(model, batch=1)
    model(x, s, lay).square().mean().backward()
    for m in MODALITIES[1:]:
        assert model.blocks[0].self_attn.get_submodule(f"q_{m}").weight.grad.abs().sum() > 0
        assert model.blocks[1].get_submodule(f"ffn_{m}")[0].weight.grad.abs().sum() > 0


def test_rope_logits_depend_only_on_relative_position():
    dims, D = (8, 6, 6), 20
    q, k = torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D)

    def logit(pq, pk):
        cos, sin = rope_tables(torch.tensor([pq, pk]), dims, 10000.0)  # (2, D/2)
        rq = apply_rope(q, cos[:1], sin[:1])
        rk = apply_rope(k, cos[1:], sin[1:])
        return (rq * rk).sum()

    base = logit([3, 1, 4], [1, 5, 9])
    for shift in ([1, 0, 0], [0, 7, 0], [2, 3, 11]):
        shifted = logit([3 + shift[0], 1 + shift[1], 4 + shift[2]], [1 + shift[0], 5 + shift[1], 9 + shift[2]])
        torch.testing.assert_close(shifted, base, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logit([3, 1, 4], [1, 5, 8]), base, atol=1e-4)


def test_rope_matches_complex_rotation():
    """Adjacent pairs as complex numbers times exp(i·pos·θ^(−2k/d_axis)) (Wan's formulation)."""
    dims, theta = (4, 2, 2), 100.0
    pos = torch.tensor([[2, 3, 5], [0, 1, 7]])
    x = torch.randn(1, 2, 3, 8, dtype=torch.float64)
    ang = []
    for a, d in enumerate(dims):
        ang.append(pos[:, a, None].double() * theta ** (-torch.arange(0, d, 2).double() / d))
    rot = torch.polar(torch.ones(2, 4, dtype=torch.float64), torch.cat(ang, dim=1))  # (L, D/2)
    want = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * rot[None, :, None]).flatten(-2)
    cos, sin = rope_tables(pos, dims, theta)
    torch.testing.assert_close(apply_rope(x.float(), cos, sin).double(), want, rtol=1e-5, atol=1e-5)


def test_sinusoidal_embedding_known_values():
    e = sinusoidal_embedding(torch.tensor([0.0, 1000.0]), 8)
    assert torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    # first frequency is 1: cos(1000), sin(1000)
    torch.testing.assert_close(e[1, [0, 4]], torch.tensor([1000.0]).double().cos().float().repeat(2) *
                               torch.tensor([1.0, 0.0]) + torch.tensor([0.0, 1.0]) *
                               torch.tensor([1000.0]).double().sin().float())


def test_text_cross_attention_changes_output():
    model = DiT(dataclasses.replace(SMALL, text_dim=24))
    _randomise_head(model)
    lay, x, s = _inputs(model, batch=1)
    with torch.no_grad():
        y0 = model(x, s, lay)
        y1 = model(x, s, lay, context=torch.randn(1, 5, 24))
    assert not torch.allclose(y0, y1, atol=1e-4)
    with pytest.raises(ValueError, match="context"):
        DiT(SMALL)(x, s, lay, context=torch.randn(1, 5, 24))


def test_bf16_autocast_and_checkpointing_agree():
    model = DiT(SMALL)
    _randomise_head(model)
    lay, x, s = _inputs(model, batch=1)
    with torch.no_grad():
        ref = model(x, s, lay)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, s, lay)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
    model.train()
    model.grad_checkpointing = True
    model(x, s, lay).sum().backward()
    g1 = model.blocks[0].self_attn.q.weight.grad.clone()
    model.zero_grad()
    model.grad_checkpointing = False
    model(x, s, lay).sum().backward()
    torch.testing.assert_close(g1, model.blocks[0].self_attn.q.weight.grad)


def test_bad_inputs_raise_named_errors():
    model = DiT(SMALL)
    lay, x, s = _inputs(model, batch=1)
    with pytest.raises(ValueError, match="sigma"):
        model(x, s[:, :-1], lay)
    with pytest.raises(ValueError, match="x must be"):
        model(x[:, :-1], s[:, :-1], lay)
    with pytest.raises(ValueError, match=r"layout\.patch"):
        model(x, s, dataclasses.replace(lay, patch=(1, 2, 2)))
    for field, value in (("heads", 3), ("rope_split", (10, 10, 10)), ("channels", (3, 0, 6)),
                         ("param_dtype", "int8")):
        with pytest.raises(ValueError, match=field):
            dataclasses.replace(SMALL, **{field: value})
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    assert set(PRESETS) == {"tiny", "small", "wan-1.3b"}
    assert preset("wan-1.3b").rope_dims == (44, 42, 42)


def _attend(q, k, v, heads):
    """Plain softmax attention over (B, L, dim) inputs split into heads."""
    B, L, d = q.shape
    q, k, v = (t.reshape(B, -1, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    return (w @ v).transpose(1, 2).reshape(B, L, d)


def test_block_matches_wan_formula_written_out():
    """One block against Wan2.1's update transcribed directly: separate q/k/v, complex RoPE, softmax."""
    cfg = dataclasses.replace(SMALL, mot=False, text_dim=24)
    model = DiT(cfg)
    block, sa, ca = model.blocks[0], model.blocks[0].self_attn, model.blocks[0].cross_attn
    lay, _, _ = _inputs(model, batch=1)
    B, L, d, H = 1, lay.length, cfg.dim, cfg.heads
    x, e0, ctx = torch.randn(B, L, d), torch.randn(B, L, 6, d) * 0.3, torch.randn(B, 5, d)
    ln = lambda t: torch.nn.functional.layer_norm(t, (d,), eps=cfg.eps)  # noqa: E731
    rms = lambda t, w: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg.eps) * w  # noqa: E731
    pos = lay.positions().double()
    ang = torch.cat([pos[:, a, None] * 10000.0 ** (-torch.arange(0, n, 2).double() / n)
                     for a, n in enumerate(cfg.rope_dims)], dim=1)  # (L, D/2)
    rot = torch.polar(torch.ones_like(ang), ang)[None, :, None]  # (1, L, 1, D/2)

    def rope(t):
        c = torch.view_as_complex(t.double().reshape(B, L, H, -1, 2).contiguous())
        return torch.view_as_real(c * rot).reshape(B, L, d).float()

    with torch.no_grad():
        e = (block.modulation + e0).unbind(2)
        h = ln(x) * (1 + e[1]) + e[0]
        q, k = rope(rms(sa.q(h), sa.norm_q.weight)), rope(rms(sa.k(h), sa.norm_k.weight))
        want = x + sa.o(_attend(q, k, sa.v(h), H)) * e[2]
        hq = block.norm3(want)
        want = want + ca.o(_attend(rms(ca.q(hq), ca.norm_q.weight), rms(ca.k(ctx), ca.norm_k.weight), ca.v(ctx), H))
        want = want + block.ffn(ln(want) * (1 + e[4]) + e[3]) * e[5]
        one = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])[:, None]
        cos, sin = rope_tables(lay.positions(), cfg.rope_dims, cfg.rope_theta)
        got = block(x, e0 + one, cos, sin, [lay.modality_slice(m) for m in MODALITIES], ctx)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_bench_flop_count_matches_flop_counter():
    """model_flops' matmul part against torch's FlopCounterMode; attention (the CPU flash kernel is not
    counted by it) is added analytically. Two distinct σ: the time MLPs run twice, not once per token."""
    from torch.utils.flop_counter import FlopCounterMode

    from backend.model.bench import model_flops

    model = DiT(SMALL)
    lay, x, _ = _inputs(model, batch=1)
    sigma = (torch.arange(lay.length) % 2).float()[None] * 0.5
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, sigma, lay)
    L, d, vol = lay.length, SMALL.dim, lay.patch_volume
    attention = SMALL.depth * 4 * L * L * d
    io = 2 * 2 * lay.tokens_per_modality * sum(SMALL.channels) * vol * d  # patch embedding + head
    time_mlp = 2 * 2 * (SMALL.freq_dim * d + d * d + d * 6 * d)  # two distinct σ
    assert counter.get_total_flops() == model_flops(SMALL, L) - attention + io + time_mlp


def test_patch_embedding_and_head_follow_wan_layouts():
    """Input: a strided Conv3d over the video (Wan's patch_embedding). Output: Wan's unpatchify, which
    reads a head row as (pt, ph, pw, c) and lays it out with einsum 'fhwpqrc->cfphqwr'."""
    cfg = dataclasses.replace(SMALL, patch=(2, 2, 4), channels=(3, 2, 6))
    model = DiT(cfg)
    _randomise_head(model)
    lay = model.token_layout(4, 6, 8)
    video = {m: torch.randn(1, 4, c, 6, 8) for m, c in zip(MODALITIES, cfg.channels)}
    tokens = lay.patchify(video)
    with torch.no_grad():
        emb = model._embed(tokens, lay)[:, lay.modality_slice("depth")] - model.modality_embedding[1]
        conv = model.patch_embedding_depth(video["depth"].transpose(1, 2))  # (1, dim, F', H', W')
        torch.testing.assert_close(emb, conv.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)
        x, e = torch.randn(1, lay.length, cfg.dim), torch.randn(1, lay.length, cfg.dim)
        out = lay.unpatchify(model.head(x, e, lay))["rgb"][0]  # (F, C, H, W)
        mod = model.head.modulation + e[:, :, None]
        h = torch.nn.functional.layer_norm(x, (cfg.dim,), eps=cfg.eps) * (1 + mod[:, :, 1]) + mod[:, :, 0]
        u = model.head.head(h[0, lay.modality_slice("rgb")]).view(*lay.grid, *cfg.patch, 3)
        want = torch.einsum("fhwpqrc->cfphqwr", u).reshape(3, 4, 6, 8)
    torch.testing.assert_close(out.transpose(0, 1), want, rtol=1e-5, atol=1e-5)
