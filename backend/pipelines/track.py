"""Region tracking with dense optical flow: where the user's edit of frame 0 lives in every later frame.

The region is carried frame to frame (t−1 → t) by *backward* mapping: every pixel p of frame t looks up
the region at p + b(p) in frame t−1, where b is the flow from frame t to frame t−1, so every pixel gets
a value and the region never tears into splat holes. Flow comes from OpenCV's DIS optical flow
(Kroeger et al., "Fast Optical Flow using Dense Inverse Search", ECCV 2016) or Farnebäck's polynomial
expansion ("Two-Frame Motion Estimation Based on Polynomial Expansion", SCIA 2003).

Where the flow is unreliable — occlusions, disocclusions, textureless patches — forward and backward
flows disagree (the forward-backward consistency check of Sundaram, Brox & Keutzer, "Dense Point
Trajectories by GPU-Accelerated Large Displacement Optical Flow", ECCV 2010). Those pixels are marked
uncertain and, near the region, included in it: for an edit, masking too much costs a little
inpainting, masking too little leaves a stale copy of the unedited content.

Pixel coordinates here are OpenCV's (pixel centres at integers), used only between flow and remap.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .engine import Progress, no_progress

FLOW_METHODS = ("dis", "farneback")


@dataclass
class TrackConfig:
    """How a region is tracked through a clip."""

    method: str = "dis"  # "dis" (DIS optical flow, medium preset) or "farneback"
    fb_tolerance: float = 1.0  # px: forward-backward error above this (plus the relative part) is uncertain
    fb_relative: float = 0.05  # the tolerance grows by this fraction of the two flows' magnitudes
    uncertain_margin: int = 3  # px: uncertain pixels this close to the warped region join it
    max_side: int = 640  # flow is computed on frames shrunk so their longer side is at most this

    def validate(self) -> None:
        if self.method not in FLOW_METHODS:
            raise ValueError(f"TrackConfig.method must be one of {FLOW_METHODS}, got {self.method!r}")
        for name in ("fb_tolerance", "fb_relative"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"TrackConfig.{name} must be finite and >= 0, got {v!r}")
        if self.uncertain_margin < 0:
            raise ValueError(f"TrackConfig.uncertain_margin must be >= 0, got {self.uncertain_margin}")
        if self.max_side < 16:
            raise ValueError(f"TrackConfig.max_side must be >= 16, got {self.max_side}")


def _disk(radius: int) -> np.ndarray:
    """A (2r+1)² elliptical structuring element."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a (H, W) or (F, H, W) bool mask by `radius` pixels (a disk); radius 0 returns a copy."""
    if radius < 0:
        raise ValueError(f"dilate radius must be >= 0, got {radius}")
    if radius == 0:
        return mask.copy()
    if mask.ndim == 3:
        return np.stack([dilate_mask(m, radius) for m in mask])
    return cv2.dilate(mask.astype(np.uint8), _disk(radius)).astype(bool)


def edit_region(original: np.ndarray, edited: np.ndarray, threshold: float = 12.0, radius: int = 1) -> np.ndarray:
    """Pixels the user changed: max over channels of |edited − original| > threshold (0..255 units).

    A morphological opening drops isolated pixels (compression noise, dithering) and a closing fills
    pinholes inside the edit (Serra, "Image Analysis and Mathematical Morphology", 1982). (H, W) bool.
    """
    if original.shape != edited.shape:
        raise ValueError(f"edited must have the video's frame shape {original.shape}, got {edited.shape}")
    diff = np.abs(edited.astype(np.int16) - original.astype(np.int16)).max(axis=-1)  # (H, W)
    region = (diff > threshold).astype(np.uint8)
    if radius > 0:
        region = cv2.morphologyEx(region, cv2.MORPH_OPEN, _disk(radius))
        region = cv2.morphologyEx(region, cv2.MORPH_CLOSE, _disk(radius))
    return region.astype(bool)


