"""Long clips in overlapping windows: sample each window, decode its geometry, chain the windows.

The model sees `bundle.window` frames at a time. Each window is normalised on its own (DESIGN.md,
"Depth and pose normalisation"): its cameras are relative to the window's first camera and its depth
and translations are in units of its own scale s_w (the median depth of that first frame). Windows
overlap by a few frames, and the overlap ties window w to the frame already built from windows
0..w−1 by a similarity transform (Sim(3): scale, rotation, translation):

- depth only (`chain_depth`): the least-squares scale in log-depth over the overlap pixels,
  log s = mean(log D_ref − log D_w) — the scale-invariant log error of Eigen et al. 2014 with its
  free offset solved in closed form;
- cameras (`fit_window_sim3`, `chain_cameras`): Umeyama's closed form (Umeyama 1991) on the overlap
  camera centres when they span a plane with a baseline that is not small against the scene depth,
  otherwise (two overlap frames, a tripod pan, a straight dolly) rotation from the relative poses
  (chordal L2 mean of R_ref·R_wᵀ, Hartley et al. 2013, "Rotation averaging", §5.3), scale from the
  overlap depth (log-depth least squares above) and translation from the centres given both.

Frames in an overlap keep the estimate of the earliest window that saw them. Everything here is
numpy float64 except the model call (`sample_windows`) and the ray decoding (backend/geometry/rays.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from backend.diffusion.masks import all_rgb
from backend.diffusion.scoring import decode_depth
from backend.geometry.align import umeyama_sim3
from backend.geometry.normalize import clip_normalization
from backend.geometry.rays import rays_to_camera, rays_to_camera_known_K
from backend.model.tokenizer import TokenLayout

from .bundle import ModelBundle
from .engine import Progress, complete, no_progress, rays_to_model, resize_depth, rgb_to_model, scale_intrinsics

# Window-unit depths at or beyond this are the decoder's far clamp (sky, background), not geometry:
# they carry no scale information and are left out of the scale fits (the clamp is ≈ 2·10⁴).
FAR_DEPTH = 1e3
# Intrinsics are shared when every per-frame estimate of (fx, fy, cx, cy) lies within this fraction
# of the median focal length from the median (one physical camera seen through noisy ray maps).
K_SHARE_TOL = 0.05
# Umeyama on centres is trusted only when the overlap centres' second singular value is at least this
# fraction of the first (not collinear) ...
UMEYAMA_PLANARITY = 0.2
# ... their RMS spread is at least this fraction of the median overlap depth (a real baseline) ...
UMEYAMA_BASELINE = 0.05
# ... and its scale agrees with the depth scale within this factor (a cross-check of both).
UMEYAMA_SCALE_AGREEMENT = 1.25


@dataclass
class Sim3:
    """x ↦ scale·R·x + t, taking a window's frame into the chained clip's frame."""

    scale: float  # s > 0, multiplies translations and depth
    R: np.ndarray  # (3, 3) proper rotation
    t: np.ndarray  # (3,) translation
    method: str = "identity"  # how it was fitted: identity | umeyama | poses+depth | poses+centres

    def apply_poses(self, c2w: np.ndarray) -> np.ndarray:
        """Camera-to-world poses (n, 4, 4) → the same cameras in the target frame (rotation stays rigid)."""
        out = np.array(c2w, dtype=np.float64)
        out[:, :3, :3] = self.R @ out[:, :3, :3]
        out[:, :3, 3] = self.scale * out[:, :3, 3] @ self.R.T + self.t
        return out


IDENTITY = Sim3(1.0, np.eye(3), np.zeros(3))


@dataclass
class WindowGeometry:
    """One window's decoded sample, in the window's own normalised frame and units."""

    K: np.ndarray  # (n, 3, 3) intrinsics at the working resolution, continuous pixels
    c2w: np.ndarray  # (n, 4, 4) camera-to-world relative to the window's first camera
    depth: np.ndarray  # (n, h, w) z-depth in window units (median of the first frame ≈ 1)


# ----------------------------------------------------------------------------------------------
# the model, window by window


def sample_windows(bundle: ModelBundle, images: np.ndarray, size: tuple[int, int], spans: Sequence[range],
                   *, steps: int, seed: int, sampler: str,
                   progress: Progress = no_progress) -> list[dict[str, Tensor]]:
    """Sample depth and rays for every window with all RGB observed (masks.all_rgb).

    images: (F, H, W, 3) uint8; size: working (h, w). Window w uses seed + w, so a clip is
    deterministic for a given seed. Returns per window {modality: (n, C, h, w)} float32 on the CPU.
    """
    out = []
    for w, span in enumerate(spans):
        rgb = rgb_to_model(images[span.start:span.stop], size, bundle.device)  # (1, n, 3, h, w)
        layout = TokenLayout(len(span), size[0], size[1], bundle.cfg.patch, bundle.cfg.channels)
        mask = all_rgb(layout, 1, device=bundle.device)

        def window_progress(fraction: float, message: str = "", w: int = w) -> None:
            progress((w + fraction) / len(spans), f"window {w + 1}/{len(spans)}: {message}")

        video = complete(bundle, {"rgb": rgb}, mask, steps=steps, seed=seed + w, sampler=sampler,
                         progress=window_progress)
        out.append({m: v[0].float().cpu() for m, v in video.items()})
    return out


def window_targets(K: np.ndarray, c2w: np.ndarray, depth: np.ndarray, spans: Sequence[range],
                   size: tuple[int, int]) -> list[dict[str, Tensor]]:
    """What a perfect model returns for each window of a clip with known geometry.

    K (F, 3, 3) and depth (F, H, W) at the clip's resolution, c2w (F, 4, 4): each window is normalised
    on its own (clip_normalization: its first camera, the median depth of its first frame) exactly as
    the training data are, and its depth code and Plücker rays are built at the working `size`.
    Returns per window {"depth": (n, 1, h, w), "rays": (n, 6, h, w)} float32 — the input of
    `decode_windows`, so the chaining can be checked against ground truth without a trained model.
    """
    out = []
    for span in spans:
        sl = slice(span.start, span.stop)
        d = resize_depth(torch.as_tensor(depth[sl], dtype=torch.float64), size)  # (n, h, w)
        norm = clip_normalization(d, torch.as_tensor(c2w[sl], dtype=torch.float64))
        Kw = scale_intrinsics(K[sl], depth.shape[1:], size)
        rays = rays_to_model(Kw, c2w[sl], norm, size, torch.device("cpu"))[0]  # (n, 6, h, w)
        out.append({"depth": norm.normalize_depth(d)[0].float()[:, None], "rays": rays})
    return out


# ----------------------------------------------------------------------------------------------
# depth: log-depth scale chaining


def depth_code_to_depth(code: Tensor) -> np.ndarray:
    """Model depth codes (n, 1, h, w) or (n, h, w) → depth (n, h, w) float64 in window units."""
    code = code[:, 0] if code.ndim == 4 else code
    return decode_depth(code.double()).cpu().numpy()


def informative_depth(depth: np.ndarray) -> np.ndarray:
    """Pixels whose depth says something about scale: known (finite, > 0) and short of the far clamp."""
    known = np.isfinite(depth) & (depth > 0)
    return known & (depth < FAR_DEPTH * (np.median(depth[known]) if known.any() else 1.0))


def log_depth_scale(ref: np.ndarray, depth: np.ndarray) -> float:
    """s minimising Σ (log ref − log(s·depth))² over pixels valid in both: exp(mean log(ref/depth)).

    ref, depth: same shape; pixels that are unknown (≤ 0, non-finite) or at the far clamp in either
    are left out. Raises ValueError when no pixel is left.
    """
    ref, depth = np.asarray(ref, np.float64), np.asarray(depth, np.float64)
    if ref.shape != depth.shape:
        raise ValueError(f"ref and depth must have the same shape, got {ref.shape} and {depth.shape}")
    valid = informative_depth(ref) & informative_depth(depth)
    if not valid.any():
        raise ValueError("no pixel with valid depth in both windows' overlap: the scale is undefined")
    return float(np.exp(np.mean(np.log(ref[valid]) - np.log(depth[valid]))))


def _overlap(spans: Sequence[range], w: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip frame indices window w shares with the earlier windows, and their positions in window w."""
    done = max(s.stop for s in spans[:w])
    frames = np.arange(spans[w].start, min(done, spans[w].stop))
    if frames.size == 0:
        raise ValueError(f"window {w} ({spans[w]}) does not overlap the earlier windows: cannot chain")
    return frames, frames - spans[w].start


