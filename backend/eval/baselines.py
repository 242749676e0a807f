"""Classical baselines that `parallax eval` puts beside the model (OpenCV + numpy).

- Completion: Telea's fast-marching inpainting (Telea 2004, "An image inpainting technique based on the
  fast marching method", J. Graphics Tools 9(1)) of the warped frame's holes, `cv2.INPAINT_TELEA`, radius 3.
- Depth: a constant map. After the per-frame least-squares scale-and-shift alignment of the evaluation a
  constant carries no information on the scale, so the fit returns scale 0 and shift = mean ground-truth
  depth: the baseline *is* "predict the mean depth everywhere" — the floor any depth estimator must clear.
- Cameras: two-view geometry chained over the clip. For each consecutive pair, SIFT features (Lowe 2004)
  matched with the ratio test, an essential matrix by RANSAC around Nistér's five-point solver
  (`cv2.findEssentialMat`) on points normalised with the TRUE intrinsics (the baseline is given K; the
  model is not), and the cheirality check of `cv2.recoverPose`. The essential matrix fixes a translation
  only up to scale, so every step's translation is set to unit length: one global Sim(3) scale cannot fix
  steps whose true lengths differ (acceleration, a pause, a pure rotation), which is this baseline's
  known weakness and is left in the numbers. A pair that fails (too few matches, no essential matrix)
  contributes an identity step, counted in `failures`.

Pixel coordinates are the backend's continuous ones (pixel centre j + 0.5); OpenCV keypoints (integer
centres) are shifted by half a pixel on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TELEA_RADIUS = 3  # pixels of neighbourhood cv2.inpaint considers around each hole pixel


def telea_inpaint(image: np.ndarray, holes: np.ndarray, radius: int = TELEA_RADIUS) -> np.ndarray:
    """Fill `holes` (H, W) bool of `image` (H, W, 3) uint8 by Telea's method; other pixels are unchanged."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {getattr(image, 'shape', type(image))}")
    holes = np.asarray(holes)
    if holes.dtype != np.bool_ or holes.shape != image.shape[:2]:
        raise ValueError(f"holes must be a bool (H, W) = {image.shape[:2]} mask, "
                         f"got {holes.dtype} {holes.shape}")
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    if not holes.any():
        return image.copy()
    # Channel order does not matter: Telea fills each channel from the same neighbourhood weights.
    return cv2.inpaint(np.ascontiguousarray(image), holes.astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)


