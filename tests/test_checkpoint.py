"""Checkpoints: bit-exact safetensors round trip, strict loading errors, Wan2.1 weights, pickle refusal."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from backend.model.checkpoint import load_checkpoint, load_state_dict_strict, load_wan_weights, save_checkpoint
from backend.model.config import DiTConfig
from backend.model.dit import DiT

TINY = DiTConfig(dim=32, depth=2, heads=2, mlp_dim=48, freq_dim=16, patch=(1, 4, 4), channels=(3, 1, 6))
# a reduced Wan2.1 (same naming as the 1.3B release: latent channels equal per modality, text on)
WAN_SMALL = DiTConfig(dim=48, depth=2, heads=2, mlp_dim=80, freq_dim=32, patch=(1, 2, 2),
                      channels=(4, 4, 4), mot=True, text_dim=24)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls: one thread avoids OpenMP barrier stalls on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _wan_state(cfg: DiTConfig, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors under the original Wan2.1 T2V names (RESEARCH.md), shapes written out by hand."""
    d, m, c = cfg.dim, cfg.mlp_dim, cfg.channels[0]
    shapes = {"patch_embedding.weight": (d, c, *cfg.patch), "patch_embedding.bias": (d,),
              "time_projection.1.weight": (6 * d, d), "time_projection.1.bias": (6 * d,),
              "head.modulation": (1, 2, d), "head.head.weight": (c * 4, d), "head.head.bias": (c * 4,)}
    for name, (o, i) in {"text_embedding.0": (d, cfg.text_dim), "text_embedding.2": (d, d),
                         "time_embedding.0": (d, cfg.freq_dim), "time_embedding.2": (d, d)}.items():
        shapes |= {f"{name}.weight": (o, i), f"{name}.bias": (o,)}
    for n in range(cfg.depth):
        b = f"blocks.{n}"
        shapes |= {f"{b}.modulation": (1, 6, d), f"{b}.norm3.weight": (d,), f"{b}.norm3.bias": (d,),
                   f"{b}.ffn.0.weight": (m, d), f"{b}.ffn.0.bias": (m,), f"{b}.ffn.2.weight": (d, m),
                   f"{b}.ffn.2.bias": (d,)}
        for att in ("self_attn", "cross_attn"):
            for p in ("q", "k", "v", "o"):
                shapes |= {f"{b}.{att}.{p}.weight": (d, d), f"{b}.{att}.{p}.bias": (d,)}
            shapes |= {f"{b}.{att}.norm_q.weight": (d,), f"{b}.{att}.norm_k.weight": (d,)}
    return {k: torch.randn(s).to(dtype) for k, s in shapes.items()}


def _random_model(cfg: DiTConfig) -> DiT:
    model = DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def test_round_trip_is_bit_exact(tmp_path):
    model = _random_model(TINY)
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, TINY, extra_meta={"step": 7, "ema": True})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temporary left behind
    loaded, cfg, meta = load_checkpoint(path)
    assert cfg == TINY
    assert meta == {"format_version": 1, "extra": {"step": 7, "ema": True}}
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == a[k].dtype and torch.equal(a[k], b[k]), k
    lay = model.token_layout(1, 8, 8)
    x, s = torch.randn(1, lay.length, lay.patch_dim), torch.rand(1, lay.length)
    with torch.no_grad():
        assert torch.equal(model(x, s, lay), loaded(x, s, lay))


