"""The `mesh` job: TSDF fusion of a rendered clip's true depth and cameras, checked against the renders."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from backend.data.ply import read_ply
from backend.geometry.projection import project_points
from backend.pipelines.mesh import fuse_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOXEL = 0.5  # scene units; the rendered scene spans ~60 units, so the grid stays small and fast


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def fused(clip, one_thread):
    messages: list[tuple[float, str]] = []
    res = fuse_mesh(clip.images, clip.depth, clip.cameras.K, clip.cameras.c2w, voxel=VOXEL,
                    progress=lambda f, m: messages.append((f, m)))
    return res, messages


def _in_frame(clip, vertices: np.ndarray, t: int = 0):
    """Vertices projecting inside frame t: their (row, col) pixel, depth along the view axis, and selection."""
    uv, z = project_points(torch.as_tensor(vertices, dtype=torch.float64)[None],
                           torch.as_tensor(clip.cameras.K[t : t + 1]), torch.as_tensor(clip.cameras.c2w[t : t + 1]))
    uv, z = uv[0].numpy(), z[0].numpy()
    H, W = clip.images.shape[1:3]
    ok = np.isfinite(uv).all(axis=1)
    ij = np.floor(np.nan_to_num(uv, nan=-1)).astype(int)
    ok &= (ij[:, 0] >= 0) & (ij[:, 0] < W) & (ij[:, 1] >= 0) & (ij[:, 1] < H)
    return ij[ok, 1], ij[ok, 0], z[ok], ok


def test_mesh_vertices_lie_on_the_rendered_surfaces(clip, fused):
    res, _ = fused
    assert res.vertices.dtype == np.float32 and res.vertices.shape[1] == 3
    assert res.faces.dtype == np.int32 and res.faces.min() >= 0 and res.faces.max() < len(res.vertices)
    assert res.colors.dtype == np.uint8 and res.colors.shape == res.vertices.shape
    assert res.voxel == VOXEL and len(res.faces) > 1000
    rows, cols, z, ok = _in_frame(clip, res.vertices)
    assert ok.mean() > 0.9  # the scene is what frame 0 sees
    d = clip.depth[0][rows, cols]
    visible = z < d + 3 * res.voxel  # not hidden behind frame 0's surface
    assert visible.mean() > 0.6
    err = np.abs(z - d)[visible]
    assert np.median(err) < res.voxel
    assert np.median(err / d[visible]) < 0.02


def test_mesh_colours_match_the_images(clip, fused):
    res, _ = fused
    rows, cols, z, ok = _in_frame(clip, res.vertices)
    d = clip.depth[0][rows, cols]
    visible = np.abs(z - d) < res.voxel
    seen = clip.images[0][rows, cols][visible].astype(float)  # (N, 3)
    fused_colours = res.colors[ok][visible].astype(float)
    err = np.abs(seen - fused_colours).mean()
    shuffled = np.abs(seen - fused_colours[np.random.default_rng(0).permutation(len(seen))]).mean()
    assert err < 8 and err < 0.4 * shuffled


def test_mesh_progress_per_frame(clip, fused):
    _, messages = fused
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] >= 0
    assert sum(m.startswith("fusing frame") for _, m in messages) == len(clip.images)

    def cancel(fraction, message):
        if message.startswith("fusing frame 3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fuse_mesh(clip.images, clip.depth, clip.cameras.K, clip.cameras.c2w, voxel=2.0, progress=cancel)


def test_auto_voxel_on_a_plane():
    """Two cameras facing the plane z = 5 from z = 0: the auto-sized mesh is that plane."""
    H, W = 24, 32
    K = np.array([[30.0, 0, W / 2], [0, 30.0, H / 2], [0, 0, 1]])
    c2w = np.stack([np.eye(4), np.eye(4)])
    c2w[1, 0, 3] = 0.3
    depth = np.full((2, H, W), 5.0, np.float32)
    images = np.zeros((2, H, W, 3), np.uint8)
    images[..., 0] = 200
    res = fuse_mesh(images, depth, np.stack([K, K]), c2w)
    assert res.voxel > 0 and len(res.faces) > 100
    assert np.abs(res.vertices[:, 2] - 5.0).max() < res.voxel
    assert np.abs(res.colors.astype(int) - [200, 0, 0]).max() <= 1


def test_fuse_mesh_rejects_bad_input(clip):
    im, d, K, P = clip.images[:2], clip.depth[:2], clip.cameras.K[:2], clip.cameras.c2w[:2]
    bad_K = K.copy()
    bad_K[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="K"):
        fuse_mesh(im, d, bad_K, P)
    with pytest.raises(ValueError, match="depth"):
        fuse_mesh(im, d[:, :-1], K, P)
    nan_depth = d.copy()
    nan_depth[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="depth"):
        fuse_mesh(im, nan_depth, K, P)
    with pytest.raises(ValueError, match="voxel"):
        fuse_mesh(im, d, K, P, voxel=-1.0)
    with pytest.raises(ValueError, match="cameras"):
        fuse_mesh(im, d, K[:1], P[:1])
    with pytest.raises(ValueError, match="images"):
        fuse_mesh(im.astype(np.float32), d, K, P)


def test_mesh_cli_writes_a_ply(rendered_clip, fused, tmp_path):
    out = tmp_path / "mesh.ply"
    cmd = [sys.executable, "-m", "backend.cli", "mesh", "--clip", rendered_clip, "--out", str(out),
           "--voxel", str(VOXEL)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    ply = read_ply(out)
    res, _ = fused
    np.testing.assert_allclose(ply["points"], res.vertices, atol=1e-5)
    np.testing.assert_array_equal(ply["faces"], res.faces)
    np.testing.assert_array_equal(ply["colors"], res.colors)
    bad = subprocess.run([*cmd[:-4], "--clip", str(tmp_path), "--out", str(tmp_path / "x.ply")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "clip folder" in bad.stderr
