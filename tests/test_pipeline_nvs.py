"""Novel-view synthesis end to end on a clip rendered by Blender Cycles, with its true depth and cameras.

The model is an untrained random `tiny` one at a tiny working resolution, so the tests check what does
not depend on training: the compositing keeps every warped source pixel, sizes, determinism, windows,
the mesh, and — against the real renders — that the warp's conventions are right end to end.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from backend.data.clips import read_clip, read_image, write_image
from backend.data.ply import read_ply
from backend.geometry.cameras import Cameras, cameras_to_transforms
from backend.geometry.projection import unproject_depth
from backend.geometry.warp import warp_rgbd
from backend.pipelines.engine import scale_intrinsics
from backend.pipelines.nvs import NVSConfig, novel_views, plan_windows

AREA = 16 * 24  # conftest.bundle's working pixels: a 16×24 (2×3 tokens) window keeps the random model cheap
RUN = {"steps": 2, "sampler": "euler"}


@pytest.fixture(scope="module")
def result(bundle, clip):
    cams = clip.cameras
    return novel_views(bundle, clip.images[0], cams.K, cams.c2w, depth=clip.depth[0], seed=3, **RUN)


def reference_warp(image, depth, K_src, c2w_src, K, c2w, hw, **overrides):
    """The full-resolution warp written out independently (warp_rgbd with NVSConfig's settings)."""
    cfg = NVSConfig()
    t = torch.as_tensor
    opts = {"hole_dilation": cfg.hole_dilation, "edge_threshold": cfg.edge_threshold, **overrides}
    w = warp_rgbd(t(image).permute(2, 0, 1)[None].float(), t(depth)[None], t(K_src)[None], t(c2w_src)[None],
                  t(K)[None], t(c2w)[None], hw, mode="nearest", **opts)
    return w.color[0].permute(0, 2, 3, 1).numpy(), w.depth[0].numpy(), w.mask[0].numpy()


def test_visible_pixels_are_the_warped_source(result, clip):
    cams = clip.cameras
    color, depth, mask = reference_warp(clip.images[0], clip.depth[0], cams.K[0], cams.c2w[0], cams.K, cams.c2w,
                                        (48, 64))
    assert result.images.shape == clip.images.shape and result.images.dtype == np.uint8
    assert result.depth.shape == clip.depth.shape and result.depth.dtype == np.float32
    np.testing.assert_array_equal(result.images[0], clip.images[0])
    np.testing.assert_array_equal(result.depth[0], clip.depth[0])
    np.testing.assert_array_equal(result.visible[1:], mask[1:])
    assert 0.1 < mask[1:].mean() < 0.95  # both warped pixels and holes are exercised
    for f in range(1, len(mask)):
        np.testing.assert_array_equal(result.images[f][mask[f]], np.round(color[f][mask[f]]).astype(np.uint8))
        np.testing.assert_array_equal(result.depth[f][mask[f]], depth[f][mask[f]])
    np.testing.assert_array_equal(result.K, cams.K)
    np.testing.assert_array_equal(result.c2w, cams.c2w)
    assert result.scale == pytest.approx(float(np.median(clip.depth[0])), rel=1e-4)
    assert np.isfinite(result.depth).all() and (result.depth >= 0).all()


def test_output_size_follows_width_height(bundle, clip):
    cams = clip.cameras
    K = scale_intrinsics(cams.K[:3], (48, 64), (24, 40))  # K is given at the output size
    res = novel_views(bundle, clip.images[0], K, cams.c2w[:3], width=40, height=24, depth=clip.depth[0], **RUN)
    assert res.images.shape == (3, 24, 40, 3) and res.depth.shape == (3, 24, 40)
    # the source keeps its own size: its camera is K[0] rescaled to 64×48
    color, _, mask = reference_warp(clip.images[0], clip.depth[0], cams.K[0], cams.c2w[0], K, cams.c2w[:3], (24, 40))
    for f in (1, 2):
        assert mask[f].any()
        np.testing.assert_array_equal(res.images[f][mask[f]], np.round(color[f][mask[f]]).astype(np.uint8))
    # frame 0 is the source resized: close to an area-average of 2×(64/40) pixels
    assert np.abs(res.images[0].astype(float).mean((0, 1)) - clip.images[0].mean((0, 1))).max() < 3
    assert res.params()["width"] == 40 and res.params()["height"] == 24


def test_deterministic_for_a_seed(bundle, clip, result):
    cams = clip.cameras
    again = novel_views(bundle, clip.images[0], cams.K, cams.c2w, depth=clip.depth[0], seed=3, **RUN)
    np.testing.assert_array_equal(again.images, result.images)
    np.testing.assert_array_equal(again.depth, result.depth)
    other = novel_views(bundle, clip.images[0], cams.K, cams.c2w, depth=clip.depth[0], seed=4, **RUN)
    holes = ~result.visible
    assert not np.array_equal(other.images[holes], result.images[holes])  # only the holes are sampled
    np.testing.assert_array_equal(other.images[~holes], result.images[~holes])


def test_plan_windows_covers_the_path_once():
    window, context = 8, 2
    plans = plan_windows(2 * window + 3, window, context)
    new = [f for _, n in plans for f in n]
    assert new == list(range(1, 2 * window + 3))
    for k, (cond, n) in enumerate(plans):
        assert cond[0] == 0 and len(cond) + len(n) <= window and n
        if k:  # the previous window's last frames are the clean context
            assert cond[1:] == plans[k - 1][1][-context:]
    assert plan_windows(1, window, context) == []


def test_long_path_runs_in_windows(bundle, clip):
    small = dataclasses.replace(bundle, window=5)
    order = [*range(8), 7, 6, 5, 4, 3]  # 2·window + 3 = 13 frames, the path turns back
    cams = clip.cameras
    res = novel_views(small, clip.images[0], cams.K[order], cams.c2w[order], depth=clip.depth[0], **RUN)
    assert res.images.shape == (13, 48, 64, 3) and res.depth.shape == (13, 48, 64)
    assert res.params()["windows"] == len(plan_windows(13, 5, NVSConfig().context)) == 5
    # frames 8..12 revisit cameras 7..3: the same warped source pixels appear there
    for f, g in zip(range(8, 13), range(7, 2, -1)):
        np.testing.assert_array_equal(res.visible[f], res.visible[g])
        np.testing.assert_array_equal(res.images[f][res.visible[f]], res.images[g][res.visible[g]])
    assert np.isfinite(res.depth).all()


def test_mesh_lies_on_the_source_geometry(bundle, clip):
    cams = clip.cameras
    res = novel_views(bundle, clip.images[0], cams.K[:3], cams.c2w[:3], depth=clip.depth[0], mesh=True, **RUN)
    assert res.vertices.ndim == 2 and res.vertices.shape[1] == 3 and len(res.vertices) > 100
    assert res.vertices.dtype == np.float32 and res.colors.dtype == np.uint8 and res.faces.dtype == np.int32
    assert res.faces.min() >= 0 and res.faces.max() < len(res.vertices)
    assert set(res.arrays()) == {"images", "depth", "K", "c2w", "vertices", "faces", "colors"}
    from scipy.spatial import cKDTree

    t = torch.as_tensor
    pts = unproject_depth(t(clip.depth[:1]), t(cams.K[:1]).float(), t(cams.c2w[:1]).float()).reshape(-1, 3)
    dist, _ = cKDTree(pts.numpy()).query(res.vertices)
    assert (dist < 0.05 * np.median(clip.depth[0])).mean() > 0.4  # most of the surface is the true one


def test_warp_matches_the_rendered_frames(clip):
    """Conventions end to end: the true frame-0 RGB-D warped by the true cameras lands on the renders."""
    cams = clip.cameras
    # the splat alone (no crack filling, whose interpolated pixels are not exact geometry)
    color, depth, mask = reference_warp(clip.images[0], clip.depth[0], cams.K[0], cams.c2w[0], cams.K[1:],
                                        cams.c2w[1:], (48, 64), crack_radius=0)
    assert mask.mean() > 0.2
    target, target_depth = clip.images[1:].astype(np.float32), clip.depth[1:]
    rel = np.abs(depth - target_depth)[mask] / target_depth[mask]
    assert rel.mean() < 0.01  # depth agrees to 1 %: poses, intrinsics and pixel centres agree
    assert np.abs(color - target).mean(-1)[mask].mean() < 6  # colours within Cycles' noise (0..255)
    # an oracle that can fail: doubling the path's translations moves the warp off the renders
    far = cams.c2w[1:].copy()
    far[:, :3, 3] = cams.c2w[0, :3, 3] + 2 * (far[:, :3, 3] - cams.c2w[0, :3, 3])
    _, depth_far, mask_far = reference_warp(clip.images[0], clip.depth[0], cams.K[0], cams.c2w[0], cams.K[1:], far,
                                            (48, 64), crack_radius=0)
    rel_far = np.abs(depth_far - target_depth)[mask_far] / target_depth[mask_far]
    assert rel_far.mean() > 2 * rel.mean()


def test_bad_inputs_name_the_field(bundle, clip):
    cams = clip.cameras
    img = clip.images[0]
    with pytest.raises(ValueError, match="image"):
        novel_views(bundle, img.astype(np.float32), cams.K, cams.c2w)
    bad = cams.c2w.copy()
    bad[2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="c2w"):
        novel_views(bundle, img, cams.K, bad, depth=clip.depth[0])
    with pytest.raises(ValueError, match="depth"):
        novel_views(bundle, img, cams.K, cams.c2w, depth=clip.depth[0][:10])
    with pytest.raises(ValueError, match="samples"):
        novel_views(bundle, img, cams.K, cams.c2w, depth=clip.depth[0], samples=0)


def test_estimated_depth_and_best_of_n(bundle, clip):
    cams = clip.cameras
    res = novel_views(bundle, clip.images[0], cams.K[:3], cams.c2w[:3], depth_scale=2.5, samples=2, **RUN)
    assert res.depth_estimated and res.params()["depth_estimated"]
    assert np.median(res.depth[0][res.depth[0] > 0]) == pytest.approx(2.5, rel=1e-4)  # scaled to depth_scale
    assert res.scale == pytest.approx(2.5, rel=1e-4)
    np.testing.assert_array_equal(res.images[0], clip.images[0])
    scores = res.params()["scores"]
    assert len(scores) == 1 and len(scores[0]) == 2
    assert all(s is None or s >= 0 for s in scores[0])
    json.dumps(res.params(), allow_nan=False)


def test_cli_end_to_end(clip, tmp_path, bundle_checkpoint):
    ckpt = bundle_checkpoint
    write_image(tmp_path / "source.png", clip.images[0])
    np.save(tmp_path / "source_depth.npy", clip.depth[0])
    path = clip.cameras[[0, 2, 4]]  # a short path keeps the mesh fusion cheap
    transforms = cameras_to_transforms(path, [f"views/{i}.png" for i in range(3)])
    (tmp_path / "transforms.json").write_text(json.dumps(transforms))
    out = tmp_path / "views"
    cmd = [sys.executable, "-m", "backend.cli", "nvs", "--image", str(tmp_path / "source.png"), "--cameras",
           str(tmp_path / "transforms.json"), "--out", str(out), "--depth", str(tmp_path / "source_depth.npy"),
           "--steps", "1", "--sampler", "euler", "--seed", "5", "--checkpoint", str(ckpt), "--device", "cpu",
           "--mesh"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    written = read_clip(out)
    assert written.images.shape == (3, 48, 64, 3) and written.depth.shape == (3, 48, 64)
    np.testing.assert_array_equal(read_image(out / "images" / "0000.png"), clip.images[0])
    np.testing.assert_array_equal(written.depth[0], clip.depth[0])
    assert isinstance(written.cameras, Cameras)
    np.testing.assert_allclose(written.cameras.c2w, path.c2w, atol=1e-6)
    np.testing.assert_allclose(written.cameras.K, path.K, atol=1e-6)
    mesh = read_ply(out / "mesh.ply")
    assert len(mesh["points"]) > 0 and mesh["faces"] is not None and mesh["colors"] is not None
    # a folder that is not a clip folder is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    cmd[cmd.index(str(out))] = str(tmp_path / "mine")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "refusing" in proc.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
