"""Training datasets: every source type gives model-space windows of the right shapes and modalities,
and crops/resizes keep the geometry right (frame 0 reprojected into frame 1 through the adjusted
intrinsics, true depth and cameras lands on what frame 1 shows — and the unadjusted K does not)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from backend.data.clips import read_clip, write_image, write_video
from backend.geometry.cameras import cameras_to_transforms
from backend.geometry.warp import warp_rgbd
from backend.train.dataset import ClipDataset, DataConfig, collate, crop_intrinsics, load_sources


def _check_common(s: dict, cfg: DataConfig) -> None:
    Fr, h, w = cfg.frames, cfg.height, cfg.width
    shapes = {"rgb": (Fr, 3, h, w), "depth": (Fr, 1, h, w), "depth_valid": (Fr, 1, h, w), "rays": (Fr, 6, h, w),
              "warp_visible": (Fr, h, w), "track_visible": (Fr, h, w), "available": (3,), "K": (Fr, 3, 3)}
    for k, shape in shapes.items():
        assert tuple(s[k].shape) == shape, (k, tuple(s[k].shape))
    assert s["rgb"].dtype == torch.float32 and s["rgb"].min() >= -1 and s["rgb"].max() <= 1
    assert s["available"].dtype == torch.bool and s["warp_visible"].dtype == torch.bool
    assert s["track_visible"][0].all()  # the edited frame is always observed


def test_clip_folder_windows(rendered_clip):
    cfg = DataConfig(frames=4, height=24, width=32, seed=3)
    ds = ClipDataset.from_paths([rendered_clip], cfg)
    s = ds[0]
    _check_common(s, cfg)
    assert s["available"].tolist() == [True, True, True] and bool(s["has_geometry"])
    assert torch.allclose(s["c2w"][0], torch.eye(4), atol=1e-6)  # normalised to the first camera
    assert torch.allclose(s["rays"][:, :3].norm(dim=1), torch.ones(4, 24, 32), atol=1e-5)  # unit directions
    # scale = median valid depth of frame 0: its code has median 0 (d = s ↦ 0)
    code0 = s["depth"][0, 0][s["depth_valid"][0, 0]]
    assert abs(float(code0.median())) < 0.05
    assert not s["warp_visible"][1:].all() and s["warp_visible"][0].all()  # disocclusions / out of view
    assert not s["track_visible"][1:].all()  # the tracked box is regenerated in later frames
    # a pure function of (seed, index); a different index draws a different window/crop
    again, other = ds[0], ds[1]
    assert all(torch.equal(s[k], again[k]) for k in s)
    assert not torch.equal(s["rgb"], other["rgb"])
    batch = collate([ds[i] for i in range(3)])
    assert batch["rgb"].shape == (3, 4, 3, 24, 32) and batch["available"].shape == (3, 3)


def test_video_is_rgb_only(tmp_path):
    yy, xx = np.mgrid[0:40, 0:56]
    frames = np.stack([np.stack([(xx * 4 + 9 * t) % 256, yy * 6, np.full_like(xx, 128)], -1)
                       for t in range(10)]).astype(np.uint8)  # (10, 40, 56, 3) moving ramp
    write_video(tmp_path / "v.avi", frames, fps=10.0)
    cfg = DataConfig(frames=4, height=16, width=24)
    ds = ClipDataset.from_paths([str(tmp_path)], cfg)
    assert len(ds.sources) == 1 and ds.sources[0].depth is None and ds.sources[0].K is None
    s = ds[2]
    _check_common(s, cfg)
    assert s["available"].tolist() == [True, False, False] and not bool(s["has_geometry"])
    assert not s["depth_valid"].any() and s["warp_visible"].all()
    assert float(s["rgb"].std()) > 0.1  # real frames, not zeros


def test_transforms_scene_without_depth(tmp_path, rendered_clip):
    clip = read_clip(rendered_clip)
    scene = tmp_path / "scene"
    names = [f"frames/f_{i:03d}.png" for i in range(clip.num_frames)]
    (scene / "frames").mkdir(parents=True)
    for i, n in enumerate(names):  # images at half the json's resolution (a downscaled copy)
        write_image(scene / n, clip.images[i, ::2, ::2])
    tf = cameras_to_transforms(clip.cameras, names)
    tf["frames"] = list(reversed(tf["frames"]))  # json order != capture order: sorted by file name
    (scene / "transforms.json").write_text(json.dumps(tf))
    [src] = load_sources([str(scene)], DataConfig(frames=4, height=24, width=32))
    assert src.depth is None and src.images.shape == (8, 24, 32, 3)
    K_half = np.diag([0.5, 0.5, 1.0]) @ clip.cameras.K  # continuous pixels: halving scales f and c by ½
    np.testing.assert_allclose(src.K, K_half, atol=1e-9)
    np.testing.assert_allclose(src.c2w, clip.cameras.c2w, atol=1e-9)
    s = ClipDataset([src], DataConfig(frames=4, height=24, width=32))[0]
    assert s["available"].tolist() == [True, False, True]


def test_nerf_synthetic_scene(tmp_path, rendered_clip):
    """NeRF-synthetic layout: transforms_train.json, camera_angle_x, no w/h, paths without extension,
    unpadded names (r_2 before r_10)."""
    clip = read_clip(rendered_clip)
    scene = tmp_path / "lego"
    (scene / "train").mkdir(parents=True)
    order = [0, 1, 2, 3, 4, 5, 6, 7]
    names = [f"train/r_{i * 5}" for i in order]  # r_0, r_5, r_10, ... : lexical order would break them
    tf = cameras_to_transforms(clip.cameras, [n + ".png" for n in names])
    fx, W = clip.cameras.K[0, 0, 0], clip.cameras.width
    frames = [{"file_path": n, "transform_matrix": f["transform_matrix"]} for n, f in zip(names, tf["frames"])]
    data = {"camera_angle_x": float(2 * np.arctan(W / (2 * fx))), "frames": frames}
    for i, n in zip(order, names):
        write_image(scene / (n + ".png"), clip.images[i])
    (scene / "transforms_train.json").write_text(json.dumps(data))
    [src] = load_sources([str(scene)], DataConfig(frames=4, height=24, width=32, max_source_factor=8))
    assert src.images.shape[0] == 8
    np.testing.assert_allclose(src.c2w, clip.cameras.c2w, atol=1e-9)  # capture order kept
    assert abs(src.K[0, 0, 0] / src.K[0, 0, 2] - fx / (W / 2)) < 1e-6  # focal from the angle, centred


def test_crop_intrinsics_known_answer():
    K = torch.tensor([[50.0, 0, 32], [0, 50, 24], [0, 0, 1]], dtype=torch.float64)
    K2 = crop_intrinsics(K, (8, 4, 32, 24), (48, 64))  # crop at (8, 4) of 32×24, resize ×2
    expect = torch.tensor([[100.0, 0, 48], [0, 100, 40], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(K2, expect)


def _reprojection_error(s: dict, K: torch.Tensor) -> tuple[float, float]:
    """Forward-warp frame 0 into frame 1 with the sample's own depth/cameras; mean |Δrgb| where visible."""
    valid = s["depth_valid"][0, 0]
    e = s["depth"][0, 0]
    depth = torch.where(valid, (1 - e) / (1 + e), torch.zeros_like(e))  # normalised z-depth (scale 1)
    res = warp_rgbd(s["rgb"][:1], depth[None], K[:1], s["c2w"][:1], K[None, 1:2], s["c2w"][None, 1:2],
                    tuple(e.shape), hole_dilation=1)
    vis = res.mask[0, 0]
    err = (res.color[0, 0] - s["rgb"][1]).abs().mean(0)
    return float(err[vis].mean()), float(vis.float().mean())


