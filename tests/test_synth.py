"""Synthetic data: trajectories (numpy) and Blender-rendered clips checked against geometry.

The Blender tests render in spawned processes (as the generator does), so this pytest process's own
bpy state is never touched. Oracles: an analytic plane for the depth convention and the intrinsics
(z-depth at exact pixel centres, not ray length, no half-pixel slip), and photometric agreement of
a backward warp through the true depth and cameras — which a wrong camera visibly breaks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn

from backend.data.clips import read_clip
from backend.data.synth import SynthConfig, generate
from backend.data.synth_camera import (
    KINDS,
    CameraBounds,
    TrajectoryConfig,
    look_at,
    sample_trajectory,
)
from backend.geometry.projection import camera_directions, project_points, unproject_depth

pytestmark = pytest.mark.blender

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(width=48, height=40, frames=3, samples=16)


def _bounds() -> CameraBounds:
    obstacles = np.array([[0.0, 0.0, 0.5, 0.6], [2.0, 1.0, 0.4, 0.4]])
    return CameraBounds([-4, -4, 0.4], [4, 4, 2.5], obstacles, obstacles[:, :3])


# ---------------------------------------------------------------------------------------------- cameras


def test_look_at_is_a_rotation_aimed_at_the_target(rng):
    eye, target = rng.normal(size=(50, 3)) * 3, rng.normal(size=(50, 3))
    T = look_at(eye, target)
    R = T[:, :3, :3]
    assert np.allclose(np.swapaxes(R, 1, 2) @ R, np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    fwd = (target - eye) / np.linalg.norm(target - eye, axis=1, keepdims=True)
    assert np.allclose(R[:, :, 2], fwd)  # OpenCV z looks at the target
    assert np.allclose(R[:, 2, 0], 0.0, atol=1e-12)  # x (right) is horizontal: no roll
    assert np.all(R[:, 2, 1] < 0)  # y (down) points down in the Z-up world
    assert np.allclose(T[:, :3, 3], eye)


@pytest.mark.parametrize("kind", KINDS)
def test_trajectory_kinds_valid_and_aimed(kind):
    cfg = TrajectoryConfig(kinds=(kind,), zoom_prob=1.0, shake_prob=0.0)
    b = _bounds()
    for seed in range(5):
        t = sample_trajectory(np.random.default_rng(seed), 12, b, cfg)
        assert t.kind == kind and t.c2w.shape == (12, 4, 4) and t.lens.shape == (12,)
        R = t.c2w[:, :3, :3]
        assert np.allclose(np.swapaxes(R, 1, 2) @ R, np.eye(3), atol=1e-9)
        assert np.all(b.free(t.c2w[:, :3, 3], cfg.margin))
        # independently: inside the box and outside every obstacle sphere
        eyes = t.c2w[:, :3, 3]
        assert np.all((eyes >= b.lo) & (eyes <= b.hi))
        assert np.all(np.linalg.norm(eyes[:, None] - b.obstacles[None, :, :3], axis=-1) > b.obstacles[:, 3])
        assert np.all((t.lens >= cfg.lens_range[0] - 1e-9) & (t.lens <= cfg.lens_range[1] + 1e-9))
        step = np.linalg.norm(np.diff(eyes, axis=0), axis=1)
        assert step.max() < 1.0  # smooth: no teleporting between frames


@pytest.mark.parametrize("kind", ["orbit", "dolly"])
def test_fixed_target_projects_to_principal_point(kind):
    cfg = TrajectoryConfig(kinds=(kind,), shake_prob=0.0)
    t = sample_trajectory(np.random.default_rng(3), 6, _bounds(), cfg)
    K = torch.tensor([[[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]], dtype=torch.float64).expand(6, 3, 3)
    target = torch.tensor(t.info["target"]).expand(6, 1, 3)
    uv, z = project_points(target, K, torch.tensor(t.c2w))
    assert torch.allclose(uv[:, 0], torch.tensor([32.0, 24.0], dtype=torch.float64), atol=1e-9)
    assert torch.all(z > 0)
    eyes = t.c2w[:, :3, 3]
    dist = np.linalg.norm((eyes - t.info["target"])[:, :2], axis=1)
    if kind == "orbit":  # constant horizontal radius, moving eye
        assert np.ptp(dist) < 1e-9 and np.linalg.norm(eyes[-1] - eyes[0]) > 0.1
    else:  # dolly: the eye moves along a line through the target
        u = (eyes - t.info["target"]) / np.linalg.norm(eyes - t.info["target"], axis=1, keepdims=True)
        assert np.allclose(u, u[0], atol=1e-9) and np.ptp(dist) > 0.01


def test_zoom_varies_and_shake_moves():
    b = _bounds()
    zoom = TrajectoryConfig(zoom_prob=1.0, zoom_max=0.4, shake_prob=1.0)
    lens_spread, n = [], 20
    for seed in range(n):
        t = sample_trajectory(np.random.default_rng(seed), 10, b, zoom)
        lens_spread.append(np.ptp(t.lens))
        assert t.shake
        assert abs(t.c2w[0, :3, :3] @ np.array([1.0, 0, 0]) @ np.array([0, 0, 1.0])) < 0.2  # small roll only
    assert np.mean(np.array(lens_spread) > 0.5) > 0.5  # most clips zoom by > 0.5 mm
    still = TrajectoryConfig(zoom_prob=0.0)
    assert np.ptp(sample_trajectory(np.random.default_rng(0), 10, b, still).lens) == 0.0


def test_trajectory_deterministic():
    b, cfg = _bounds(), TrajectoryConfig()
    a = sample_trajectory(np.random.default_rng(7), 8, b, cfg)
    c = sample_trajectory(np.random.default_rng(7), 8, b, cfg)
    d = sample_trajectory(np.random.default_rng(8), 8, b, cfg)
    assert np.array_equal(a.c2w, c.c2w) and np.array_equal(a.lens, c.lens)
    assert not np.allclose(a.c2w, d.c2w)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="kinds"):
        TrajectoryConfig(kinds=("spin",))
    with pytest.raises(ValueError, match="lens_range"):
        TrajectoryConfig(lens_range=(50.0, 10.0))
    with pytest.raises(ValueError, match="hi"):
        CameraBounds([0, 0, 0], [1, -1, 1], np.zeros((0, 4)), [[0, 0, 0]])
    with pytest.raises(ValueError, match="width"):
        SynthConfig(width=0)
    with pytest.raises(RuntimeError, match="no valid camera"):  # every eye is inside an obstacle
        blocked = CameraBounds([-1, -1, 0], [1, 1, 1], [[0, 0, 0, 10]], [[0, 0, 0]])
        sample_trajectory(np.random.default_rng(0), 4, blocked, TrajectoryConfig(max_tries=5))


# ---------------------------------------------------------------------------------------------- Blender

PLANE_SCRIPT = textwrap.dedent(
    """
    import sys, tempfile
    import numpy as np
    import bpy
    from backend.data import synth_scene as S
    from backend.data.synth import FrameRenderer, SynthConfig
    from backend.data.synth_camera import look_at

    S.reset_scene()
    rng = np.random.default_rng(0)
    S.add_box((0, 0, -0.5), (400, 400, 1.0), S.make_material(rng, S.SceneConfig()))  # top face: z = 0
    bpy.context.scene.world = bpy.data.worlds.new("w")
    with tempfile.TemporaryDirectory() as work:
        r = FrameRenderer(SynthConfig(width=40, height=30, samples=1), work)
        r.set_camera(look_at(np.array([0.3, -0.2, 2.0]), np.array([1.5, 2.0, 0.0])), 28.0)
        K, c2w = r.camera_now()
        rgb, depth = r.render()
    np.savez(sys.argv[1], K=K, c2w=c2w, depth=depth, rgb=rgb)
    """
)


def _run_blender(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _plane_depth(K: np.ndarray, c2w: np.ndarray, H: int, W: int, shift: float = 0.0) -> np.ndarray:
    """Analytic z-depth of the plane z = 0 at pixel centres (+ shift px): t with o + t·R·K⁻¹[u v 1]."""
    Ks = torch.tensor(K)[None].clone()
    Ks[0, :2, 2] -= shift  # moving the principal point by -s samples the pixels at u + s
    d = camera_directions(Ks, H, W)[0].numpy()  # (H, W, 3), z = 1
    dw = d @ c2w[:3, :3].T  # world directions
    return -c2w[2, 3] / dw[..., 2]


def test_depth_is_z_depth_at_pixel_centres(tmp_path):
    out = tmp_path / "plane.npz"
    _run_blender(PLANE_SCRIPT, str(out))
    z = np.load(out)
    depth, K, c2w = z["depth"], z["K"], z["c2w"]
    H, W = depth.shape
    assert (W, H) == (40, 30)
    expect = _plane_depth(K, c2w, H, W)
    err = np.abs(depth - expect) / expect
    assert err.max() < 1e-4, err.max()
    # the oracle discriminates: a half-pixel slip or ray length instead of z-depth are far off
    assert (np.abs(depth - _plane_depth(K, c2w, H, W, 0.5)) / expect).max() > 10 * err.max()
    ray_len = expect * np.linalg.norm(camera_directions(torch.tensor(K)[None], H, W)[0].numpy(), axis=-1)
    assert (np.abs(depth - ray_len) / expect).max() > 10 * err.max()
    assert z["rgb"].std() > 3  # the plane is textured


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Seed 0 twice (2 clips, then 1) and seed 1 (1 clip), at test size, one worker process each."""
    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(**SMALL, camera=TrajectoryConfig(zoom_prob=1.0))  # every clip zooms
    out = {}
    for name, seed, n in (("a", 0, 2), ("b", 0, 1), ("c", 1, 1)):
        out[name] = generate(str(root / name), n, cfg, seed=seed, workers=1, progress=False)
    return out