def test_bf16_checkpoint_keeps_dtype(tmp_path):
    cfg = dataclasses.replace(TINY, param_dtype="bfloat16", mot=False)
    model = _random_model(cfg)
    loaded, _, _ = load_checkpoint(save_checkpoint(tmp_path / "b.safetensors", model, cfg))
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_strict_loader_names_bad_keys():
    model = DiT(TINY)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    load_state_dict_strict(model, good)  # the exact state loads

    state = dict(good)
    del state["blocks.1.ffn_rays.0.bias"]
    with pytest.raises(ValueError, match=r"missing \(1\): blocks\.1\.ffn_rays\.0\.bias"):
        load_state_dict_strict(model, state)

    state = dict(good, **{"blocks.0.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected \(1\): blocks\.0\.extra\.weight"):
        load_state_dict_strict(model, state)

    state = dict(good)
    state["head.head_depth.weight"] = torch.zeros(5, 32)
    state["time_embedding.0.bias"] = good["time_embedding.0.bias"].double()
    with pytest.raises(ValueError) as err:
        load_state_dict_strict(model, state)
    msg = str(err.value)
    assert "head.head_depth.weight: shape (5, 32)" in msg and "time_embedding.0.bias: dtype torch.float64" in msg
    assert "missing" not in msg and "unexpected" not in msg


def test_wan_weights_fill_rgb_and_copy_into_streams(tmp_path):
    wan = _wan_state(WAN_SMALL)
    model = DiT(WAN_SMALL)
    emb_before = model.modality_embedding.detach().clone()
    report = load_wan_weights(model, wan)
    state = model.state_dict()
    for k, v in wan.items():
        assert torch.equal(state[k], v), k
    for m in ("depth", "rays"):
        pairs = [(f"patch_embedding_{m}.weight", "patch_embedding.weight"), (f"head.head_{m}.bias", "head.head.bias"),
                 (f"blocks.1.self_attn.q_{m}.weight", "blocks.1.self_attn.q.weight"),
                 (f"blocks.0.self_attn.norm_k_{m}.weight", "blocks.0.self_attn.norm_k.weight"),
                 (f"blocks.1.ffn_{m}.2.weight", "blocks.1.ffn.2.weight")]
        for stream, rgb in pairs:
            assert torch.equal(state[stream], wan[rgb]), stream
            assert report.copied[stream] == rgb
            assert state[stream].data_ptr() != state[rgb].data_ptr()  # own storage
    assert torch.equal(model.modality_embedding, emb_before)
    assert report.initialised == ["modality_embedding"]
    assert len(report.loaded) == len(wan) and not report.cast and not report.ignored
    assert len(report.copied) + len(wan) + 1 == len(state)


def test_wan_weights_from_bf16_file_on_meta_model(tmp_path):
    wan = _wan_state(WAN_SMALL, dtype=torch.bfloat16)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(wan, str(path))
    with torch.device("meta"):
        model = DiT(WAN_SMALL)
    report = load_wan_weights(model, path)
    assert len(report.cast) == len(wan)
    assert torch.equal(model.blocks[0].self_attn.v_rays.weight, wan["blocks.0.self_attn.v.weight"].float())
    assert not model.modality_embedding.is_meta and not model.modality_embedding.any()
    lay = model.token_layout(1, 4, 4)
    y = model(torch.randn(1, lay.length, lay.patch_dim), torch.rand(1, lay.length), lay, torch.randn(1, 3, 24))
    assert torch.isfinite(y).all()


def test_wan_weights_errors_name_keys():
    model = DiT(WAN_SMALL)
    wan = _wan_state(WAN_SMALL)
    bad = dict(wan)
    bad["blocks.1.ffn.0.weight"] = torch.zeros(81, 48)
    with pytest.raises(ValueError, match=r"blocks\.1\.ffn\.0\.weight: shape \(81, 48\)"):
        load_wan_weights(model, bad)
    bad = dict(wan)
    del bad["blocks.0.cross_attn.norm_q.weight"]
    with pytest.raises(ValueError, match=r"missing \(1\): blocks\.0\.cross_attn\.norm_q\.weight"):
        load_wan_weights(model, bad)
    bad = dict(wan, **{"img_emb.proj.0.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected \(1\): img_emb\.proj\.0\.weight"):
        load_wan_weights(model, bad)
    assert load_wan_weights(model, bad, strict=False).ignored == ["img_emb.proj.0.weight"]


@pytest.mark.parametrize("name", ["model.pt", "wan.pth", "weights.ckpt"])
def test_pickle_files_are_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not a pickle, never opened")
    with pytest.raises(ValueError, match="pickle"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="pickle"):
        load_wan_weights(DiT(TINY), path)
    with pytest.raises(ValueError, match="safetensors"):
        save_checkpoint(path, DiT(TINY), TINY)


def test_not_a_parallax_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a parallax-dit checkpoint"):
        load_checkpoint(path)
