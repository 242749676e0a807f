"""Image metrics for completion quality: PSNR and SSIM, whole-image and masked (numpy, float64).

SSIM follows Wang, Bovik, Sheikh & Simoncelli 2004 ("Image quality assessment: from error visibility to
structural similarity", IEEE TIP 13(4)): local statistics under an 11×11 circular-symmetric Gaussian
window (σ = 1.5), K1 = 0.01, K2 = 0.03, C1 = (K1·L)², C2 = (K2·L)² with L the data range, population
(not sample) covariances. The window is applied separably with symmetric reflection at the borders; the
whole-image mean skips the 5-pixel border where the window hangs over the edge, exactly as scikit-image's
`structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)` does, so the
two agree to float precision. Colour images are scored per channel and the channels averaged.

Masked variants score only the pixels a boolean mask selects (the holes a warp left, for instance): PSNR
from the mean squared error over those pixels, SSIM as the mean of the SSIM map over them. The map itself
is computed on the whole image (the window needs context around a hole's rim), and the mask is *not*
cropped by the border margin: holes often touch the image edge, and dropping them would bias the score.
"""

from __future__ import annotations

import math

import numpy as np

SSIM_K1 = 0.01  # Wang et al. 2004, luminance stabiliser
SSIM_K2 = 0.03  # Wang et al. 2004, contrast stabiliser
SSIM_SIGMA = 1.5  # Gaussian window standard deviation in pixels
SSIM_RADIUS = 5  # window half-size: 11×11 (scipy/skimage: int(3.5·σ + 0.5) = 5)


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two images of one shape, (H, W) or (H, W, C), and return them as float64."""
    a = np.asarray(pred, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"pred and target must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3) or min(a.shape[:2]) < 1:
        raise ValueError(f"pred must be an image (H, W) or (H, W, C), got shape {a.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("pred and target must be finite")
    return a, b


def _check_mask(mask: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray:
    """A boolean (H, W) mask, all True when None."""
    if mask is None:
        return np.ones(hw, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
    if mask.shape != hw:
        raise ValueError(f"mask must have the image's (H, W) = {hw}, got {mask.shape}")
    return mask


def _check_range(data_range: float) -> float:
    if not (isinstance(data_range, int | float) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return float(data_range)


def masked_mse(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over the masked pixels (all channels). NaN when the mask is empty."""
    a, b = _pair(pred, target)
    m = _check_mask(mask, a.shape[:2])
    if not m.any():
        return float("nan")
    return float(np.mean((a[m] - b[m]) ** 2))


def psnr_from_mse(mse: float, data_range: float = 255.0) -> float:
    """10·log10(L² / MSE) in dB; +inf for MSE 0 (identical pixels), NaN for NaN (nothing scored)."""
    data_range = _check_range(data_range)
    if math.isnan(mse):
        return float("nan")
    if mse < 0:
        raise ValueError(f"mse must be >= 0, got {mse}")
    if mse == 0:
        return float("inf")
    return float(10.0 * math.log10(data_range**2 / mse))


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
         data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio over the masked pixels (whole image when mask is None).

    pred, target: (H, W) or (H, W, C), any numeric dtype (uint8 images: data_range 255). Identical pixels
    give +inf; an empty mask gives NaN (nothing to score). Callers that aggregate cap inf themselves.
    """
    return psnr_from_mse(masked_mse(pred, target, mask), data_range)


def gaussian_window(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
    """Normalised 1-D Gaussian taps (2·radius + 1,); the 2-D window is its outer product with itself."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _blur(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable correlation of (H, W, C) with `taps` along H then W, symmetric-reflect borders.

    numpy's 'symmetric' pad (d c b a | a b c d) is scipy.ndimage's 'reflect', skimage's choice.
    """
    r = taps.size // 2
    H, W = img.shape[:2]
    p = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="symmetric")  # (H + 2r, W, C)
    out = sum(w * p[k : k + H] for k, w in enumerate(taps))  # (H, W, C)
    p = np.pad(out, ((0, 0), (r, r), (0, 0)), mode="symmetric")  # (H, W + 2r, C)
    return sum(w * p[:, k : k + W] for k, w in enumerate(taps))  # (H, W, C)


def ssim_map(pred: np.ndarray, target: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004, eq. 13 with Gaussian-weighted local statistics), channel-averaged.

    pred, target: (H, W) or (H, W, C). Returns (H, W) float64.
    """
    a, b = _pair(pred, target)
    L = _check_range(data_range)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]  # (H, W, 1)
    taps = gaussian_window()
    mu_a, mu_b = _blur(a, taps), _blur(b, taps)  # (H, W, C) local means
    var_a = _blur(a * a, taps) - mu_a**2  # population variances: weights sum to 1
    var_b = _blur(b * b, taps) - mu_b**2
    cov = _blur(a * b, taps) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * L) ** 2, (SSIM_K2 * L) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean(axis=-1)  # (H, W)


def ssim(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
         data_range: float = 255.0) -> float:
    """Mean SSIM. Without a mask: over the interior (border of SSIM_RADIUS pixels skipped, as skimage);
    with a mask: over the masked pixels, border included (see the module note). NaN for an empty mask.

    Images smaller than the 11×11 window have no interior; their unmasked score averages every pixel.
    """
    s = ssim_map(pred, target, data_range)  # (H, W)
    if mask is not None:
        m = _check_mask(mask, s.shape)
        return float(s[m].mean()) if m.any() else float("nan")
    r = SSIM_RADIUS
    inner = s[r:-r, r:-r] if min(s.shape) > 2 * r else s
    return float(inner.mean())
