"""Alignment and evaluation metrics for cameras and depth (numpy, float64).

Cameras: Umeyama's closed-form similarity fit (Umeyama 1991, "Least-squares estimation of
transformation parameters between two point patterns", IEEE TPAMI 13(4)), then the absolute and
relative trajectory errors of Sturm et al. 2012 ("A benchmark for the evaluation of RGB-D SLAM
systems", IROS; the TUM RGB-D benchmark). Poses are camera-to-world 4x4 in any consistent axes.

Depth: least-squares scale (and shift) alignment of a relative prediction to ground truth, as in
MiDaS (Ranftl et al. 2020), then AbsRel and the δ < 1.25 accuracy (Eigen et al. 2014).
Ground-truth depth 0 (or non-finite) means unknown and is never scored.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

PoseAlign = Literal["sim3", "se3", "none"]
DepthAlign = Literal["scale_shift", "scale", "none"]
DepthSpace = Literal["depth", "disparity"]

# Relative size below which a singular value counts as zero (rank tests for degenerate point sets).
_RANK_TOL = 1e-10


# ----------------------------------------------------------------------------------------------
# Similarity alignment


def _check_points(name: str, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{name} contains non-finite values")
    return pts


def umeyama_sim3(
    src: np.ndarray, dst: np.ndarray, with_scale: bool = True, allow_degenerate: bool = False
) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising Σ‖dst − (s·R·src + t)‖² (Umeyama 1991, Lemma + Theorem).

    src, dst: (N, 3) with N >= 3. Returns s (1.0 when with_scale=False), R (3, 3) a proper rotation
    (the reflection case is fixed by the sign matrix S of the paper), t (3,).

    The fit is unique only when the cross-covariance has rank >= 2. By default degenerate inputs raise
    ValueError: src points all coincident (scale undefined) or collinear, likewise dst (rotation about
    the line undefined). With allow_degenerate=True one of the equally optimal solutions is returned
    instead: for collinear points the SVD's choice of rotation about the line (every choice gives the
    same residual), for coincident src points s = 1, R = I and t moving src onto dst's centroid.
    """
    src, dst = _check_points("src", src), _check_points("dst", dst)
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must have the same shape, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    if n < 3:
        raise ValueError(f"umeyama_sim3 needs at least 3 point pairs, got N={n}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    xc, yc = src - mu_src, dst - mu_dst  # (N, 3)
    var_src = float((xc**2).sum() / n)  # σ²_x of the paper
    extent = max(np.abs(xc).max(), np.abs(yc).max(), 1e-300)
    if var_src <= (_RANK_TOL * extent) ** 2:
        if not allow_degenerate:
            raise ValueError("src points all coincide: the similarity is undefined")
        return 1.0, np.eye(3), mu_dst - mu_src
    sigma = yc.T @ xc / n  # (3, 3) cross-covariance Σ_xy (dst by src)
    U, D, Vt = np.linalg.svd(sigma)
    if D[1] <= _RANK_TOL * D[0] and not allow_degenerate:
        raise ValueError(
            "src/dst points are collinear (or dst coincide): the rotation is not unique; "
            "pass allow_degenerate=True to accept one of the optimal solutions"
        )
    S = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:  # reflection: flip the weakest axis
        S[2] = -1.0
    R = U @ np.diag(S) @ Vt
    s = float((D * S).sum() / var_src) if with_scale else 1.0
    t = mu_dst - s * R @ mu_src
    return s, R, t


# ----------------------------------------------------------------------------------------------
# Trajectory errors


def _check_poses(pred_c2w: np.ndarray, gt_c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred_c2w, dtype=np.float64)
    gt = np.asarray(gt_c2w, dtype=np.float64)
    for name, P in (("pred_c2w", pred), ("gt_c2w", gt)):
        if P.ndim != 3 or P.shape[1:] != (4, 4):
            raise ValueError(f"{name} must have shape (N, 4, 4), got {P.shape}")
        if not np.isfinite(P).all():
            raise ValueError(f"{name} contains non-finite values")
        if not np.allclose(P[:, 3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
            raise ValueError(f"{name} bottom rows must be [0, 0, 0, 1]")
        RtR = np.einsum("nji,njk->nik", P[:, :3, :3], P[:, :3, :3])
        if not np.allclose(RtR, np.eye(3), atol=1e-4) or (np.linalg.det(P[:, :3, :3]) <= 0).any():
            raise ValueError(f"{name} rotation blocks must be proper rotations (orthonormal, det +1)")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_c2w and gt_c2w must have the same shape, got {pred.shape} and {gt.shape}")
    if pred.shape[0] < 1:
        raise ValueError("pred_c2w and gt_c2w must hold at least one pose")
    return pred, gt


def _align_centres(pred_c: np.ndarray, gt_c: np.ndarray, align: str) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity taking predicted camera centres onto ground truth for the chosen alignment."""
    if align == "none":
        return 1.0, np.eye(3), np.zeros(3)
    if align not in ("sim3", "se3"):
        raise ValueError(f"align must be 'sim3', 'se3' or 'none', got {align!r}")
    # Degenerate trajectories (a tripod pan, a straight dolly) are common; every optimal alignment
    # gives the same centre residuals, so the metrics stay well defined.
    return umeyama_sim3(pred_c, gt_c, with_scale=align == "sim3", allow_degenerate=True)


def ate(pred_c2w: np.ndarray, gt_c2w: np.ndarray, align: PoseAlign = "sim3") -> dict:
    """Absolute trajectory error (Sturm et al. 2012) on camera centres.

    Predicted centres are aligned to ground truth by Umeyama (Sim(3) by default, SE(3), or none), then
    e_i = ‖s·R·c_pred_i + t − c_gt_i‖. pred_c2w, gt_c2w: (N, 4, 4); N >= 3 unless align='none'.
    Returns dict(rmse, mean, median, max, errors (N,), scale, rotation (3, 3), translation (3,)).
    """
    pred, gt = _check_poses(pred_c2w, gt_c2w)
    pred_c, gt_c = pred[:, :3, 3], gt[:, :3, 3]  # (N, 3) camera centres
    s, R, t = _align_centres(pred_c, gt_c, align)
    errors = np.linalg.norm(s * pred_c @ R.T + t - gt_c, axis=1)  # (N,)
    return {
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "mean": float(errors.mean()),
        "median": float(np.median(errors)),
        "max": float(errors.max()),
        "errors": errors,
        "scale": s,
        "rotation": R,
        "translation": t,
    }


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Geodesic angle of rotation matrices (..., 3, 3) in degrees.

    Uses atan2(‖axis·sinθ‖, cosθ) rather than arccos of the trace, which loses half the digits
    near 0° — exactly where good predictions live.
    """
    R = np.asarray(R, dtype=np.float64)
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    w = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = np.linalg.norm(w, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def _inv_rigid(P: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4x4 poses (..., 4, 4)."""
    out = np.zeros_like(P)
    Rt = np.swapaxes(P[..., :3, :3], -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, P[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def rpe(pred_c2w: np.ndarray, gt_c2w: np.ndarray, delta: int = 1, align: PoseAlign = "sim3") -> dict:
    """Relative pose error over frame pairs (i, i+delta) (Sturm et al. 2012).

    E_i = (Q_i⁻¹ Q_{i+Δ})⁻¹ (P_i⁻¹ P_{i+Δ}) with Q ground truth and P prediction. Relative motions do
    not see a global rigid transform, so alignment only matters through its scale: with 'sim3' the
    predicted translations are first multiplied by the Umeyama scale of the camera centres; 'se3' and
    'none' leave them as they are.
    Returns dict(trans_rmse, trans_mean, rot_rmse_deg, rot_mean_deg, trans_errors (M,),
    rot_errors_deg (M,), scale, pairs=M).
    """
    pred, gt = _check_poses(pred_c2w, gt_c2w)
    if isinstance(delta, bool) or not isinstance(delta, (int, np.integer)) or delta < 1:
        raise ValueError(f"delta must be a positive integer, got {delta!r}")
    if delta >= pred.shape[0]:
        raise ValueError(f"delta={delta} leaves no frame pairs in a trajectory of {pred.shape[0]} poses")
    if align not in ("sim3", "se3", "none"):
        raise ValueError(f"align must be 'sim3', 'se3' or 'none', got {align!r}")
    s = _align_centres(pred[:, :3, 3], gt[:, :3, 3], align)[0] if align == "sim3" else 1.0
    pred = pred.copy()
    pred[:, :3, 3] *= s
    rel_pred = _inv_rigid(pred[:-delta]) @ pred[delta:]  # (M, 4, 4)
    rel_gt = _inv_rigid(gt[:-delta]) @ gt[delta:]  # (M, 4, 4)
    E = _inv_rigid(rel_gt) @ rel_pred  # (M, 4, 4)
    trans = np.linalg.norm(E[:, :3, 3], axis=1)  # (M,)
    rot = rotation_angle_deg(E[:, :3, :3])  # (M,)
    return {
        "trans_rmse": float(np.sqrt(np.mean(trans**2))),
        "trans_mean": float(trans.mean()),
        "rot_rmse_deg": float(np.sqrt(np.mean(rot**2))),
        "rot_mean_deg": float(rot.mean()),
        "trans_errors": trans,
        "rot_errors_deg": rot,
        "scale": s,
        "pairs": int(trans.shape[0]),
    }


# ----------------------------------------------------------------------------------------------
# Depth


def _depth_inputs(pred, gt, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate shapes and return pred, gt (float64) and the boolean valid-pixel mask."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(gt) & (gt > 0)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != gt.shape:
            raise ValueError(f"mask must have the shape of gt {gt.shape}, got {mask.shape}")
        if mask.dtype != np.bool_:
            raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
        valid &= mask
    if not valid.any():
        raise ValueError("no valid pixels: gt must be finite and > 0 somewhere inside the mask")
    if not np.isfinite(pred[valid]).all():
        raise ValueError("pred contains non-finite values at valid pixels")
    return pred, gt, valid


def _fit_scale_shift(x: np.ndarray, y: np.ndarray, with_shift: bool) -> tuple[float, float]:
    """Least squares y ≈ s·x + t (t = 0 without shift) on 1-D samples.

    A constant x (no information on the scale) gives s = 0 and t = mean(y), the best constant; with no
    shift, x ≡ 0 gives s = 0.
    """
    if not with_shift:
        xx = float(x @ x)
        return (float(x @ y) / xx if xx > 0 else 0.0), 0.0
    mx, my = x.mean(), y.mean()
    xc = x - mx
    var = float(xc @ xc)
    if var <= (_RANK_TOL * max(np.abs(x).max(), 1e-300)) ** 2 * x.size:
        return 0.0, float(my)
    s = float(xc @ (y - my)) / var
    return s, float(my - s * mx)


def _to_space(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, space: str
) -> tuple[np.ndarray, np.ndarray]:
    """Valid samples of pred and gt in the space where the fit is made."""
    if space == "depth":
        return pred[valid], gt[valid]
    if space == "disparity":
        if (pred[valid] <= 0).any():
            raise ValueError("pred must be > 0 at valid pixels to be aligned in disparity space")
        return 1.0 / pred[valid], 1.0 / gt[valid]
    raise ValueError(f"space must be 'depth' or 'disparity', got {space!r}")


def align_depth_scale_shift(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, space: DepthSpace = "depth"
) -> tuple[float, float]:
    """Least-squares (scale, shift) with scale·pred + shift ≈ gt over valid pixels (MiDaS-style).

    pred, gt: same shape (any); mask: optional boolean of that shape. Valid = finite gt > 0 inside the
    mask. With space='disparity' the fit is scale/pred + shift ≈ 1/gt and the returned pair lives in
    disparity space.
    """
    pred, gt, valid = _depth_inputs(pred, gt, mask)
    x, y = _to_space(pred, gt, valid, space)
    return _fit_scale_shift(x, y, with_shift=True)


def abs_rel(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute relative error mean(|pred − gt| / gt) over valid pixels (Eigen et al. 2014)."""
    pred, gt, valid = _depth_inputs(pred, gt, mask)
    return float(np.mean(np.abs(pred[valid] - gt[valid]) / gt[valid]))


def delta_accuracy(
    pred: np.ndarray, gt: np.ndarray, threshold: float = 1.25, mask: np.ndarray | None = None
) -> float:
    """Fraction of valid pixels with max(pred/gt, gt/pred) < threshold (Eigen et al. 2014).

    Non-positive predictions are counted as failures.
    """
    if not threshold > 1.0:
        raise ValueError(f"threshold must be > 1, got {threshold}")
    pred, gt, valid = _depth_inputs(pred, gt, mask)
    p, g = pred[valid], gt[valid]
    with np.errstate(divide="ignore"):
        ratio = np.where(p > 0, np.maximum(p / g, g / np.where(p > 0, p, 1.0)), np.inf)
    return float(np.mean(ratio < threshold))


def depth_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray | None = None,
    align: DepthAlign = "scale_shift",
    space: DepthSpace = "depth",
) -> dict:
    """AbsRel and δ1 after aligning pred to gt (scale+shift, scale only, or none).

    With space='disparity' the fit is made on inverse depth and the aligned disparity is floored at
    1/max(valid gt) before inversion (as in MiDaS' evaluation), so no aligned depth exceeds the
    farthest ground truth or turns negative.
    Returns dict(abs_rel, delta1, scale, shift, valid_pixels).
    """
    if align not in ("scale_shift", "scale", "none"):
        raise ValueError(f"align must be 'scale_shift', 'scale' or 'none', got {align!r}")
    pred, gt, valid = _depth_inputs(pred, gt, mask)
    s, t = 1.0, 0.0
    aligned = pred
    if align != "none":
        x, y = _to_space(pred, gt, valid, space)
        s, t = _fit_scale_shift(x, y, with_shift=align == "scale_shift")
        aligned = np.zeros_like(pred)
        if space == "depth":
            aligned[valid] = s * x + t
        else:
            aligned[valid] = 1.0 / np.maximum(s * x + t, 1.0 / gt[valid].max())
    return {
        "abs_rel": abs_rel(aligned, gt, valid),
        "delta1": delta_accuracy(aligned, gt, 1.25, valid),
        "scale": s,
        "shift": t,
        "valid_pixels": int(valid.sum()),
    }