def _gray(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (h, w) uint8 luminance at `size` (w, h order of OpenCV)."""
    g = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, size, interpolation=cv2.INTER_AREA) if g.shape[::-1] != size else g


def dense_flow(src: np.ndarray, dst: np.ndarray, cfg: TrackConfig | None = None) -> np.ndarray:
    """Flow (H, W, 2) float32 (dx, dy) from `src` to `dst` (uint8 RGB): src(p) ≈ dst(p + flow(p)).

    Frames larger than cfg.max_side are shrunk for the estimate and the flow is scaled back up.
    """
    cfg = cfg or TrackConfig()
    H, W = src.shape[:2]
    s = min(1.0, cfg.max_side / max(H, W))
    size = (max(8, round(W * s)), max(8, round(H * s)))  # (w, h)
    a, b = _gray(src, size), _gray(dst, size)
    if cfg.method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(a, b, None)
    else:
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 5, 5, 1.1, 0)
    if size != (W, H):
        flow = cv2.resize(flow, (W, H), interpolation=cv2.INTER_LINEAR)
        flow[..., 0] *= W / size[0]
        flow[..., 1] *= H / size[1]
    return flow.astype(np.float32)


def _sample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image(p + flow(p)) for every pixel p: bilinear, zero outside the frame."""
    H, W = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_mask(mask: np.ndarray, back: np.ndarray) -> np.ndarray:
    """Carry a (H, W) region of frame t−1 to frame t with `back`, the flow from t to t−1.

    Backward mapping: pixel p of frame t takes the bilinear region value at p + back(p). A float
    mask (coverage in [0, 1]) comes back as float: chains keep sub-pixel positions instead of rounding
    every step (1.5 px a frame would otherwise drift to 1 or 2). A bool mask comes back as bool,
    thresholded at one half, so a pure translation moves it without bias.
    """
    out = _sample(mask.astype(np.float32), back)
    return out >= 0.5 if mask.dtype == np.bool_ else out


def forward_backward_error(forward: np.ndarray, back: np.ndarray) -> np.ndarray:
    """|back(p) + forward(p + back(p))| per pixel p of frame t (H, W): zero for consistent flows.

    forward: flow from t−1 to t; back: flow from t to t−1, both (H, W, 2).
    """
    return np.linalg.norm(back + _sample(forward, back), axis=-1)


def _inside(back: np.ndarray) -> np.ndarray:
    """Pixels whose back-flow lands inside frame t−1 (the others are newly in view, not uncertain)."""
    H, W = back.shape[:2]
    xs, ys = np.meshgrid(np.arange(W), np.arange(H))
    x, y = xs + back[..., 0], ys + back[..., 1]
    return (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)


def track_step(prev: np.ndarray, cur: np.ndarray, coverage: np.ndarray, cfg: TrackConfig) -> np.ndarray:
    """Region coverage (H, W) float in [0, 1] of frame `prev` carried into frame `cur`; uncertain pixels
    near the region are set to 1. The region is where coverage >= 1/2."""
    back = dense_flow(cur, prev, cfg)  # (H, W, 2): frame t -> t−1
    forward = dense_flow(prev, cur, cfg)  # (H, W, 2): frame t−1 -> t
    warped = warp_mask(coverage, back)  # (H, W) float
    err = forward_backward_error(forward, back)
    tol = cfg.fb_tolerance + cfg.fb_relative * (np.linalg.norm(back, axis=-1) + np.linalg.norm(forward, axis=-1))
    uncertain = (err > tol) & _inside(back)
    near = dilate_mask((warped >= 0.5) | (coverage >= 0.5), cfg.uncertain_margin)  # where it is or just was
    return np.where(uncertain & near, np.float32(1.0), warped)


def track_mask(frames: np.ndarray, mask0: np.ndarray, cfg: TrackConfig | None = None,
               progress: Progress = no_progress) -> np.ndarray:
    """Track a region through a clip: frames (F, H, W, 3) uint8, mask0 (H, W) bool -> (F, H, W) bool.

    Flows are chained frame to frame, so the region follows the content however far it moves; the
    region's coverage is carried as a float between frames and thresholded at one half per frame.
    """
    cfg = cfg or TrackConfig()
    cfg.validate()
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if mask0.shape != frames.shape[1:3]:
        raise ValueError(f"mask0 must have the frame shape {frames.shape[1:3]}, got {mask0.shape}")
    out = np.zeros(frames.shape[:3], bool)  # (F, H, W)
    out[0] = mask0
    coverage = mask0.astype(np.float32)  # (H, W): carried as float so sub-pixel motion accumulates
    for t in range(1, len(frames)):
        progress((t - 1) / max(1, len(frames) - 1), f"tracking frame {t}/{len(frames) - 1}")
        coverage = track_step(frames[t - 1], frames[t], coverage, cfg)
        out[t] = coverage >= 0.5
    return out
