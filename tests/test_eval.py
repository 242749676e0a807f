"""`parallax eval`: metrics against known values and scikit-image, the baselines, the driver end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from backend.data.clips import Clip, write_clip
from backend.eval import baselines, run
from backend.eval.metrics import psnr, ssim, ssim_map
from backend.geometry.align import depth_metrics, rotation_angle_deg
from backend.geometry.projection import project_points


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image's SSIM configured as Wang et al. 2004 (the independent oracle)."""
    kw = {"channel_axis": -1} if a.ndim == 3 else {}
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, **kw)


# ----------------------------------------------------------------------------------------------------
# metrics


def test_psnr_of_known_mse():
    a = np.zeros((8, 10, 3), np.uint8)
    b = a.copy()
    b[..., 0] = 10  # squared error 100 on a third of the values: MSE = 100/3
    assert psnr(b, a) == pytest.approx(10 * math.log10(255**2 / (100 / 3)), abs=1e-9)
    assert psnr(b.astype(np.float32) / 255, a.astype(np.float32) / 255, data_range=1.0) == pytest.approx(
        psnr(b, a), abs=1e-5)


def test_identical_images_psnr_inf_ssim_one(rng):
    a = rng.integers(0, 256, (32, 40, 3)).astype(np.uint8)
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    holes = np.zeros((32, 40), bool)
    holes[5:9, 3:30] = True
    scores = run.completion_scores(a[None], a[None], holes[None], cap_db=100.0)
    assert scores["hole_psnr"] == 100.0 and scores["psnr_all"] == 100.0  # the driver caps inf
    assert scores["hole_ssim"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["random", "structured", "gray"])
def test_ssim_matches_skimage(rng, kind):
    if kind == "structured":  # smooth gradients, a disc and stripes, then blurred + shifted copy
        yy, xx = np.mgrid[0:48, 0:64]
        base = 120 + 80 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 50 * (((xx - 30) ** 2 + (yy - 20) ** 2) < 150)
        a = np.stack([base, base[::-1], base[:, ::-1]], -1).clip(0, 255).astype(np.uint8)
        b = np.roll(a, 1, axis=1).astype(np.float64) * 0.9 + 10
        b = b.clip(0, 255).astype(np.uint8)
    else:
        shape = (37, 53) if kind == "gray" else (48, 64, 3)
        a = rng.integers(0, 256, shape).astype(np.uint8)
        b = np.clip(a + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)
    assert abs(ssim(a, b) - _sk_ssim(a, b)) < 1e-4
    assert ssim(a, b) < 0.999  # not a trivially perfect pair


def test_masked_metrics_only_see_masked_pixels(rng):
    a = rng.integers(0, 256, (30, 40, 3)).astype(np.uint8)
    mask = np.zeros((30, 40), bool)
    mask[10:20, 5:25] = True
    b = a.copy()
    b[mask] = np.clip(b[mask].astype(int) + 20, 0, 255).astype(np.uint8)
    c = b.copy()
    c[~mask] = rng.integers(0, 256, (int((~mask).sum()), 3)).astype(np.uint8)  # change only outside
    assert psnr(c, a, mask) == psnr(b, a, mask)
    err = (b[mask].astype(float) - a[mask]) ** 2
    assert psnr(b, a, mask) == pytest.approx(10 * math.log10(255**2 / err.mean()), abs=1e-9)
    assert psnr(b, a, ~mask) == math.inf  # outside the mask b equals a
    # masked SSIM = mean of the SSIM map over the mask; skimage's full map as the oracle
    _, sk_map = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                      data_range=255, channel_axis=-1, full=True)
    assert ssim(b, a, mask) == pytest.approx(sk_map.mean(-1)[mask].mean(), abs=1e-6)
    assert np.allclose(ssim_map(a, b), sk_map.mean(-1), atol=1e-6)
    assert math.isnan(psnr(a, b, np.zeros((30, 40), bool)))


def test_metrics_reject_bad_input():
    a = np.zeros((8, 8, 3))
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="mask"):
        psnr(a, a, np.ones((8, 8), np.uint8))
    with pytest.raises(ValueError, match="data_range"):
        ssim(a, a, data_range=0)


# ----------------------------------------------------------------------------------------------------
# baselines