@pytest.mark.parametrize("index", [0, 1, 2])
def test_crops_and_resizes_keep_reprojection(rendered_clip, index):
    cfg = DataConfig(frames=4, height=36, width=48, max_stride=1, crop_scale=(0.5, 0.7), seed=11)
    s = ClipDataset.from_paths([rendered_clip], cfg)[index]  # crop ~half of 64×48, upsampled ×1.5–2
    good, coverage = _reprojection_error(s, s["K"])
    assert coverage > 0.3, coverage
    # the oracle: ignoring the crop offset (principal point back at the centre) must reproject worse
    K_bad = s["K"].clone()
    K_bad[:, 0, 2], K_bad[:, 1, 2] = cfg.width / 2 + 3.0, cfg.height / 2 - 3.0
    K_bad[0] = s["K"][0]  # same source camera, wrong target camera
    bad, _ = _reprojection_error(s, K_bad)
    assert good < 0.12, (good, bad)  # [-1, 1] units: ~15/255 after upsampling and nearest splatting
    assert good < 0.5 * bad, (good, bad)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="crop_scale"):
        DataConfig(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="frames"):
        DataConfig(frames=0)
    with pytest.raises(FileNotFoundError):
        load_sources([os.path.join("/nonexistent", "x")], DataConfig())
