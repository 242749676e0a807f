"""Ray maps and rays → cameras: exact recovery, smooth degradation under noise, input checks."""

from __future__ import annotations

import pytest
import torch

from backend.geometry.projection import pixel_centres, project_points
from backend.geometry.rays import ray_map, rays_to_camera, rays_to_camera_known_K

H, W = 24, 32
NOISE_LEVELS = (1e-4, 1e-3, 1e-2)


def _cameras(B: int, seed: int = 0, dtype: torch.dtype = torch.float64):
    """Random proper rotations and centres; focals from wide to telephoto, fx ≠ fy, off-centre
    principal points, zero skew."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(B, 3, 3, generator=g, dtype=torch.float64))
    R = q * torch.sign(torch.linalg.det(q))[:, None, None]
    c2w = torch.eye(4, dtype=torch.float64).repeat(B, 1, 1)
    c2w[:, :3, :3] = R
    c2w[:, :3, 3] = 2 * torch.randn(B, 3, generator=g, dtype=torch.float64)
    fx = W * (0.4 + 1.6 * torch.rand(B, generator=g, dtype=torch.float64))
    K = torch.zeros(B, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = fx
    K[:, 1, 1] = fx * (0.8 + 0.4 * torch.rand(B, generator=g, dtype=torch.float64))
    K[:, 0, 2] = W / 2 + 0.2 * W * (torch.rand(B, generator=g, dtype=torch.float64) - 0.5)
    K[:, 1, 2] = H / 2 + 0.2 * H * (torch.rand(B, generator=g, dtype=torch.float64) - 0.5)
    K[:, 2, 2] = 1
    return K.to(dtype), c2w.to(dtype)


def _rotation_angle(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (B,) from ‖Ra − Rb‖_F = 2√2·sin(θ/2); accurate near zero, unlike arccos."""
    chord = torch.linalg.matrix_norm(Ra - Rb) / (2 * 2**0.5)
    return 2 * torch.asin(chord.clamp(max=1))


def _errors(K, c2w, K_est, c2w_est) -> torch.Tensor:
    """[rotation rad, centre relative, intrinsics relative to fx], each the max over the batch."""
    rot = _rotation_angle(c2w_est[:, :3, :3], c2w[:, :3, :3]).max()
    scale = torch.linalg.vector_norm(c2w[:, :3, 3], dim=-1).clamp_min(1.0)
    centre = (torch.linalg.vector_norm(c2w_est[:, :3, 3] - c2w[:, :3, 3], dim=-1) / scale).max()
    intr = ((K_est - K).abs().amax(dim=(1, 2)) / K[:, 0, 0]).max()
    return torch.stack([rot, centre, intr])


def test_ray_map_properties() -> None:
    K, c2w = _cameras(3)
    rays = ray_map(K, c2w, H, W)  # (B, 6, H, W)
    assert rays.shape == (3, 6, H, W) and rays.dtype == torch.float64
    d, m = rays[:, :3], rays[:, 3:]
    torch.testing.assert_close(torch.linalg.vector_norm(d, dim=1), torch.ones(3, H, W, dtype=torch.float64))
    assert (d * m).sum(1).abs().max() < 1e-12  # moment ⟂ direction
    # the centre lies on every ray: (c − p) ∥ d̂ with p = d̂ × m the point nearest the origin
    p = torch.linalg.cross(d, m, dim=1)
    c = c2w[:, :3, 3, None, None]
    assert torch.linalg.cross(c - p, d, dim=1).abs().max() < 1e-12
    # oracle: a point along each ray projects (forward model, projection.py) back to its pixel centre
    pts = (c + 2.5 * d).flatten(2).transpose(1, 2)  # (B, N, 3)
    uv, z = project_points(pts, K, c2w)
    assert (z > 0).all()
    centres = pixel_centres(H, W, torch.float64).reshape(1, H * W, 2).expand(3, -1, -1)
    torch.testing.assert_close(uv, centres, atol=1e-9, rtol=0)


def test_principal_ray_is_optical_axis() -> None:
    """A principal point on a pixel centre: that pixel's ray is the camera's +z axis (R's 3rd column)."""
    K, c2w = _cameras(2)
    K[:, 0, 2], K[:, 1, 2] = 5.5, 7.5  # centre of pixel (row 7, column 5)
    rays = ray_map(K, c2w, H, W)
    torch.testing.assert_close(rays[:, :3, 7, 5], c2w[:, :3, 2], atol=1e-14, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_known_k_exact(seed: int) -> None:
    K, c2w = _cameras(6, seed)
    est = rays_to_camera_known_K(ray_map(K, c2w, H, W), K)
    rot, centre, _ = _errors(K, c2w, K, est)
    assert rot < 1e-6 and centre < 1e-6
    torch.testing.assert_close(est[:, 3], c2w[:, 3])
    torch.testing.assert_close(torch.linalg.det(est[:, :3, :3]), torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1])
