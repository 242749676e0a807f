"""Depth estimation: log-depth window chaining on exact depth, then the job end to end (untrained model)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from backend.data.clips import read_clip, read_image
from backend.pipelines.bundle import load_bundle
from backend.pipelines.chain import chain_depth, depth_code_to_depth, log_depth_scale, window_targets
from backend.pipelines.depth import colorize_depth, estimate_depth, upsample_depth
from backend.pipelines.engine import windows

AREA, WINDOW = 24 * 32, 4  # conftest.bundle: the tiny model at a quarter of its working area, 4-frame windows
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_log_depth_scale_exact_and_robust(rng):
    ref = rng.uniform(1, 5, size=(2, 6, 7))
    depth = ref / 3.7
    assert abs(log_depth_scale(ref, depth) - 3.7) < 1e-12
    # unknown pixels (0) and the decoder's far clamp carry no scale: they must not pull it
    depth[0, 0, :3], ref[1, 2, :2], depth[1, 4, 4] = 0.0, 0.0, 2e4
    assert abs(log_depth_scale(ref, depth) - 3.7) < 1e-12
    with pytest.raises(ValueError, match="no pixel"):
        log_depth_scale(np.zeros((1, 2, 2)), np.ones((1, 2, 2)))


@pytest.mark.parametrize(("frames", "window", "overlap"), [(8, 3, 2), (8, 8, 2), (8, 2, 1), (1, 8, 2), (5, 8, 2)])
def test_chain_depth_exact_windows(rendered_clip, frames, window, overlap):
    """Per-window depth codes of the true depth (each window at its own scale) chain back to the truth.

    (8, 3, 2) is F = 3·window − 1; (1, ...) a single image; (5, 8, ...) F < window.
    """
    clip = read_clip(rendered_clip)
    K, c2w, depth = clip.cameras.K[:frames], clip.cameras.c2w[:frames], clip.depth[:frames]
    spans = windows(frames, window, overlap)
    targets = window_targets(K, c2w, depth, spans, depth.shape[1:])
    per_window = [depth_code_to_depth(t["depth"]) for t in targets]
    # each window is in its own unit: the median of its first frame is 1
    assert all(abs(np.median(d[0]) - 1) < 1e-6 for d in per_window)
    chained, scales = chain_depth(per_window, spans, frames)
    s0 = np.median(depth[0])
    np.testing.assert_allclose(chained * s0, depth, rtol=1e-5)
    want = [np.median(depth[s.start]) / s0 for s in spans]  # window scale relative to window 0
    np.testing.assert_allclose(scales, want, rtol=1e-5)


def test_chain_depth_rejects_windows_without_overlap():
    with pytest.raises(ValueError, match="overlap"):
        chain_depth([np.ones((2, 3, 3)), np.ones((2, 3, 3))], [range(0, 2), range(2, 4)], 4)


def test_upsample_depth_is_bilinear_in_pixel_centres():
    """A depth map linear in the continuous pixel coordinates stays exactly linear away from the border."""
    h, w, H, W = 6, 8, 12, 16
    v, u = np.mgrid[0:h, 0:w] + 0.5
    small = (2 + 0.1 * u + 0.05 * v)[None]
    big = upsample_depth(small, (H, W))[0]
    V, U = (np.mgrid[0:H, 0:W] + 0.5) * (h / H)  # full-resolution pixel centres in small-image pixels
    want = 2 + 0.1 * U + 0.05 * V
    np.testing.assert_allclose(big[1:-1, 1:-1], want[1:-1, 1:-1], atol=1e-12)


def test_colorize_depth_near_is_warm_far_is_cool():
    depth = np.array([[[1.0, 10.0, 0.0]]])
    rgb = colorize_depth(depth)[0, 0]  # (3, 3)
    near, far, unknown = rgb
    assert near[0] > near[2] and far[2] > far[0]
    assert (unknown == 0).all()


def test_estimate_depth_end_to_end(rendered_clip, bundle):
    images = read_clip(rendered_clip).images  # (8, 48, 64, 3)
    seen = []
    r = estimate_depth(bundle, images, steps=2, seed=5, progress=lambda f, m="": seen.append(f))
    assert r.depth.shape == (8, 48, 64) and r.depth.dtype == np.float32
    assert np.isfinite(r.depth).all() and (r.depth >= 0).all()
    assert abs(np.median(r.depth[0][r.depth[0] > 0]) - 1) < 1e-6
    assert r.windows == 3 and len(r.window_scales) == 3  # windows of 4 overlapping by 2
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert r.params()["frames"] == 8 and set(r.arrays()) == {"depth"}
    again = estimate_depth(bundle, images, steps=2, seed=5)
    np.testing.assert_array_equal(r.depth, again.depth)
    other = estimate_depth(bundle, images, steps=2, seed=6)
    assert not np.array_equal(r.depth, other.depth)  # the seed matters
    single = estimate_depth(bundle, images[:1], steps=1)
    assert single.depth.shape == (1, 48, 64) and single.windows == 1


@pytest.mark.parametrize(("images", "field"), [(np.zeros((2, 8, 8, 3), np.float32), "images"),
                                               (np.zeros((2, 8, 8, 4), np.uint8), "images")])
def test_estimate_depth_rejects_bad_input(bundle, images, field):
    with pytest.raises(ValueError, match=field):
        estimate_depth(bundle, images)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see one_thread
    cmd = [sys.executable, "-m", "backend.cli", "depth", *args, "--steps", "1", "--sampler", "euler", "--device", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_depth_cli_image_and_clip(rendered_clip, tmp_path):
    image = os.path.join(rendered_clip, "images", "0000.png")
    out = tmp_path / "single"
    proc = _cli("--input", image, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    clip = read_clip(out)
    assert clip.images.shape == (1, 48, 64, 3) and clip.depth.shape == (1, 48, 64)
    np.testing.assert_array_equal(clip.images[0], read_image(image))
    # the command computes exactly what the function does with the same model and settings
    want = estimate_depth(load_bundle(device="cpu"), clip.images, steps=1, sampler="euler").depth
    np.testing.assert_array_equal(clip.depth, want)
    vis = read_image(out / "depth_vis" / "0000.png")
    np.testing.assert_array_equal(vis, colorize_depth(want)[0])

    out = tmp_path / "clip"
    proc = _cli("--input", rendered_clip, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    clip = read_clip(out)
    assert clip.depth.shape == (8, 48, 64) and np.isfinite(clip.depth).all()
    assert sorted(os.listdir(out / "depth_vis")) == [f"{i:04d}.png" for i in range(8)]
    assert clip.fps == read_clip(rendered_clip).fps