def constant_depth(shape: tuple[int, ...]) -> np.ndarray:
    """The constant-depth baseline: ones of `shape` (float32). Aligned by scale and shift it becomes the
    mean ground-truth depth of whatever the alignment covers (a frame, or the clip)."""
    return np.ones(shape, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------
# two-view camera baseline


@dataclass
class TwoViewConfig:
    """Knobs of the two-view camera baseline."""

    min_side: int = 480  # upscale frames so the short side has at least this many pixels before SIFT
    ratio: float = 0.8  # Lowe's ratio test threshold (Lowe 2004 proposes 0.8)
    max_features: int = 2000  # SIFT keypoints kept per frame
    threshold_px: float = 0.5  # RANSAC inlier threshold in original-resolution pixels (sub-pixel SIFT)
    min_matches: int = 8  # fewer matches or pose inliers than this is a failed pair


@dataclass
class TwoViewResult:
    """The chained trajectory and how many pairs fell back to an identity step."""

    c2w: np.ndarray  # (F, 4, 4) float64 camera-to-world, frame 0 = identity, unit step lengths
    failures: int  # pairs that contributed an identity step
    inliers: list[int]  # pose inliers per pair (0 for a failure)


def match_features(img0: np.ndarray, img1: np.ndarray, cfg: TwoViewConfig | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """SIFT matches between two (H, W, 3) uint8 RGB frames (ratio test).

    Returns pts0, pts1 (N, 2) float64 in continuous pixel coordinates of the original resolution.
    """
    cfg = cfg or TwoViewConfig()
    H, W = img0.shape[:2]
    scale = max(1.0, cfg.min_side / min(H, W))  # tiny frames give SIFT too few octaves to work with
    size = (round(W * scale), round(H * scale))
    sift = cv2.SIFT_create(nfeatures=cfg.max_features)
    kps, descs = [], []
    for img in (img0, img1):
        gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        if scale > 1.0:
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_CUBIC)
        kp, desc = sift.detectAndCompute(gray, None)
        kps.append(kp)
        descs.append(desc)
    if descs[0] is None or descs[1] is None or len(kps[0]) < 2 or len(kps[1]) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(descs[0], descs[1], k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < cfg.ratio * p[1].distance]
    # OpenCV keypoints: integer pixel centres at the upscaled size -> continuous at the original size.
    sx, sy = size[0] / W, size[1] / H
    pts0 = np.array([kps[0][m.queryIdx].pt for m in good], dtype=np.float64).reshape(-1, 2) + 0.5
    pts1 = np.array([kps[1][m.trainIdx].pt for m in good], dtype=np.float64).reshape(-1, 2) + 0.5
    return pts0 / [sx, sy], pts1 / [sx, sy]


def _normalise(pts: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel points (N, 2) -> normalised image coordinates K⁻¹[u v 1]ᵀ, (N, 2)."""
    homo = np.concatenate([pts, np.ones((pts.shape[0], 1))], axis=1)  # (N, 3)
    n = homo @ np.linalg.inv(K).T
    return n[:, :2] / n[:, 2:]


def relative_pose_from_matches(pts0: np.ndarray, pts1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                               cfg: TwoViewConfig | None = None) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Relative pose of camera 1 w.r.t. camera 0 from matched pixels (Nistér five-point + RANSAC).

    pts0, pts1: (N, 2) continuous pixel coordinates; K0, K1: (3, 3) each camera's true intrinsics.
    Returns (R, t, inliers) with x_cam1 = R·x_cam0 + t, ‖t‖ = 1, or None when the pair fails.
    """
    cfg = cfg or TwoViewConfig()
    pts0, pts1 = np.asarray(pts0, np.float64), np.asarray(pts1, np.float64)
    if pts0.shape != pts1.shape or pts0.ndim != 2 or pts0.shape[1] != 2:
        raise ValueError(f"pts0 and pts1 must both be (N, 2), got {pts0.shape} and {pts1.shape}")
    if pts0.shape[0] < max(cfg.min_matches, 5):
        return None
    # Normalising with each frame's own K lets the focal length change between frames (zooms).
    n0, n1 = _normalise(pts0, np.asarray(K0, np.float64)), _normalise(pts1, np.asarray(K1, np.float64))
    focal = float(np.mean([K0[0, 0], K0[1, 1], K1[0, 0], K1[1, 1]]))
    E, mask = cv2.findEssentialMat(n0, n1, np.eye(3), method=cv2.RANSAC, prob=0.999,
                                   threshold=cfg.threshold_px / focal)
    if E is None or E.shape[0] < 3:
        return None
    E = E[:3]  # several solutions may come stacked (3k, 3); RANSAC ranks the first best
    inliers, R, t, _ = cv2.recoverPose(E, n0, n1, np.eye(3), mask=mask)
    if inliers < cfg.min_matches or not np.isfinite(R).all() or not np.isfinite(t).all():
        return None
    t = t.reshape(3)
    return R, t / max(np.linalg.norm(t), 1e-12), int(inliers)


def two_view_trajectory(images: np.ndarray, K: np.ndarray, cfg: TwoViewConfig | None = None) -> TwoViewResult:
    """Chain consecutive two-view poses into a camera-to-world trajectory (frame 0 = identity).

    images: (F, H, W, 3) uint8; K: (F, 3, 3) true intrinsics (continuous pixels). Unit-length steps.
    """
    images, K = np.asarray(images), np.asarray(K, np.float64)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (F, H, W, 3) uint8, got {images.dtype} {images.shape}")
    if K.shape != (images.shape[0], 3, 3):
        raise ValueError(f"K must be ({images.shape[0]}, 3, 3), got {K.shape}")
    cfg = cfg or TwoViewConfig()
    c2w = np.tile(np.eye(4), (images.shape[0], 1, 1))  # (F, 4, 4)
    failures, inliers = 0, []
    for i in range(images.shape[0] - 1):
        pts0, pts1 = match_features(images[i], images[i + 1], cfg)
        pose = relative_pose_from_matches(pts0, pts1, K[i], K[i + 1], cfg)
        step = np.eye(4)  # T_{i+1 <- i}: camera i coordinates -> camera i+1 coordinates
        if pose is None:
            failures += 1
            inliers.append(0)
        else:
            step[:3, :3], step[:3, 3] = pose[0], pose[1]
            inliers.append(pose[2])
        c2w[i + 1] = c2w[i] @ np.linalg.inv(step)
    return TwoViewResult(c2w=c2w, failures=failures, inliers=inliers)