def test_generator_writes_readable_clips(datasets):
    paths = datasets["a"]
    assert len(paths) == 2 and all(os.path.isdir(p) for p in paths)
    for p in paths:
        clip = read_clip(p)
        assert clip.images.shape == (3, 40, 48, 3)
        assert clip.depth is not None and clip.depth.shape == (3, 40, 48)
        assert clip.cameras is not None and len(clip.cameras) == 3 and clip.fps == SynthConfig().fps
        assert np.isfinite(clip.depth).all()
        assert (clip.depth > 0).mean() > 0.99  # enclosed scenes: (nearly) every pixel hits geometry
        assert clip.images.std() > 5  # not blank
        # focal lengths from Blender's camera: positive, principal point centred (no shift)
        assert np.allclose(clip.cameras.K[:, 0, 2], 24.0) and np.allclose(clip.cameras.K[:, 1, 2], 20.0)
        assert np.ptp(clip.cameras.K[:, 0, 0]) > 0  # the lens Blender rendered with changed in the clip


def test_generator_deterministic(datasets):
    a, b, c = (read_clip(datasets[k][0]) for k in "abc")
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.depth, b.depth)
    assert np.array_equal(a.cameras.K, b.cameras.K) and np.array_equal(a.cameras.c2w, b.cameras.c2w)
    assert not np.array_equal(a.images, c.images)
    assert not np.allclose(a.cameras.c2w, c.cameras.c2w)
    assert not np.array_equal(read_clip(datasets["a"][1]).images, a.images)  # clips differ too


