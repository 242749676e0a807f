"""Projection primitives: unproject then project returns the pixel centres and depths."""

import torch

from backend.geometry.projection import invert_pose, pixel_centres, project_points, unproject_depth


def _random_pose(B: int, dtype=torch.float64) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(B, 3, 3, dtype=dtype))
    q = q * torch.sign(torch.linalg.det(q))[:, None, None]
    c2w = torch.eye(4, dtype=dtype).repeat(B, 1, 1)
    c2w[:, :3, :3] = q
    c2w[:, :3, 3] = torch.randn(B, 3, dtype=dtype)
    return c2w


def test_unproject_project_round_trip():
    B, H, W = 2, 7, 11
    K = torch.tensor([[20.0, 0.3, 5.2], [0.0, 18.0, 3.9], [0.0, 0.0, 1.0]], dtype=torch.float64)
    K = K.repeat(B, 1, 1)
    c2w = _random_pose(B)
    depth = torch.rand(B, H, W, dtype=torch.float64) + 0.5
    pts = unproject_depth(depth, K, c2w).reshape(B, -1, 3)
    uv, z = project_points(pts, K, c2w)
    expect = pixel_centres(H, W, torch.float64).reshape(1, -1, 2).expand(B, -1, -1)
    torch.testing.assert_close(uv, expect, rtol=0, atol=1e-9)
    torch.testing.assert_close(z, depth.reshape(B, -1), rtol=0, atol=1e-12)


def test_points_behind_camera_are_nan():
    K = torch.eye(3, dtype=torch.float64)[None]
    c2w = torch.eye(4, dtype=torch.float64)[None]
    uv, z = project_points(torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, 2.0]]], dtype=torch.float64), K, c2w)
    assert torch.isnan(uv[0, 0]).all() and not torch.isnan(uv[0, 1]).any()
    assert z[0, 0] == -1.0


def test_invert_pose():
    c2w = _random_pose(3)
    torch.testing.assert_close(invert_pose(c2w) @ c2w, torch.eye(4, dtype=torch.float64).expand(3, 4, 4))