def _look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV-axed camera-to-world looking from `centre` at `target` (y down)."""
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross(z, [0.0, -1.0, 0.0])
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    c2w[:3, 3] = centre
    return c2w


def test_two_view_recovers_relative_pose_from_exact_matches(rng):
    K0 = np.array([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]])
    K1 = np.array([[75.0, 0, 31], [0, 75.0, 25], [0, 0, 1]])  # a zoom between the frames
    c2w0 = _look_at(np.array([0.0, 0, 0]), np.array([0.1, 0, 5]))
    c2w1 = _look_at(np.array([0.4, -0.1, 0.2]), np.array([-0.2, 0.1, 5]))
    pts = rng.uniform([-2, -1.5, 3], [2, 1.5, 7], (200, 3))
    P = torch.as_tensor(pts)[None]  # (1, N, 3)
    uv0, _ = project_points(P, torch.as_tensor(K0)[None], torch.as_tensor(c2w0)[None])
    uv1, _ = project_points(P, torch.as_tensor(K1)[None], torch.as_tensor(c2w1)[None])
    R, t, inliers = baselines.relative_pose_from_matches(uv0[0].numpy(), uv1[0].numpy(), K0, K1)
    rel = np.linalg.inv(c2w1) @ c2w0  # camera 0 coordinates -> camera 1 coordinates
    assert rotation_angle_deg(R.T @ rel[:3, :3]) < 0.1
    t_true = rel[:3, 3] / np.linalg.norm(rel[:3, 3])
    assert np.degrees(np.arccos(np.clip(t @ t_true, -1, 1))) < 0.5
    assert inliers > 150


def test_two_view_too_few_matches_is_a_failure():
    K = np.array([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]])
    assert baselines.relative_pose_from_matches(np.zeros((4, 2)), np.zeros((4, 2)), K, K) is None
    flat = np.full((3, 48, 64, 3), 128, np.uint8)  # no texture, no features
    res = baselines.two_view_trajectory(flat, np.stack([K] * 3))
    assert res.failures == 2 and np.allclose(res.c2w, np.eye(4))  # identity steps


def test_telea_fills_holes(rng):
    yy, xx = np.mgrid[0:40, 0:50]
    img = np.stack([xx * 4, yy * 5, 100 + 0 * xx], -1).astype(np.uint8)
    holes = np.zeros((40, 50), bool)
    holes[12:20, 15:30] = True
    holes[0:3, 40:50] = True  # touching the border
    warped = img.copy()
    warped[holes] = 0
    filled = baselines.telea_inpaint(warped, holes)
    assert np.array_equal(filled[~holes], img[~holes])  # known pixels untouched
    assert (filled[holes] > 0).all(axis=1).all()  # every hole pixel filled (true image is > 0 there)
    assert psnr(filled, img, holes) > 25  # a smooth ramp is easy to fill


def test_constant_depth_abs_rel_by_hand():
    gt = np.ones((4, 6), np.float32)
    gt[:, 3:] = 3.0  # half at 1, half at 3: the aligned constant is the mean, 2
    m = depth_metrics(baselines.constant_depth(gt.shape), gt)
    assert m["abs_rel"] == pytest.approx(0.5 * (1 / 1) + 0.5 * (1 / 3), abs=1e-12)
    assert m["delta1"] == 0.0  # 2/1 and 3/2 both exceed 1.25
    stack = np.stack([gt, gt * 2])  # per-frame alignment rescales each frame: same AbsRel
    s = run.depth_scores(baselines.constant_depth(stack.shape), stack)
    assert s["abs_rel_frame"] == pytest.approx(2 / 3, abs=1e-12)
    # per clip the constant is the clip mean 3: |3-1|/1, |3-3|/3, |3-2|/2, |3-6|/6 over equal areas
    assert s["abs_rel_clip"] == pytest.approx((2 + 0 + 0.5 + 0.5) / 4, abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# driver


def test_driver_end_to_end(rendered_clip, tmp_path):
    for task in run.TASKS:
        try:
            run.pipeline(task)
        except run.PipelineUnavailable as exc:
            pytest.skip(str(exc))
    out = tmp_path / "results.json"
    # Euler with 2 steps: 2 model calls per task (the numbers are meaningless; the plumbing is the test)
    rc = run.main(["--clips", rendered_clip, "--steps", "2", "--sampler", "euler", "--out", str(out),
                   "--quiet", "--device", "cpu"])
    assert rc == 0
    report = json.loads(out.read_text())  # strict JSON: no NaN/Infinity tokens
    rows = report["rows"]
    assert [r["key"] for r in rows] == [key for _, key, _, _ in run.METRICS]
    for r in rows:
        for col in ("model", "baseline", "model_s_per_clip", "baseline_s_per_clip"):
            assert isinstance(r[col], float) and math.isfinite(r[col]), (r["key"], col, r[col])
        assert r["clips"] == 1 and r["frames"] >= 7
    ((_name, per_clip),) = report["clips"].items()
    for task in run.TASKS:
        keys = {key for t, key, _, _ in run.METRICS if t == task}
        assert keys <= set(per_clip[task]["model"]) and keys <= set(per_clip[task]["baseline"])
    assert 0 < per_clip["completion"]["model"]["hole_fraction"] < 1
    assert per_clip["cameras"]["baseline"]["failed_pairs"] <= 7


def test_driver_rejects_bad_tasks_and_missing_ground_truth(tmp_path):
    with pytest.raises(ValueError, match="tasks"):
        run.EvalConfig(tasks=("completion", "flow")).validate()
    with pytest.raises(FileNotFoundError):
        run.find_clips([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="clip folder"):
        run.find_clips([str(tmp_path / "empty")])
    rgb_only = tmp_path / "rgb_only"
    write_clip(rgb_only, Clip(images=np.zeros((3, 8, 8, 3), np.uint8)))
    assert run.find_clips([str(tmp_path)]) == [str(rgb_only)]
    with pytest.raises(ValueError, match="ground truth"):
        run.load_eval_clip(str(rgb_only))