def _check_spans(spans: Sequence[range], items: Sequence, frames: int) -> None:
    if len(spans) != len(items) or not spans:
        raise ValueError(f"need one window result per span, got {len(items)} for {len(spans)} spans")
    covered = sorted(set().union(*(set(s) for s in spans)))
    if covered != list(range(frames)):
        raise ValueError(f"spans must cover frames 0..{frames - 1} exactly")
    if spans[0].start != 0 or any(b.start < a.start for a, b in itertools.pairwise(spans)):
        raise ValueError("spans must start at frame 0 and be in increasing order")


def chain_depth(depths: Sequence[np.ndarray], spans: Sequence[range],
                frames: int) -> tuple[np.ndarray, list[float]]:
    """Chain per-window depth (n_w, h, w) into one clip at the first window's scale.

    Window w's scale relative to the chained clip is the log-depth least-squares fit on its overlap
    with the frames already placed. Returns depth (F, h, w) float64 and each window's scale.
    """
    _check_spans(spans, depths, frames)
    out = np.zeros((frames, *depths[0].shape[1:]), np.float64)
    out[: len(spans[0])] = depths[0]
    scales = [1.0]
    for w in range(1, len(spans)):
        shared, local = _overlap(spans, w)
        s = log_depth_scale(out[shared], depths[w][local])
        new = np.arange(max(s_.stop for s_ in spans[:w]), spans[w].stop)
        out[new] = s * depths[w][new - spans[w].start]
        scales.append(s)
    return out, scales