def _backward_warp(clip, src: int, dst: int, c2w_dst=None) -> tuple[np.ndarray, np.ndarray]:
    """Warp frame `src` into frame `dst` through dst's depth; returns (abs RGB error (H, W), visible (H, W))."""
    K = torch.tensor(clip.cameras.K)
    c2w = torch.tensor(clip.cameras.c2w if c2w_dst is None else c2w_dst)
    depth = torch.tensor(clip.depth, dtype=torch.float64)
    H, W = depth.shape[1:]
    pts = unproject_depth(depth[dst][None], K[dst][None], c2w[dst][None]).reshape(1, -1, 3)  # (1, HW, 3)
    uv, z = project_points(pts, K[src][None], torch.tensor(clip.cameras.c2w[src])[None])  # (1, HW, 2)
    grid = torch.stack([2 * uv[..., 0] / W - 1, 2 * uv[..., 1] / H - 1], -1).reshape(1, H, W, 2)
    img = torch.tensor(clip.images[src], dtype=torch.float64).permute(2, 0, 1)[None]  # (1, 3, H, W)
    warped = Fn.grid_sample(img, grid, align_corners=False, padding_mode="border")[0]  # (3, H, W)
    zs = Fn.grid_sample(depth[src][None, None], grid, mode="nearest", align_corners=False)[0, 0]  # (H, W)
    inside = (grid.abs() < 1 - 2 / min(H, W)).all(-1)[0]
    visible = inside & ((zs - z.reshape(H, W)).abs() < 0.03 * zs) & (depth[dst] > 0)
    target = torch.tensor(clip.images[dst], dtype=torch.float64).permute(2, 0, 1)
    return (warped - target).abs().mean(0).numpy(), visible.numpy()


def test_reprojection_agrees_with_true_geometry(datasets):
    for path in datasets["a"]:
        clip = read_clip(path)
        err, vis = _backward_warp(clip, src=0, dst=2)
        assert vis.mean() > 0.3, vis.mean()
        good = err[vis].mean()
        # a wrong camera: frame 2 rotated by 5 degrees about its own y axis
        a = np.radians(5.0)
        rot = np.array([[np.cos(a), 0, np.sin(a), 0], [0, 1, 0, 0], [-np.sin(a), 0, np.cos(a), 0], [0, 0, 0, 1]])
        wrong_c2w = clip.cameras.c2w.copy()
        wrong_c2w[2] = wrong_c2w[2] @ rot
        bad_err, _ = _backward_warp(clip, src=0, dst=2, c2w_dst=wrong_c2w)
        bad = bad_err[vis].mean()
        assert good < 8.0, (good, bad)
        assert bad > 2 * good, (good, bad)


def test_cli_parallel_and_refuses_to_overwrite(tmp_path):
    import argparse

    from backend.data import synth

    parser = argparse.ArgumentParser()
    synth.configure(parser)
    argv = ["synth", "--out", str(tmp_path), "--clips", "2", "--frames", "2", "--width", "32", "--height", "24",
            "--samples", "2", "--workers", "2", "--seed", "5", "--layouts", "outdoor", "--quiet"]  # fmt: skip
    args = parser.parse_args(argv)
    assert synth.run(args) == 0
    clips = [read_clip(tmp_path / f"clip_{i:05d}") for i in range(2)]
    assert all(c.images.shape == (2, 24, 32, 3) and (c.depth > 0).mean() > 0.99 for c in clips)
    with pytest.raises(ValueError, match="already holds"):
        synth.run(args)
    with pytest.raises(ValueError, match="layouts"):
        synth.run(parser.parse_args([*argv[:-2], "cave", "--overwrite"]))
