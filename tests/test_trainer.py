"""The trainer: steps run on a rendered clip, a resumed run equals an uninterrupted one bit for bit,
the loss falls when overfitting one window, and the exported EMA loads as the served model (< 40 MB
for tiny)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from backend.diffusion.masks import TaskMask
from backend.model.config import DiTConfig
from backend.pipelines.bundle import load_bundle
from backend.train.dataset import ClipDataset, SourceClip, collate, load_sources
from backend.train.logging import read_log
from backend.train.trainer import (
    MASK_NAMES,
    TrainConfig,
    Trainer,
    export_default,
    latest_checkpoint,
    lr_at,
    training_masks,
)

SMALL = DiTConfig(dim=64, depth=2, heads=2, mlp_dim=128, freq_dim=64)  # a fast stand-in for tiny


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(out=str(tmp_path / "run"), frames=4, height=24, width=32, batch=2, steps=4, lr=1e-3, warmup=2,
                save_every=100, log_every=1, quiet=True, seed=5, threads=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def _restore_threads():
    """threads=1 makes CPU kernels deterministic (and fast on a busy 2-core machine); give it back after."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _state(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in tr.ema.module.state_dict().items()})
    for pid, st in tr.opt.state_dict()["state"].items():
        out.update({f"opt.{pid}.{k}": v for k, v in st.items()})
    return out


def test_resume_is_bit_exact_and_logs(tmp_path, rendered_clip):
    data = ClipDataset.from_paths([rendered_clip], _cfg(tmp_path).data_config())
    full = Trainer(_cfg(tmp_path / "a"), data, SMALL)
    hist = full.train()
    assert len(hist) == 4 and all(math.isfinite(s["loss"]) and s["loss"] > 0 for s in hist)
    first = Trainer(_cfg(tmp_path / "b"), data, SMALL)
    first.train(until=2)  # saves at its last step
    resumed = Trainer(_cfg(tmp_path / "b"), data, SMALL)
    assert resumed.resume() == 2
    resumed.train()
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, diff[:5]
    assert not torch.equal(a["model.head.head.weight"], a["ema.head.head.weight"])  # the EMA lags
    rows = read_log(tmp_path / "b" / "run" / "log.csv")  # the resumed run continues the same log
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] == pytest.approx(read_log(tmp_path / "a" / "run" / "log.csv")[-1]["loss"], rel=1e-5)
    png = cv2.imread(str(tmp_path / "b" / "run" / "loss.png"))
    assert png is not None and png.shape == (540, 900, 3) and (png < 200).any()


def test_loss_falls_when_overfitting_one_window(tmp_path, rendered_clip):
    cfg = _cfg(tmp_path, steps=80, batch=4, lr=4e-3, warmup=5, min_lr_ratio=1.0, crop_scale=(1.0, 1.0),
               max_stride=1, context_noise_prob=0.0, height=32, width=32, ema_decay=0.9)
    [src] = load_sources([rendered_clip], cfg.data_config())
    one = SourceClip(src.name, src.images[:4], src.depth[:4], src.K[:4], src.c2w[:4])  # one fixed window
    model_cfg = DiTConfig(dim=128, depth=2, heads=2, mlp_dim=256, freq_dim=64)
    hist = Trainer(cfg, ClipDataset([one], cfg.data_config()), model_cfg).train()
    losses = np.array([s["loss"] for s in hist])
    start, end = losses[:12].mean(), losses[-12:].mean()
    assert end <= 0.5 * start, (start, end)


def test_export_is_the_served_model(tmp_path, rendered_clip):
    data = ClipDataset.from_paths([rendered_clip], _cfg(tmp_path).data_config())
    tr = Trainer(_cfg(tmp_path, preset="tiny", steps=1), data)
    tr.train()
    path = export_default(tr.out, tmp_path / "parallax-tiny.safetensors")
    size_mb = path.stat().st_size / 2**20
    assert size_mb < 40, size_mb  # tiny is ~60 MB in fp32; stored as bf16
    bundle = load_bundle(path, device="cpu")
    assert bundle.trained and bundle.window == 4 and bundle.area == 24 * 32
    assert bundle.flow.shift == tr.cfg.shift and bundle.flow.target == "velocity"
    for k, v in tr.ema.module.state_dict().items():
        got = bundle.model.state_dict()[k]
        assert got.dtype == torch.float32
        assert torch.equal(got, v.to(torch.bfloat16).float()), k  # exactly the EMA, rounded to bf16 once
    assert latest_checkpoint(tr.out).name == "step_0000001"


def test_lr_schedule_known_values(tmp_path):
    cfg = _cfg(tmp_path, lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # cosine half-way between 1 and 0.1
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)


def test_training_masks_respect_geometry_and_availability(tmp_path, rendered_clip):
    cfg = _cfg(tmp_path)
    data = ClipDataset.from_paths([rendered_clip], cfg.data_config())
    batch = collate([data[i] for i in range(6)])
    batch["has_geometry"][:] = False
    batch["available"][:, 1:] = False  # as a plain video: no depth, no rays
    tr_layout = Trainer(cfg, data, SMALL).layout
    only_warp = tuple(1.0 if n == "warp" else 0.0 for n in MASK_NAMES)
    weights = tuple(w + 1e-3 for w in only_warp)  # warp impossible without geometry: others drawn
    m = training_masks(tr_layout, batch, weights, torch.Generator().manual_seed(0))
    assert isinstance(m, TaskMask) and m.task_sigma.shape == (6, tr_layout.length)
    assert not m.available[:, 1:].any()
    for name in ("depth", "rays"):
        assert (m.task_sigma[:, tr_layout.modality_slice(name)] == 1).all()
    # with geometry, the warp mask observes exactly the fully visible RGB and depth patches (as the nvs
    # job does), generates every other patch whole, and gives every ray
    batch = collate([data[i] for i in range(2)])
    m = training_masks(tr_layout, batch, only_warp, torch.Generator().manual_seed(0))
    frac = tr_layout.pixel_mask_to_tokens(batch["warp_visible"])
    for name in ("rgb", "depth"):
        level = m.task_sigma[:, tr_layout.modality_slice(name)]
        assert torch.equal(level == 0, frac >= 1) and torch.equal(level == 1, frac < 1)
    assert (m.task_sigma[:, tr_layout.modality_slice("rays")] == 0).all()


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="height"):
        _cfg(tmp_path, height=30)
    with pytest.raises(ValueError, match="mask_weights"):
        _cfg(tmp_path, mask_weights=(1.0,))
    with pytest.raises(ValueError, match="outside warp"):  # a depth-less sample could draw nothing
        _cfg(tmp_path, mask_weights=tuple(1.0 if n == "warp" else 0.0 for n in MASK_NAMES))
    with pytest.raises(ValueError, match="preset"):
        _cfg(tmp_path, preset="huge")
