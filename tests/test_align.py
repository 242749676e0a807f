"""Alignment and metrics against constructed cases with known answers and independent oracles."""

import numpy as np
import pytest
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from backend.geometry.align import (
    abs_rel,
    align_depth_scale_shift,
    ate,
    delta_accuracy,
    depth_metrics,
    rotation_angle_deg,
    rpe,
    umeyama_sim3,
)


def _pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    P = np.eye(4)
    P[:3, :3], P[:3, 3] = R, t
    return P


def _trajectory(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 4, 4) random camera-to-world poses with spread-out centres."""
    Rs = Rotation.random(n, random_state=rng.integers(1 << 31)).as_matrix()
    return np.stack([_pose(Rs[i], rng.normal(size=3) * 2.0) for i in range(n)])


def _apply_sim3(P: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """World similarity applied to c2w poses: rotation R·R_i, centre s·R·c_i + t."""
    out = P.copy()
    out[:, :3, :3] = R @ P[:, :3, :3]
    out[:, :3, 3] = s * P[:, :3, 3] @ R.T + t
    return out


# ---------------------------------------------------------------------------------------------- Umeyama


def test_umeyama_recovers_known_sim3(rng):
    src = rng.normal(size=(20, 3))
    R = Rotation.random(random_state=1).as_matrix()
    s, t = 2.7, np.array([0.3, -1.2, 5.0])
    s_hat, R_hat, t_hat = umeyama_sim3(src, s * src @ R.T + t)
    assert abs(s_hat - s) < 1e-9
    np.testing.assert_allclose(R_hat, R, atol=1e-9)
    np.testing.assert_allclose(t_hat, t, atol=1e-9)


def test_umeyama_without_scale_recovers_rigid(rng):
    src = rng.normal(size=(10, 3))
    R = Rotation.random(random_state=2).as_matrix()
    t = np.array([1.0, 2.0, 3.0])
    s_hat, R_hat, t_hat = umeyama_sim3(src, src @ R.T + t, with_scale=False)
    assert s_hat == 1.0
    np.testing.assert_allclose(R_hat, R, atol=1e-9)
    np.testing.assert_allclose(t_hat, t, atol=1e-9)


def test_umeyama_matches_nonlinear_least_squares_on_noisy_data(rng):
    src = rng.normal(size=(30, 3))
    R = Rotation.from_rotvec([0.3, -0.5, 0.2]).as_matrix()
    dst = 1.5 * src @ R.T + np.array([0.5, 0.0, -1.0]) + 0.05 * rng.normal(size=src.shape)

    def residual(p):  # p = (log s, rotvec, t): an independent parameterisation of the same objective
        Rp = Rotation.from_rotvec(p[1:4]).as_matrix()
        return (np.exp(p[0]) * src @ Rp.T + p[4:] - dst).ravel()

    sol = least_squares(residual, np.zeros(7), xtol=1e-15, ftol=1e-15, gtol=1e-15).x
    s_hat, R_hat, t_hat = umeyama_sim3(src, dst)
    assert abs(s_hat - np.exp(sol[0])) < 1e-7
    np.testing.assert_allclose(R_hat, Rotation.from_rotvec(sol[1:4]).as_matrix(), atol=1e-7)
    np.testing.assert_allclose(t_hat, sol[4:], atol=1e-7)


def test_umeyama_reflection_gives_proper_rotation_matching_kabsch(rng):
    src = rng.normal(size=(15, 3)) * np.array([3.0, 2.0, 0.5])
    dst = src * np.array([1.0, 1.0, -1.0])  # a mirror: the best *proper* rotation is not the identity
    _, R_hat, _ = umeyama_sim3(src, dst, with_scale=False)
    assert np.linalg.det(R_hat) == pytest.approx(1.0)
    # Kabsch/Wahba via scipy: rotation best mapping centred src onto centred dst.
    R_ref, _ = Rotation.align_vectors(dst - dst.mean(0), src - src.mean(0))
    np.testing.assert_allclose(R_hat, R_ref.as_matrix(), atol=1e-9)


def test_umeyama_degenerate_inputs(rng):
    line = np.outer(np.arange(5.0), [1.0, 2.0, -1.0])  # collinear
    R = Rotation.random(random_state=3).as_matrix()
    with pytest.raises(ValueError, match="collinear"):
        umeyama_sim3(line, 2 * line @ R.T)
    with pytest.raises(ValueError, match="coincide"):
        umeyama_sim3(np.ones((4, 3)), rng.normal(size=(4, 3)))
    # Accepted on request: still an optimal (zero-residual) fit.
    s, Rh, t = umeyama_sim3(line, 2 * line @ R.T + 1.0, allow_degenerate=True)
    np.testing.assert_allclose(s * line @ Rh.T + t, 2 * line @ R.T + 1.0, atol=1e-9)
    assert s == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("src", "dst", "match"),
    [
        (np.zeros((2, 3)), np.zeros((2, 3)), "at least 3"),
        (np.zeros((4, 2)), np.zeros((4, 2)), r"\(N, 3\)"),
        (np.full((4, 3), np.nan), np.zeros((4, 3)), "non-finite"),
        (np.zeros((4, 3)), np.zeros((5, 3)), "same shape"),
    ],
)
def test_umeyama_rejects_bad_input(src, dst, match):
    with pytest.raises(ValueError, match=match):
        umeyama_sim3(src, dst)


# ---------------------------------------------------------------------------------------------- ATE / RPE


def test_ate_of_exact_sim3_is_zero(rng):
    gt = _trajectory(rng, 12)
    R = Rotation.random(random_state=4).as_matrix()
    pred = _apply_sim3(gt, 0.25, R, np.array([3.0, -2.0, 1.0]))
    out = ate(pred, gt)
    assert out["rmse"] < 1e-9 and out["max"] < 1e-9
    assert out["scale"] == pytest.approx(4.0)
    out_se3 = ate(_apply_sim3(gt, 1.0, R, np.array([1.0, 0.0, 0.0])), gt, align="se3")
    assert out_se3["rmse"] < 1e-9 and out_se3["scale"] == 1.0


def test_ate_one_offset_frame_without_alignment(rng):
    gt = _trajectory(rng, 8)
    pred = gt.copy()
    pred[5, :3, 3] += [3.0, 4.0, 0.0]  # one centre 5 units off
    pred[2, :3, :3] = gt[3, :3, :3]  # rotations do not enter ATE
    out = ate(pred, gt, align="none")
    np.testing.assert_allclose(out["errors"], [0, 0, 0, 0, 0, 5, 0, 0], atol=1e-12)
    assert out["rmse"] == pytest.approx(np.sqrt(25 / 8))
    assert out["mean"] == pytest.approx(5 / 8)
    assert out["median"] == 0.0 and out["max"] == pytest.approx(5.0)


def test_ate_sim3_hand_computed_case():
    # pred centres ±x, ±y, ±z; gt = pred + e with e equal within each ± pair and summing to zero.
    # Then Σ e_i = 0 and Σ e_i c_iᵀ = 0, so Umeyama's cross-covariance is pred's own (symmetric,
    # positive): the optimal similarity is the identity and the ATE is just |e_i|.
    axes = np.eye(3)
    pred_c = np.concatenate([axes, -axes])  # (6, 3)
    v = np.array([[0.0, 0.1, 0.0], [0.0, -0.1, 0.0], [0.0, 0.0, 0.0]])  # per-axis offsets, Σ v = 0
    gt_c = pred_c + np.concatenate([v, v])
    pred = np.stack([_pose(np.eye(3), c) for c in pred_c])
    gt = np.stack([_pose(np.eye(3), c) for c in gt_c])
    out = ate(pred, gt, align="sim3")
    assert out["scale"] == pytest.approx(1.0)
    np.testing.assert_allclose(out["rotation"], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(out["errors"], [0.1, 0.1, 0, 0.1, 0.1, 0], atol=1e-12)
    assert out["rmse"] == pytest.approx(np.sqrt(4 * 0.01 / 6))
    # A pure shift of every prediction is absorbed by the alignment, not by align='none'.
    shifted = pred.copy()
    shifted[:, :3, 3] += [10.0, -3.0, 2.0]
    assert ate(shifted, gt)["rmse"] == pytest.approx(out["rmse"])
    assert ate(shifted, pred, align="none")["rmse"] == pytest.approx(np.sqrt(113.0))


def test_ate_handles_a_pure_rotation_prediction(rng):
    gt = _trajectory(rng, 6)
    pred = gt.copy()
    pred[:, :3, 3] = 0.0  # all centres coincide (a tripod pan): best fit is gt's centroid
    out = ate(pred, gt)
    expect = np.linalg.norm(gt[:, :3, 3] - gt[:, :3, 3].mean(0), axis=1)
    np.testing.assert_allclose(out["errors"], expect, atol=1e-12)


def test_rpe_constant_rotation_drift():
    theta = np.deg2rad(2.0)
    D = _pose(Rotation.from_rotvec([0, 0, theta]).as_matrix(), np.zeros(3))
    # gt steps: rotate 5° about z and move 1 along z, so gt steps commute with the drift D.
    step = _pose(Rotation.from_rotvec([0, 0, np.deg2rad(5.0)]).as_matrix(), np.array([0, 0, 1.0]))
    gt, pred = [np.eye(4)], [np.eye(4)]
    for _ in range(9):
        gt.append(gt[-1] @ step)
        pred.append(pred[-1] @ step @ D)
    gt, pred = np.stack(gt), np.stack(pred)
    out = rpe(pred, gt, delta=1, align="none")
    assert out["pairs"] == 9
    np.testing.assert_allclose(out["rot_errors_deg"], 2.0, atol=1e-9)
    assert out["rot_rmse_deg"] == pytest.approx(2.0) and out["rot_mean_deg"] == pytest.approx(2.0)
    assert out["trans_rmse"] < 1e-12
    out2 = rpe(pred, gt, delta=2, align="se3")
    np.testing.assert_allclose(out2["rot_errors_deg"], 4.0, atol=1e-9)
    assert out2["pairs"] == 8


def test_rpe_scale_error_and_sim3_alignment(rng):
    gt = _trajectory(rng, 10)
    k = 3.0
    R = Rotation.random(random_state=5).as_matrix()
    pred = _apply_sim3(gt, k, R, np.array([1.0, 1.0, 1.0]))
    rel_t = np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1)  # gt step lengths
    out = rpe(pred, gt, align="none")
    np.testing.assert_allclose(out["trans_errors"], (k - 1) * rel_t, rtol=1e-9)
    assert out["rot_rmse_deg"] < 1e-5
    aligned = rpe(pred, gt, align="sim3")
    assert aligned["scale"] == pytest.approx(1 / k)
    assert aligned["trans_rmse"] < 1e-9


def test_rotation_angle_small_and_large():
    for deg in (1e-6, 0.5, 90.0, 179.0):
        R = Rotation.from_rotvec(np.deg2rad(deg) * np.array([0.6, 0.0, 0.8])).as_matrix()
        assert rotation_angle_deg(R) == pytest.approx(deg, rel=1e-8)


def test_pose_metrics_reject_bad_input(rng):
    gt = _trajectory(rng, 5)
    bad = gt.copy()
    bad[2, 0, 3] = np.nan
    with pytest.raises(ValueError, match="pred_c2w contains non-finite"):
        ate(bad, gt)
    with pytest.raises(ValueError, match="same shape"):
        ate(gt[:4], gt)
    with pytest.raises(ValueError, match="align"):
        ate(gt, gt, align="sim2")
    with pytest.raises(ValueError, match="delta"):
        rpe(gt, gt, delta=5)
    with pytest.raises(ValueError, match="delta"):
        rpe(gt, gt, delta=0)
    scaled = gt.copy()
    scaled[:, :3, :3] *= 2.0
    with pytest.raises(ValueError, match="proper rotations"):
        rpe(scaled, gt)


# ---------------------------------------------------------------------------------------------- depth


def test_affine_prediction_is_aligned_exactly(rng):
    gt = rng.uniform(1.0, 10.0, size=(6, 7))
    a, b = 0.3, -0.2
    scale, shift = align_depth_scale_shift(a * gt + b, gt)
    assert scale == pytest.approx(1 / a) and shift == pytest.approx(-b / a)
    out = depth_metrics(a * gt + b, gt)
    assert out["abs_rel"] < 1e-12 and out["delta1"] == 1.0 and out["valid_pixels"] == 42


def test_disparity_space_alignment(rng):
    gt = rng.uniform(1.0, 10.0, size=(5, 5))
    a, b = 2.0, 0.1
    pred = 1.0 / (a / gt + b)  # an affine map of disparity
    scale, shift = align_depth_scale_shift(pred, gt, space="disparity")
    assert scale == pytest.approx(1 / a) and shift == pytest.approx(-b / a)
    out = depth_metrics(pred, gt, space="disparity")
    assert out["abs_rel"] < 1e-12 and out["delta1"] == 1.0


def test_scale_shift_matches_polyfit_on_noisy_data(rng):
    gt = rng.uniform(1.0, 5.0, size=(8, 8))
    pred = 0.5 * gt + 1.0 + 0.1 * rng.normal(size=gt.shape)
    gt[0, :3] = 0.0  # unknown ground truth
    valid = gt > 0
    slope, intercept = np.polyfit(pred[valid], gt[valid], 1)
    scale, shift = align_depth_scale_shift(pred, gt)
    assert scale == pytest.approx(slope, rel=1e-10) and shift == pytest.approx(intercept, rel=1e-10)


def test_hand_built_abs_rel_and_delta():
    gt = np.full(16, 2.0)
    pred = np.concatenate([np.full(4, 2.0), np.full(4, 2.4), np.full(4, 4.0), np.full(4, 1.0)])
    # errors: 0 ×4, 0.2 ×4, 1.0 ×4 (factor 2 up), 0.5 ×4 (factor 2 down)
    assert abs_rel(pred, gt) == pytest.approx((4 * 0.2 + 4 * 1.0 + 4 * 0.5) / 16)
    assert delta_accuracy(pred, gt) == pytest.approx(0.5)  # ratio 1.2 passes, ratio 2 fails
    assert delta_accuracy(pred, gt, threshold=2.5) == 1.0
    out = depth_metrics(pred, gt, align="none")
    assert out["delta1"] == pytest.approx(0.5) and out["scale"] == 1.0 and out["shift"] == 0.0


def test_scale_only_alignment():
    gt = np.array([1.0, 2.0, 3.0, 4.0])
    out = depth_metrics(gt / 3.0, gt, align="scale")
    assert out["scale"] == pytest.approx(3.0) and out["shift"] == 0.0 and out["abs_rel"] < 1e-12


def test_masks_and_unknown_gt_are_respected():
    gt = np.array([1.0, 2.0, 0.0, np.nan, 5.0, 6.0])
    pred = np.array([1.0, 2.0, 99.0, 7.0, -50.0, 1e6])
    mask = np.array([True, True, True, True, False, False])
    assert abs_rel(pred, gt, mask) == 0.0  # only pixels 0 and 1 count
    assert delta_accuracy(pred, gt, mask=mask) == 1.0
    assert depth_metrics(pred, gt, mask, align="none")["valid_pixels"] == 2


def test_non_positive_predictions_fail_delta():
    gt = np.array([1.0, 1.0, 1.0, 1.0])
    assert delta_accuracy(np.array([1.0, -1.0, 0.0, 1.1]), gt) == 0.5


def test_constant_prediction_gets_best_constant():
    gt = np.array([1.0, 2.0, 6.0])
    assert align_depth_scale_shift(np.full(3, 4.0), gt) == (0.0, pytest.approx(3.0))


def test_depth_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        abs_rel(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="no valid pixels"):
        depth_metrics(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="no valid pixels"):
        abs_rel(np.ones(3), np.ones(3), mask=np.zeros(3, bool))
    with pytest.raises(ValueError, match="mask must be boolean"):
        abs_rel(np.ones(3), np.ones(3), mask=np.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        abs_rel(np.array([1.0, np.inf]), np.ones(2))
    with pytest.raises(ValueError, match="align"):
        depth_metrics(np.ones(3), np.ones(3), align="median")
    with pytest.raises(ValueError, match="disparity"):
        align_depth_scale_shift(np.array([1.0, -1.0]), np.ones(2), space="disparity")
