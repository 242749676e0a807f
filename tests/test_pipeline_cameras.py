"""Camera recovery: window chaining on exact rays, then the job end to end with the untrained model."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from backend.data.clips import read_clip
from backend.data.ply import read_ply
from backend.geometry.align import ate
from backend.geometry.projection import project_points
from backend.pipelines.cameras import point_cloud, recover_cameras, to_first_frame
from backend.pipelines.chain import (
    Sim3,
    chain_cameras,
    decode_windows,
    fit_window_sim3,
    share_intrinsics,
    window_targets,
)
from backend.pipelines.engine import windows

AREA, WINDOW = 24 * 32, 4  # conftest.bundle: the tiny model at a quarter of its working area, 4-frame windows
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV c2w at `centre` looking at `target` (y down, world up = −y)."""
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross(z, [0.0, -1.0, 0.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = centre
    return T


def _sphere_scene(frames: int, H: int = 24, W: int = 32, radius: float = 6.0):
    """Cameras on a wide zigzag arc inside a sphere of `radius`; exact z-depth of the sphere per pixel."""
    ang = np.linspace(0, 1.6, frames)
    centres = np.stack([2 * np.sin(ang), 0.6 * (-1.0) ** np.arange(frames), 2 * np.cos(ang) - 2], axis=1)
    c2w = np.stack([_look_at(c, np.array([0.0, 0.3, 3.0])) for c in centres])
    K = np.tile(np.array([[30.0, 0, 16.5], [0, 31.0, 11.5], [0, 0, 1]]), (frames, 1, 1))
    v, u = np.mgrid[0:H, 0:W] + 0.5
    cam = np.stack([(u - K[0, 0, 2]) / K[0, 0, 0], (v - K[0, 1, 2]) / K[0, 1, 1], np.ones_like(u)], -1)
    depth = np.zeros((frames, H, W))
    for i in range(frames):
        d = cam @ c2w[i, :3, :3].T  # (H, W, 3) world directions with camera z = 1
        o = c2w[i, :3, 3]
        a, b, c = (d * d).sum(-1), 2 * d @ o, o @ o - radius**2  # |o + t d|² = r², t = z-depth
        depth[i] = (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)
    return K, c2w, depth.astype(np.float32)


def _expected(c2w: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, float]:
    """Ground truth in the chain's frame: relative to frame 0, translations / median depth of frame 0."""
    s0 = float(np.median(depth[0]))
    rel = np.linalg.inv(c2w[0]) @ c2w
    rel[:, :3, 3] /= s0
    return rel, s0


def _chain_exact(K, c2w, depth, window, overlap):
    frames, H, W = depth.shape
    spans = windows(frames, window, overlap)
    geoms, level = decode_windows(window_targets(K, c2w, depth, spans, (H, W)), spans)
    return (*chain_cameras(geoms, spans, frames), level)


def _check_recovered(K, c2w, depth, Kc, pc, dc):
    rel, s0 = _expected(c2w, depth)
    extent = max(np.linalg.norm(rel[:, :3, 3], axis=1).max(), 1e-3)
    assert np.abs(pc[:, :3, 3] - rel[:, :3, 3]).max() < 1e-5 * extent
    assert np.abs(pc[:, :3, :3] - rel[:, :3, :3]).max() < 1e-5
    assert np.abs(Kc[:, [0, 1], [0, 1]] / K[:, [0, 1], [0, 1]] - 1).max() < 1e-4  # focal lengths
    assert (Kc[:, 0, 1] == 0).all()  # zero skew
    assert np.abs(Kc[:, :2, 2] - K[:, :2, 2]).max() < 1e-4 * K[0, 0, 0]
    np.testing.assert_allclose(dc * s0, depth, rtol=1e-5)
    if len(pc) >= 3:
        err = ate(pc, c2w)  # Sim(3)-aligned, as the evaluation does
        assert err["rmse"] < 1e-5 * np.linalg.norm(c2w[:, :3, 3] - c2w[:, :3, 3].mean(0), axis=1).max()


@pytest.mark.parametrize(("frames", "window", "overlap"), [(8, 8, 3), (8, 3, 2), (8, 5, 3), (8, 2, 1), (1, 8, 3),
                                                           (5, 8, 3)])
def test_chaining_exact_rays_rendered_clip(rendered_clip, frames, window, overlap):
    """Ray maps of the rendered clip's true cameras, normalised per window, chain back to the truth.

    (8, 3, 2) is F = 3·window − 1 with two-frame overlaps; (1, ...) a single image; (5, 8) F < window.
    """
    clip = read_clip(rendered_clip)
    K, c2w, depth = clip.cameras.K[:frames], clip.cameras.c2w[:frames], clip.depth[:frames]
    Kc, pc, dc, sims, level = _chain_exact(K, c2w, depth, window, overlap)
    assert level == "clip" and sims[0].method == "identity"
    assert len(sims) == len(windows(frames, window, overlap))
    _check_recovered(K, c2w, depth, Kc, pc, dc)


@pytest.mark.parametrize(("window", "overlap"), [(4, 3), (4, 2)])
def test_chaining_exact_rays_wide_baseline(window, overlap):
    """F = 3·window − 1 on a wide zigzag orbit: windows sharing three frames take Umeyama, two the pose path
    (with overlap 2 the last window, shifted back to end on the last frame, shares three)."""
    frames = 3 * window - 1
    K, c2w, depth = _sphere_scene(frames)
    Kc, pc, dc, sims, _ = _chain_exact(K, c2w, depth, window, overlap)
    spans = windows(frames, window, overlap)
    shared = [max(s.stop for s in spans[:w]) - spans[w].start for w in range(1, len(spans))]
    assert [s.method for s in sims[1:]] == ["umeyama" if n >= 3 else "poses+depth" for n in shared]
    assert "poses+depth" in {s.method for s in sims} or overlap == 3
    _check_recovered(K, c2w, depth, Kc, pc, dc)


def _random_poses(rng, n):
    P = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        P[i, :3, :3] = _rotation(rng)
    P[:, :3, 3] = rng.normal(size=(n, 3))
    return P


@pytest.mark.parametrize("n", [1, 2, 3])
def test_fit_window_sim3_recovers_a_known_similarity(rng, n):
    truth = Sim3(2.5, _rotation(rng), rng.normal(size=3))
    P = _random_poses(rng, n)
    depth = rng.uniform(1, 3, size=(n, 6, 5))
    sim = fit_window_sim3(truth.apply_poses(P), P, truth.scale * depth, depth)
    assert sim.method == ("umeyama" if n >= 3 else "poses+depth")
    assert abs(sim.scale - truth.scale) < 1e-9
    np.testing.assert_allclose(sim.R, truth.R, atol=1e-9)
    np.testing.assert_allclose(sim.t, truth.t, atol=1e-9)


def test_fit_window_sim3_distrusts_centres_that_disagree_with_depth(rng):
    """Centres whose spread says scale 2 while the depth says 3: the depth path wins, rotation exact."""
    truth = Sim3(2.0, _rotation(rng), rng.normal(size=3))
    P = _random_poses(rng, 4)
    depth = rng.uniform(1, 3, size=(4, 6, 5))
    sim = fit_window_sim3(truth.apply_poses(P), P, 3.0 * depth, depth)
    assert sim.method == "poses+depth" and abs(sim.scale - 3.0) < 1e-9
    np.testing.assert_allclose(sim.R, truth.R, atol=1e-9)


def test_share_intrinsics_levels(rng):
    base = np.array([[50.0, 0, 32], [0, 50, 24], [0, 0, 1]])
    spans = [range(0, 4), range(2, 6)]
    noisy = [base + np.diag([1, 1, 0]) * rng.uniform(-1, 1, size=(4, 1, 1)) for _ in spans]  # ±2 % focal
    pooled, level = share_intrinsics(noisy, spans)
    assert level == "clip"
    want = np.median(np.concatenate([k[:, 0, 0] for k in noisy]))
    assert all(np.allclose(k[:, 0, 0], want) for k in pooled)
    zoom = [base, base * np.diag([1.5, 1.5, 1])]  # each window steady, the second zoomed in
    pooled, level = share_intrinsics([np.repeat(k[None], 4, 0) for k in zoom], spans)
    assert level == "window" and np.allclose(pooled[1][:, 0, 0], 75.0)
    wild = [base * np.diag([f, f, 1]) for f in (1.0, 1.3, 0.8, 1.1)]
    pooled, level = share_intrinsics([np.stack(wild)] * 2, spans)
    assert level == "frame" and np.allclose(pooled[0][:, 0, 0], [50, 65, 40, 55])


def test_point_cloud_lies_on_the_scene():
    """Points unprojected with the cameras sit on the sphere that made the depth, with the pixels' colours."""
    K, c2w, depth = _sphere_scene(5)
    images = np.random.default_rng(1).integers(0, 256, size=(*depth.shape, 3), dtype=np.uint8)
    pts, cols = point_cloud(images, depth, K, c2w, frames=2, max_points=300, seed=0)
    assert pts.shape == (300, 3) and pts.dtype == np.float32 and cols.dtype == np.uint8
    np.testing.assert_allclose(np.linalg.norm(pts, axis=1), 6.0, rtol=1e-5)
    uv, _ = project_points(torch.from_numpy(pts[None]).double(), torch.from_numpy(K[:1]), torch.from_numpy(c2w[:1]))
    uv = uv[0].numpy()
    inside = (np.abs(uv - np.round(uv - 0.5) - 0.5).max(1) < 1e-3)  # points of frame 0 hit pixel centres
    i, j = np.floor(uv[inside, 1]).astype(int), np.floor(uv[inside, 0]).astype(int)
    assert inside.sum() > 50 and (cols[inside] == images[0, i, j]).all()


def test_to_first_frame_is_a_similarity(rng):
    P = _random_poses(rng, 4)
    depth = rng.uniform(1, 2, size=(4, 3, 3))
    out, d = to_first_frame(P, depth, 2.0)
    assert (out[0] == np.eye(4)).all()
    want = np.linalg.inv(P[0]) @ P  # frame 0's camera becomes the world frame
    want[:, :3, 3] /= 2.0
    np.testing.assert_allclose(out, want, atol=1e-12)
    np.testing.assert_allclose(d, depth / 2)


def test_recover_cameras_end_to_end(rendered_clip, bundle):
    video = read_clip(rendered_clip).images  # (8, 48, 64, 3)
    seen = []
    r = recover_cameras(bundle, video, steps=2, seed=3, progress=lambda f, m="": seen.append(f))
    F_, H, W = 8, 48, 64
    assert r.K.shape == (F_, 3, 3) and r.c2w.shape == (F_, 4, 4) and r.depth.shape == (F_, H, W)
    assert r.K.dtype == np.float64 and r.c2w.dtype == np.float64 and r.depth.dtype == np.float32
    assert np.isfinite(r.K).all() and np.isfinite(r.c2w).all() and np.isfinite(r.depth).all()
    assert (r.c2w[0] == np.eye(4)).all() and abs(np.median(r.depth[0][r.depth[0] > 0]) - 1) < 1e-6
    assert r.windows == 5 and len(r.chain) == 5  # windows of 4 overlapping by 3
    assert 0 < len(r.points) <= 200_000 and r.points.dtype == np.float32 and r.colors.shape == r.points.shape
    assert seen == sorted(seen) and seen[-1] == 1.0
    again = recover_cameras(bundle, video, steps=2, seed=3)
    for name, a in r.arrays().items():
        np.testing.assert_array_equal(a, again.arrays()[name], err_msg=name)
    single = recover_cameras(bundle, video[:1], steps=1, points=False)
    assert single.c2w.shape == (1, 4, 4) and len(single.points) == 0 and single.params()["frames"] == 1
    odd = recover_cameras(bundle, np.ascontiguousarray(video[:5, :37, :61]), steps=1)  # any size
    assert odd.depth.shape == (5, 37, 61) and odd.windows == 2 and np.isfinite(odd.K).all()


@pytest.mark.parametrize(("video", "field"), [(np.zeros((2, 8, 8, 3), np.float32), "video"),
                                              (np.zeros((8, 8, 3), np.uint8), "video")])
def test_recover_cameras_rejects_bad_input(bundle, video, field):
    with pytest.raises(ValueError, match=field):
        recover_cameras(bundle, video)


def test_cameras_cli(rendered_clip, tmp_path):
    out = tmp_path / "cams"
    cmd = [sys.executable, "-m", "backend.cli", "cameras", "--video", rendered_clip, "--out", str(out),
           "--steps", "1", "--sampler", "euler", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see one_thread
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    clip = read_clip(out)
    assert clip.images.shape == (8, 48, 64, 3) and clip.depth.shape == (8, 48, 64)
    assert (clip.cameras.width, clip.cameras.height) == (64, 48)
    np.testing.assert_allclose(clip.cameras.c2w[0], np.eye(4), atol=1e-6)
    np.testing.assert_array_equal(clip.images, read_clip(rendered_clip).images)
    ply = read_ply(out / "points.ply")
    assert 0 < len(ply["points"]) <= 200_000 and ply["colors"].shape == ply["points"].shape
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)  # out is not empty now
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert os.path.isfile(out / "transforms.json")