def test_unknown_k_exact(seed: int) -> None:
    K, c2w = _cameras(6, seed)
    K_est, est = rays_to_camera(ray_map(K, c2w, H, W))
    rot, centre, intr = _errors(K, c2w, K_est, est)
    assert rot < 1e-6 and centre < 1e-6 and intr < 1e-6
    assert K_est[:, 2, 2].eq(1).all() and (K_est[:, 0, 0] > 0).all() and (K_est[:, 1, 1] > 0).all()
    torch.testing.assert_close(torch.linalg.det(est[:, :3, :3]), torch.ones(6, dtype=torch.float64))


def test_float32_maps_keep_dtype() -> None:
    K, c2w = _cameras(2, dtype=torch.float32)
    rays = ray_map(K, c2w, H, W)
    K_est, est = rays_to_camera(rays)
    assert K_est.dtype == est.dtype == torch.float32
    errs = _errors(K.double(), c2w.double(), K_est.double(), est.double())
    assert (errs < 1e-3).all(), errs


def _noisy_errors(level: float, seeds: int = 3) -> torch.Tensor:
    """Mean over seeds of the known-K (rot, centre) and unknown-K (rot, centre, intrinsics) errors."""
    K, c2w = _cameras(4, seed=7)
    rays = ray_map(K, c2w, H, W)
    out = []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(100 + seed)
        noisy = rays + level * torch.randn(rays.shape, generator=g, dtype=rays.dtype)
        known = _errors(K, c2w, K, rays_to_camera_known_K(noisy, K))[:2]
        unknown = _errors(K, c2w, *rays_to_camera(noisy))
        out.append(torch.cat([known, unknown]))
    return torch.stack(out).mean(0)  # (5,)


def test_noise_degrades_smoothly() -> None:
    errs = torch.stack([_noisy_errors(level) for level in NOISE_LEVELS])  # (levels, 5)
    levels = torch.tensor(NOISE_LEVELS, dtype=torch.float64)[:, None]
    # linear in the noise: bounded by a modest constant times the level ...
    assert (errs / levels < 10).all(), errs / levels
    # ... and monotone, roughly ×10 per decade (a stable estimator, not a threshold effect)
    ratios = errs[1:] / errs[:-1]
    assert ((ratios > 3) & (ratios < 30)).all(), ratios


def test_weights_ignore_corrupted_rays() -> None:
    K, c2w = _cameras(3, seed=3)
    rays = ray_map(K, c2w, H, W)
    bad = torch.zeros(3, H, W, dtype=torch.bool)
    bad[:, : H // 3] = True  # a third of the image is garbage (e.g. sky or a moving object)
    g = torch.Generator().manual_seed(0)
    corrupted = torch.where(bad[:, None], torch.randn(rays.shape, generator=g, dtype=rays.dtype), rays)
    weights = (~bad).double()
    K_est, est = rays_to_camera(corrupted, weights)
    assert (_errors(K, c2w, K_est, est) < 1e-6).all()
    assert (_errors(K, c2w, K, rays_to_camera_known_K(corrupted, K, weights))[:2] < 1e-6).all()
    # without the weights the garbage does hurt: the test above is not vacuous
    assert _errors(K, c2w, *rays_to_camera(corrupted)).max() > 1e-2


def test_plucker_scale_invariance() -> None:
    """(s·d, s·m) is the same line: per-pixel positive rescaling must not change the answer."""
    K, c2w = _cameras(2, seed=5)
    rays = ray_map(K, c2w, H, W)
    s = 0.5 + torch.rand(2, 1, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    K_est, est = rays_to_camera(rays * s)
    assert (_errors(K, c2w, K_est, est) < 1e-6).all()


def _bad_call(case: str):
    K, c2w = _cameras(2)
    rays = ray_map(K, c2w, 6, 8)
    nan_rays = rays.clone()
    nan_rays[0, 4, 2, 3] = float("nan")
    nan_K = K.clone()
    nan_K[1, 0, 2] = float("inf")
    calls = {
        "rays shape": lambda: rays_to_camera(rays[:, :5]),
        "rays ndim": lambda: rays_to_camera_known_K(rays[0], K),
        "rays nan": lambda: rays_to_camera(nan_rays),
        "rays zero dir": lambda: rays_to_camera(torch.zeros_like(rays)),
        "K shape": lambda: rays_to_camera_known_K(rays, K[:1]),
        "K nan": lambda: rays_to_camera_known_K(rays, nan_K),
        "weights shape": lambda: rays_to_camera(rays, torch.ones(2, 8, 6)),
        "weights negative": lambda: rays_to_camera(rays, -torch.ones(2, 6, 8)),
        "weights zero": lambda: rays_to_camera(rays, torch.zeros(2, 6, 8)),
        "ray_map nan": lambda: ray_map(nan_K, c2w, 6, 8),
        "ray_map shape": lambda: ray_map(K, c2w[:, :3], 6, 8),
    }
    return calls[case]


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("rays shape", "rays"),
        ("rays ndim", "rays"),
        ("rays nan", "rays"),
        ("rays zero dir", "rays"),
        ("K shape", "K"),
        ("K nan", "K"),
        ("weights shape", "weights"),
        ("weights negative", "weights"),
        ("weights zero", "weights"),
        ("ray_map nan", "K"),
        ("ray_map shape", "c2w"),
    ],
)
def test_bad_input_raises(case: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _bad_call(case)()
