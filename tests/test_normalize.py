"""Clip normalisation: round trips, bounds, scene-scale invariance and preserved reprojection."""

import math

import pytest
import torch

from backend.geometry.normalize import DEPTH_EPS, ClipNormalization, clip_normalization, median_valid_depth
from backend.geometry.projection import invert_pose, pixel_centres, project_points, unproject_depth

F64 = torch.float64


def _random_c2w(F: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(F, 3, 3, dtype=F64))
    q = q * torch.sign(torch.linalg.det(q))[:, None, None]
    c2w = torch.eye(4, dtype=F64).repeat(F, 1, 1)
    c2w[:, :3, :3] = q
    c2w[:, :3, 3] = torch.randn(F, 3, dtype=F64) * 3.0
    return c2w  # (F, 4, 4)


def _clip(F: int = 3, H: int = 5, W: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    depth = torch.rand(F, H, W, dtype=F64) * 8.0 + 0.5
    depth[0, 0, :2] = 0.0  # unknown pixels must not enter the median
    return depth, _random_c2w(F)


def test_scale_is_median_valid_first_frame_depth():
    depth = torch.zeros(2, 2, 3, dtype=F64)
    depth[0] = torch.tensor([[1.0, 0.0, 4.0], [3.0, 0.0, 2.0]])  # valid: 1, 2, 3, 4 -> 2.5
    depth[1] = 100.0  # later frames are not read
    c2w = _random_c2w(2)
    norm = clip_normalization(depth, c2w)
    assert norm.scale == 2.5
    torch.testing.assert_close(norm.origin_c2w, c2w[0])
    assert clip_normalization(depth, c2w, scale=7.0).scale == 7.0
    assert median_valid_depth(torch.tensor([3.0, float("nan"), 1.0, -2.0, 2.0])) == 2.0


def test_first_pose_becomes_identity_and_poses_round_trip():
    depth, c2w = _clip(F=4)
    norm = clip_normalization(depth, c2w)
    rel = norm.normalize_poses(c2w)
    torch.testing.assert_close(rel[0], torch.eye(4, dtype=F64), rtol=0, atol=1e-12)
    # Relative motion is kept, translation divided by s.
    expect = invert_pose(c2w[1]) @ c2w[2]
    got = invert_pose(rel[1]) @ rel[2]
    torch.testing.assert_close(got[:3, :3], expect[:3, :3], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[:3, 3], expect[:3, 3] / norm.scale, rtol=0, atol=1e-12)
    torch.testing.assert_close(norm.denormalize_poses(rel), c2w, rtol=0, atol=1e-6)


def test_depth_round_trip_and_fixed_points():
    norm = ClipNormalization(scale=3.0, origin_c2w=torch.eye(4, dtype=F64))
    depth = torch.logspace(-3, 3, 200, dtype=F64) * 3.0  # 0.001·s .. 1000·s
    enc, valid = norm.normalize_depth(depth)
    assert valid.all()
    torch.testing.assert_close(norm.denormalize_depth(enc), depth, rtol=1e-6, atol=0)
    enc_s, _ = norm.normalize_depth(torch.tensor([3.0], dtype=F64))
    assert enc_s.item() == 0.0  # d = s sits in the middle of the code range
    assert norm.denormalize_depth(torch.tensor([1.0], dtype=F64)).item() == 0.0


def test_encoded_depth_is_bounded_and_decreasing():
    norm = ClipNormalization(scale=2.0, origin_c2w=torch.eye(4, dtype=F64))
    depth = torch.cat([torch.tensor([1e-9]), torch.linspace(0.01, 50.0, 500), torch.tensor([1e6])]).double()
    enc, _ = norm.normalize_depth(depth)
    assert (enc > -1).all() and (enc <= 1).all()
    assert (enc[1:] < enc[:-1]).all()  # nearer is larger, strictly
    assert enc[0] == pytest.approx(1.0) and enc[-1] == pytest.approx(-1.0, abs=1e-5)
    # Decoding clamps: the far end is finite and documented, nothing below zero.
    far = norm.denormalize_depth(torch.tensor([-1.0, -2.0, 1.5], dtype=F64))
    assert far[0].item() == pytest.approx(norm.max_depth) and far[1] == far[0]
    assert norm.max_depth == pytest.approx(2.0 * (2 - DEPTH_EPS) / DEPTH_EPS)
    assert far[2].item() == 0.0


def test_unknown_depth_is_masked_with_zero_gradient():
    norm = ClipNormalization(scale=1.5, origin_c2w=torch.eye(4, dtype=F64))
    depth = torch.tensor([0.0, -1.0, float("nan"), float("inf"), 1.5, 3.0], dtype=F64, requires_grad=True)
    enc, valid = norm.normalize_depth(depth, fill=0.25)
    assert valid.tolist() == [False, False, False, False, True, True]
    assert enc[:4].tolist() == [0.25] * 4
    enc.sum().backward()
    grad = depth.grad
    assert grad[:4].tolist() == [0.0] * 4
    # d e / d d = −2s/(s + d)²
    torch.testing.assert_close(grad[4:], -2 * 1.5 / (1.5 + depth.detach()[4:]) ** 2)


def test_gradients_through_depth_and_poses():
    depth, c2w = _clip(F=2, H=2, W=2)
    norm = clip_normalization(depth, c2w)
    d = depth[1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: norm.normalize_depth(x)[0], (d,))
    e = (torch.rand(5, dtype=F64) * 1.8 - 0.9).requires_grad_(True)
    assert torch.autograd.gradcheck(norm.denormalize_depth, (e,))
    p = c2w.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(norm.normalize_poses, (p,))
    assert torch.autograd.gradcheck(norm.denormalize_poses, (p,))


def test_scene_scale_and_rigid_motion_invariance():
    depth, c2w = _clip(F=3)
    base = clip_normalization(depth, c2w)
    k = 4.5
    c2w_k = c2w.clone()
    c2w_k[:, :3, 3] *= k  # the whole scene k times larger
    scaled = clip_normalization(depth * k, c2w_k)
    assert scaled.scale == pytest.approx(base.scale * k)
    torch.testing.assert_close(scaled.normalize_depth(depth * k)[0], base.normalize_depth(depth)[0])
    torch.testing.assert_close(scaled.normalize_poses(c2w_k), base.normalize_poses(c2w), rtol=0, atol=1e-12)
    # Moving the world rigidly changes nothing either: only motion relative to frame 0 survives.
    T = _random_c2w(1)[0]
    moved = clip_normalization(depth, T @ c2w)
    torch.testing.assert_close(moved.normalize_poses(T @ c2w), base.normalize_poses(c2w), rtol=0, atol=1e-12)


def test_reprojection_is_preserved():
    F, H, W = 3, 4, 5
    depth, c2w = _clip(F, H, W)
    depth[0, 0, :2] = 1.0  # every pixel valid here
    K = torch.tensor([[6.0, 0.0, 2.4], [0.0, 5.5, 2.1], [0.0, 0.0, 1.0]], dtype=F64).repeat(F, 1, 1)
    norm = clip_normalization(depth, c2w)
    world = unproject_depth(depth, K, c2w)  # (F, H, W, 3)
    # The model sees codes; decoding them at unit scale gives depth in normalised units d/s.
    enc, _ = norm.normalize_depth(depth)
    unit = ClipNormalization(scale=1.0, origin_c2w=torch.eye(4, dtype=F64))
    depth_n = unit.denormalize_depth(enc)
    torch.testing.assert_close(depth_n, depth / norm.scale, rtol=1e-9, atol=0)
    c2w_n = norm.normalize_poses(c2w)
    world_n = unproject_depth(depth_n, K, c2w_n)
    torch.testing.assert_close(world_n, norm.normalize_points(world), rtol=0, atol=1e-9)
    torch.testing.assert_close(norm.denormalize_points(world_n), world, rtol=0, atol=1e-8)
    # Frame 0's points seen from frame 2 in the normalised scene land on the same pixels as in the world.
    uv, z = project_points(world[0].reshape(1, -1, 3), K[2:], c2w[2:])
    uv_n, z_n = project_points(world_n[0].reshape(1, -1, 3), K[2:], c2w_n[2:])
    torch.testing.assert_close(uv_n, uv, rtol=0, atol=1e-9, equal_nan=True)
    torch.testing.assert_close(z_n, z / norm.scale, rtol=0, atol=1e-9)
    uv0, _ = project_points(world_n[0].reshape(1, -1, 3), K[:1], c2w_n[:1])
    torch.testing.assert_close(uv0[0], pixel_centres(H, W, F64).reshape(-1, 2), rtol=0, atol=1e-9)


def test_float32_inputs_keep_their_dtype():
    depth, c2w = _clip(F=2)
    norm = clip_normalization(depth, c2w)  # float64 origin
    rel = norm.normalize_poses(c2w.float())
    assert rel.dtype == torch.float32
    torch.testing.assert_close(rel, norm.normalize_poses(c2w).float(), rtol=1e-5, atol=1e-5)
    enc, _ = norm.normalize_depth(depth.float())
    assert enc.dtype == torch.float32


def test_bad_input_raises():
    c2w = _random_c2w(2)
    with pytest.raises(ValueError, match="depth is None"):
        clip_normalization(None, c2w)
    with pytest.raises(ValueError, match=r"depth\[0\] has no valid"):
        clip_normalization(torch.zeros(2, 3, 3), c2w)
    with pytest.raises(ValueError, match="depth must be"):
        clip_normalization(torch.ones(3, 3), c2w)
    with pytest.raises(ValueError, match="c2w must"):
        clip_normalization(torch.ones(1, 3, 3), c2w[:, :3])
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="scale"):
            clip_normalization(None, c2w, scale=bad)
    skewed = c2w[0].clone()
    skewed[:3, :3] *= 2.0
    with pytest.raises(ValueError, match="proper rotation"):
        ClipNormalization(scale=1.0, origin_c2w=skewed)
    with pytest.raises(ValueError, match="non-finite"):
        ClipNormalization(scale=1.0, origin_c2w=torch.full((4, 4), math.nan))