# ----------------------------------------------------------------------------------------------
# cameras: rays → K, c2w per window; Sim(3) chaining


def _intrinsics_params(K: np.ndarray) -> np.ndarray:
    """(n, 3, 3) → (n, 4) (fx, fy, cx, cy)."""
    return np.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]], axis=-1)


def _intrinsics_matrix(p: np.ndarray) -> np.ndarray:
    """(n, 4) (fx, fy, cx, cy) → zero-skew K (n, 3, 3) with exact zeros below the diagonal."""
    K = np.zeros((p.shape[0], 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = p[:, 0], p[:, 1], p[:, 2], p[:, 3], 1.0
    return K


def _share(p: np.ndarray, tol: float) -> np.ndarray | None:
    """The median of per-frame (fx, fy, cx, cy) estimates (n, 4) if they all agree within tol, else None."""
    med = np.median(p, axis=0)  # (4,)
    f = 0.5 * (med[0] + med[1])
    return med if np.abs(p - med).max() <= tol * f else None


def share_intrinsics(Ks: Sequence[np.ndarray], spans: Sequence[range],
                     tol: float = K_SHARE_TOL) -> tuple[list[np.ndarray], str]:
    """Pool per-frame intrinsic estimates (one (n_w, 3, 3) per window) where they agree.

    A video usually has one camera, and a ray map's K is its noisiest part, so: if all estimates of
    the clip agree within `tol` (of the focal length) every frame gets their median ("clip"); else
    each window whose estimates agree gets its own median ("window", a zoom across windows); else
    frames keep their own ("frame"). Skew is dropped (neither Blender nor transforms.json has one).
    Returns the pooled K per window and the level used.
    """
    params = [_intrinsics_params(np.asarray(K, np.float64)) for K in Ks]
    clip = _share(np.concatenate(params), tol)
    if clip is not None:
        return [_intrinsics_matrix(np.repeat(clip[None], len(s), 0)) for s in spans], "clip"
    out, level = [], "window"
    for p in params:
        med = _share(p, tol)
        level = level if med is not None else "frame"
        out.append(_intrinsics_matrix(np.repeat(med[None], len(p), 0) if med is not None else p))
    return out, level


def decode_windows(samples: Sequence[dict[str, Tensor]], spans: Sequence[range],
                   tol: float = K_SHARE_TOL) -> tuple[list[WindowGeometry], str]:
    """Window samples {"rays": (n, 6, h, w), "depth": (n, 1, h, w)} → cameras and depth per window.

    K is first estimated per frame with no prior (rays_to_camera: homography + QR), pooled by
    `share_intrinsics`, and the poses are then refitted with the pooled K (rays_to_camera_known_K:
    Procrustes + least-squares centre), so every pose agrees with the intrinsics that are reported.
    """
    Ks = [rays_to_camera(s["rays"].double())[0].numpy() for s in samples]
    pooled, level = share_intrinsics(Ks, spans, tol)
    out = []
    for s, K in zip(samples, pooled):
        c2w = rays_to_camera_known_K(s["rays"].double(), torch.from_numpy(K)).numpy()
        out.append(WindowGeometry(K=K, c2w=_orthonormalize(c2w), depth=depth_code_to_depth(s["depth"])))
    return out, level


def _orthonormalize(c2w: np.ndarray) -> np.ndarray:
    """Snap rotation blocks (n, 4, 4) to the nearest rotation (SVD) and the last row to [0, 0, 0, 1]."""
    out = np.array(c2w, np.float64)
    U, _, Vt = np.linalg.svd(out[:, :3, :3])
    D = np.ones((out.shape[0], 3))
    D[:, 2] = np.sign(np.linalg.det(U @ Vt))
    out[:, :3, :3] = (U * D[:, None, :]) @ Vt
    out[:, 3] = [0.0, 0.0, 0.0, 1.0]
    return out


def rotation_mean(Rs: np.ndarray) -> np.ndarray:
    """Chordal L2 mean of rotations (n, 3, 3): the rotation nearest to their sum (SVD projection)."""
    U, _, Vt = np.linalg.svd(np.asarray(Rs, np.float64).sum(0))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def _umeyama_trusted(ref_c: np.ndarray, scene_depth: float) -> bool:
    """Overlap centres (n, 3) that pin down a similarity: ≥ 3, not collinear, a real baseline."""
    if ref_c.shape[0] < 3:
        return False
    sv = np.linalg.svd(ref_c - ref_c.mean(0), compute_uv=False)
    spread = sv[0] / np.sqrt(ref_c.shape[0])
    return bool(sv[1] >= UMEYAMA_PLANARITY * sv[0] and spread >= UMEYAMA_BASELINE * scene_depth)


def _centre_scale(ref_c: np.ndarray, c: np.ndarray) -> float:
    """Scale from centre spreads alone (no depth): ratio of RMS distances to the centroids; 1 if none."""
    a = np.linalg.norm(ref_c - ref_c.mean(0), axis=1).mean()
    b = np.linalg.norm(c - c.mean(0), axis=1).mean()
    return float(a / b) if a > 0 and b > 0 else 1.0


def fit_window_sim3(ref_c2w: np.ndarray, c2w: np.ndarray, ref_depth: np.ndarray | None = None,
                    depth: np.ndarray | None = None) -> Sim3:
    """Sim(3) T with T∘c2w ≈ ref_c2w on overlap frames (n, 4, 4); depth (n, h, w) optional.

    1. Umeyama (1991) on the centres when `_umeyama_trusted` (≥ 3 non-collinear centres with a
       baseline ≥ 5 % of the scene depth) and its scale agrees with the depth scale within 25 %.
    2. Otherwise rotation = chordal mean of ref_R·Rᵀ over the overlap (every frame's orientation is
       a full estimate, so two frames — or one — suffice, and a pure pan is fine), scale = log-depth
       least squares on the overlap pixels (or, without depth, the ratio of centre spreads) and
       t = mean(ref_c − s·R·c), the least-squares translation for that R and s.
    """
    ref_c2w, c2w = np.asarray(ref_c2w, np.float64), np.asarray(c2w, np.float64)
    if ref_c2w.shape != c2w.shape or ref_c2w.ndim != 3 or ref_c2w.shape[1:] != (4, 4) or not len(c2w):
        raise ValueError(f"ref_c2w and c2w must both be (n >= 1, 4, 4), got {ref_c2w.shape} and {c2w.shape}")
    ref_c, c = ref_c2w[:, :3, 3], c2w[:, :3, 3]  # (n, 3) centres
    s_depth = log_depth_scale(ref_depth, depth) if ref_depth is not None and depth is not None else None
    if s_depth is not None:
        valid = informative_depth(ref_depth)
        scene = float(np.median(ref_depth[valid])) if valid.any() else 1.0
        if _umeyama_trusted(ref_c, scene):
            s, R, t = umeyama_sim3(c, ref_c)
            if max(s / s_depth, s_depth / s) <= UMEYAMA_SCALE_AGREEMENT:
                return Sim3(float(s), R, t, "umeyama")
    R = rotation_mean(ref_c2w[:, :3, :3] @ np.swapaxes(c2w[:, :3, :3], 1, 2))
    s = s_depth if s_depth is not None else _centre_scale(ref_c, c)
    t = (ref_c - s * c @ R.T).mean(0)
    return Sim3(float(s), R, t, "poses+depth" if s_depth is not None else "poses+centres")


def chain_cameras(geoms: Sequence[WindowGeometry], spans: Sequence[range],
                  frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Sim3]]:
    """Chain per-window cameras and depth into the first window's frame and units.

    Returns K (F, 3, 3), c2w (F, 4, 4), depth (F, h, w) (scaled with each window's Sim(3) scale) and
    the Sim(3) of every window (the first is the identity).
    """
    _check_spans(spans, geoms, frames)
    g0 = geoms[0]
    K = np.zeros((frames, 3, 3))
    c2w = np.zeros((frames, 4, 4))
    depth = np.zeros((frames, *g0.depth.shape[1:]))
    n0 = len(spans[0])
    K[:n0], c2w[:n0], depth[:n0] = g0.K, g0.c2w, g0.depth
    sims = [IDENTITY]
    for w in range(1, len(spans)):
        g, span = geoms[w], spans[w]
        shared, local = _overlap(spans, w)
        sim = fit_window_sim3(c2w[shared], g.c2w[local], depth[shared], g.depth[local])
        new = np.arange(max(s_.stop for s_ in spans[:w]), span.stop) - span.start
        K[new + span.start] = g.K[new]
        c2w[new + span.start] = sim.apply_poses(g.c2w[new])
        depth[new + span.start] = sim.scale * g.depth[new]
        sims.append(sim)
    return K, _orthonormalize(c2w), depth, sims
