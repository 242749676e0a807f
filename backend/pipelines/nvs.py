"""Novel views of one image along a camera path (DESIGN.md, job 1: the 2.5D camera-projection shot).

The source image is lifted with its depth (given, or estimated by the model itself: RGB clean, depth
and rays noisy), forward-splatted into every target camera with a z-buffer (backend/geometry/warp.py,
as the point-cloud-render pipelines ViewCrafter, GEN3C and TrajectoryCrafter do), and the warp's
visibility becomes the per-token noise map: fully visible patches start clean, holes start as noise,
partly visible patches start part-way (SDEdit, Meng et al. 2022); every frame's rays are known and
clean; frame 0 is the source itself (RGB and depth clean). Sampling uses stochastic conditioning
(`NVSConfig.cond_threshold`); with `samples` > 1 the best of N samples by photometric reprojection
into frame 0 is kept (the 4D system in RESEARCH.md). The output is composited at full resolution:
the warped source pixels where the full-resolution warp sees them, the model's completion (bicubic
RGB, bilinear depth) elsewhere, with a Gaussian-feathered seam that only ever reaches into the holes,
so every visible pixel is exactly the source pixel the z-buffer picked.

Camera paths longer than the model's window run in windows generated in order. Every window holds
frame 0 (the source, clean) and the last `NVSConfig.context` frames of the previous window (their
generated RGB and depth, clean), so a window of W frames makes W − 1 − context new frames (the
first makes W − 1): the conditioning frames are part of the window's token budget.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from backend.diffusion import masks
from backend.diffusion.scoring import best_of_n, decode_depth, reprojection_error
from backend.geometry.cameras import Cameras, cameras_from_transforms
from backend.geometry.normalize import ClipNormalization, clip_normalization
from backend.geometry.warp import warp_rgbd
from backend.model.tokenizer import TokenLayout

from .bundle import ModelBundle
from .engine import (
    Progress,
    complete,
    model_multiple,
    no_progress,
    rays_to_model,
    resize_depth,
    rgb_to_model,
    scale_intrinsics,
    sub_progress,
    working_size,
)


@dataclass
class NVSConfig:
    """Choices of the novel-view job that are not user parameters."""

    # Stochastic conditioning τ: above it the observed tokens are clamped, below it they are re-noised
    # and denoised with the rest. 0.2 frees them only for the last, low-noise fifth of the trajectory:
    # late enough that the layout is fixed by the observations, early enough that seams can still
    # settle (the published system trains with context "clean or at a low level").
    cond_threshold: float | None = 0.2
    partial: float = 1.0  # starting level of a partly visible patch; 1 as in training (masks.from_pixel_mask)
    hole_dilation: int = 1  # grow warp holes by this many pixels (working and full resolution)
    edge_threshold: float | None = 0.1  # relative depth jump that drops flying pixels from the splat
    feather: float = 1.5  # Gaussian sigma (output pixels) of the seam, reaching into the holes only
    context: int = 2  # frames of the previous window kept clean in the next one
    mesh_far: float = 2.0  # fuse only depth up to this multiple of the farthest source depth

    def __post_init__(self) -> None:
        if self.cond_threshold is not None and not 0.0 <= self.cond_threshold <= 1.0:
            raise ValueError(f"cond_threshold must be None or in [0, 1], got {self.cond_threshold}")
        if not 0.0 <= self.partial <= 1.0:
            raise ValueError(f"partial must be in [0, 1], got {self.partial}")
        if self.hole_dilation < 0 or self.context < 0 or self.feather < 0:
            raise ValueError("hole_dilation, context and feather must be >= 0")


@dataclass
class NVSResult:
    """Views along the camera path at the output size, with depth and (optionally) a fused mesh."""

    images: np.ndarray  # (F, h, w, 3) uint8; frame 0 is the source
    depth: np.ndarray  # (F, h, w) float32 z-depth in the source depth's units
    K: np.ndarray  # (F, 3, 3) float64 intrinsics at (h, w), continuous pixels
    c2w: np.ndarray  # (F, 4, 4) float64 camera-to-world, OpenCV axes (the input cameras)
    visible: np.ndarray  # (F, h, w) bool: pixels that are warped source pixels
    scale: float = 1.0  # the clip scale s (median source depth)
    depth_estimated: bool = False  # the source depth came from the model
    scores: list[list[float]] = field(default_factory=list)  # best-of-N scores per window (samples > 1)
    vertices: np.ndarray | None = None  # (N, 3) float32 mesh vertices (mesh=True)
    faces: np.ndarray | None = None  # (M, 3) int32 triangles
    colors: np.ndarray | None = None  # (N, 3) uint8 vertex colours

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"images": self.images, "depth": self.depth, "K": self.K, "c2w": self.c2w}
        if self.vertices is not None:
            out |= {"vertices": self.vertices, "faces": self.faces, "colors": self.colors}
        return out

    def params(self) -> dict:
        return {"frames": int(self.images.shape[0]), "width": int(self.images.shape[2]),
                "height": int(self.images.shape[1]), "scale": float(self.scale),
                "depth_estimated": bool(self.depth_estimated), "windows": len(self.scores),
                "scores": [[float(v) if math.isfinite(v) else None for v in s] for s in self.scores]}


# ---------------------------------------------------------------------------------------------- inputs


def _check_image(name: str, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 ndarray, got {getattr(image, 'dtype', type(image))}")
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"{name} must have shape (H, W, 3), got {image.shape}")


def check_depth_map(name: str, depth: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A finite, non-negative (H, W) depth map with some valid pixel, as float32; ValueError naming `name`."""
    depth = np.asarray(depth)
    if depth.dtype.kind != "f" or depth.shape != tuple(hw):
        raise ValueError(f"{name} must be a float (H, W) = {tuple(hw)} array, got {depth.dtype} {depth.shape}")
    if not np.isfinite(depth).all() or (depth < 0).any():
        raise ValueError(f"{name} must be finite and >= 0 (0 = unknown)")
    if not (depth > 0).any():
        raise ValueError(f"{name} has no valid (> 0) pixel")
    return depth.astype(np.float32)


def _check_inputs(image, K, c2w, width, height, depth_scale, samples, steps) -> tuple[Cameras, tuple[int, int]]:
    """Validate everything before any work; returns the cameras and the output size (h, w)."""
    _check_image("image", image)
    for name, v in (("width", width), ("height", height), ("samples", samples), ("steps", steps)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if samples < 1 or steps < 1:
        raise ValueError(f"samples and steps must be >= 1, got samples={samples}, steps={steps}")
    real = isinstance(depth_scale, numbers.Real) and not isinstance(depth_scale, bool)
    if not (real and math.isfinite(depth_scale) and depth_scale > 0):
        raise ValueError(f"depth_scale must be a finite number > 0, got {depth_scale!r}")
    h, w = int(height) or image.shape[0], int(width) or image.shape[1]
    cams = Cameras(np.asarray(K), np.asarray(c2w), w, h)  # validates K, c2w (shapes, NaN, rigidity)
    return cams, (h, w)


def _estimate_with_model(bundle: ModelBundle, image: np.ndarray, steps: int, seed: int, sampler: str,
                         progress: Progress) -> np.ndarray:
    """Depth of one image by the model (RGB clean, depth and rays noisy), in clip units at full size."""
    H, W = image.shape[:2]
    size = working_size(H, W, bundle.area, model_multiple(bundle))
    layout = TokenLayout(1, *size, bundle.cfg.patch, bundle.cfg.channels)
    rgb = rgb_to_model(image[None], size, bundle.device)  # (1, 1, 3, h, w)
    out = complete(bundle, {"rgb": rgb}, masks.all_rgb(layout, 1, device=bundle.device), steps=steps, seed=seed,
                   sampler=sampler, progress=progress)
    d = decode_depth(out["depth"][0, :, 0].float().cpu())  # (1, h, w)
    return F.interpolate(d[:, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()


def source_depth(bundle: ModelBundle, image: np.ndarray, depth: np.ndarray | None, depth_scale: float, *,
                 steps: int, seed: int, sampler: str, progress: Progress) -> tuple[np.ndarray, bool]:
    """The source depth (H, W) float32 and whether it was estimated.

    A given depth is used as it is (its units are the scene's); an estimated one is scaled so its
    median is `depth_scale` (the add-on's "Depth Scale": how far the subject is, in scene units).
    """
    if depth is not None:
        return check_depth_map("depth", depth, image.shape[:2]), False
    try:  # the depth job's estimator (windows, chaining); the bare model call if it is unavailable
        from .depth import estimate_depth
    except ImportError:
        estimate_depth = None
    if estimate_depth is not None:
        d = estimate_depth(bundle, image[None], steps=steps, seed=seed, sampler=sampler, progress=progress).depth[0]
    else:
        d = _estimate_with_model(bundle, image, steps, seed, sampler, progress)
    d = np.clip(np.nan_to_num(np.asarray(d, np.float64)), 0.0, None)
    valid = d[d > 0]
    if valid.size == 0:
        raise ValueError("the estimated source depth has no valid pixel")
    return (d * (depth_scale / np.median(valid))).astype(np.float32), True


# ---------------------------------------------------------------------------------------------- windows


def plan_windows(frames: int, window: int, context: int) -> list[tuple[list[int], list[int]]]:
    """(conditioning frames, new frames) for each window, in generation order.

    The first window is frame 0 and the next window − 1 frames; every later one holds frame 0, the
    last `context` frames generated so far (clipped to window − 2) and window − 1 − context new ones.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 frames, got {window}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    context = max(0, min(context, window - 2))
    plans, nxt = [], 1
    while nxt < frames:
        ctx = list(range(max(1, nxt - context), nxt)) if plans else []
        new = list(range(nxt, min(nxt + window - 1 - len(ctx), frames)))
        plans.append(([0, *ctx], new))
        nxt = new[-1] + 1
    return plans


@dataclass
class _Working:
    """Everything at the working resolution; `rgb`/`code` hold warps first, then generated frames."""

    rgb: Tensor  # (F, 3, h, w) model-space RGB: frame 0 the source, warps, then samples
    code: Tensor  # (F, 1, h, w) depth code
    visible: Tensor  # (F, h, w) bool: observed pixels (all True once a frame is known)
    rays: Tensor  # (F, 6, h, w) Plücker rays in the clip frame
    K: Tensor  # (F, 3, 3) working-resolution intrinsics
    c2w: Tensor  # (F, 4, 4) normalised camera-to-world


def _working_state(bundle: ModelBundle, image: np.ndarray, depth: np.ndarray, cams: Cameras,
                   norm: ClipNormalization, out_hw: tuple[int, int], cfg: NVSConfig) -> _Working:
    """Warp the source into every camera at the working resolution (nearest z-buffer)."""
    dev = bundle.device
    size = working_size(*out_hw, bundle.area, model_multiple(bundle))
    Kw = torch.as_tensor(scale_intrinsics(cams.K, out_hw, size), device=dev)  # (F, 3, 3) float64
    c2w = torch.as_tensor(cams.c2w, device=dev)  # (F, 4, 4) float64: the splat composes in float64
    src = rgb_to_model(image[None], size, dev)[0]  # (1, 3, h, w)
    d_src = resize_depth(torch.as_tensor(depth, device=dev)[None], size)  # (1, h, w)
    warp = warp_rgbd(src, d_src, Kw[:1], c2w[:1], Kw[None], c2w[None], size, mode="nearest",
                     hole_dilation=cfg.hole_dilation, edge_threshold=cfg.edge_threshold)
    rgb, wdepth, visible = warp.color[0], warp.depth[0], warp.mask[0].clone()  # (F, 3, h, w), (F, h, w) ×2
    rgb[0], wdepth[0], visible[0] = src[0], d_src[0], True
    # (F, 1, h, w): unknown source depth is "far" (-1) as in training; warp holes are generated anyway
    code = norm.normalize_depth(wdepth, fill=-1.0)[0][:, None]
    rays = rays_to_model(scale_intrinsics(cams.K, out_hw, size), cams.c2w, norm, size, dev)[0]
    c2w_n = norm.normalize_poses(torch.as_tensor(cams.c2w, dtype=torch.float64)).float().to(dev)
    return _Working(rgb, code, visible, rays, Kw.float(), c2w_n)


def _window_mask(layout: TokenLayout, visible: Tensor, partial: float) -> masks.TaskMask:
    """RGB and depth levels from the visible pixels (B, F, h, w); rays observed everywhere."""
    rgb = masks.from_pixel_mask(layout, visible, "rgb", partial)
    depth = masks.from_pixel_mask(layout, visible, "depth", partial)
    rays = masks.modality_levels(layout, visible.shape[0], visible.device, rays=0.0)
    return masks.combine(rgb, depth, rays)


def _sample_window(bundle: ModelBundle, st: _Working, idx: list[int], gen: torch.Generator, *, samples: int,
                   steps: int, sampler: str, cfg: NVSConfig, progress: Progress) -> tuple[Tensor, list[float]]:
    """Sample the frames `idx` (idx[0] = 0, the source); returns (Fw, 4, h, w) RGB + depth code, scores."""
    Fw, (h, w) = len(idx), st.rgb.shape[-2:]
    layout = TokenLayout(Fw, h, w, bundle.cfg.patch, bundle.cfg.channels)
    mask = _window_mask(layout, st.visible[idx][None], cfg.partial)
    video = {"rgb": st.rgb[idx][None], "depth": st.code[idx][None], "rays": st.rays[idx][None]}
    drawn = [0]

    def draw(g: torch.Generator) -> Tensor:
        s = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        sub = sub_progress(progress, drawn[0] / samples, (drawn[0] + 1) / samples)
        out = complete(bundle, video, mask, steps=steps, seed=s, sampler=sampler,
                       cond_threshold=cfg.cond_threshold, progress=sub)
        drawn[0] += 1
        return torch.cat([out["rgb"], out["depth"]], dim=2)  # (1, Fw, 4, h, w)

    def score(x: Tensor) -> Tensor:
        geo = x.clone()
        geo[:, 0] = torch.cat([st.rgb[0], st.code[0]], dim=0)  # the anchor is the observed source
        return reprojection_error(geo[:, :, :3], decode_depth(geo[:, :, 3]), st.K[idx][None], st.c2w[idx][None],
                                  anchors=[0])

    if samples == 1:
        return draw(gen)[0], []
    best, scores = best_of_n(draw, samples, score, gen)
    return best[0], scores[:, 0].tolist()


def _generate(bundle: ModelBundle, st: _Working, gen: torch.Generator, *, samples: int, steps: int, sampler: str,
              cfg: NVSConfig, progress: Progress) -> list[list[float]]:
    """Run every window in order, writing the generated frames into `st`; returns the scores."""
    plans = plan_windows(st.rgb.shape[0], bundle.window, cfg.context)
    scores = []
    for k, (cond, new) in enumerate(plans):
        idx = cond + new
        x, sc = _sample_window(bundle, st, idx, gen, samples=samples, steps=steps, sampler=sampler, cfg=cfg,
                               progress=sub_progress(progress, k / len(plans), (k + 1) / len(plans)))
        for j, f in enumerate(idx[len(cond):], start=len(cond)):
            st.rgb[f], st.code[f, 0], st.visible[f] = x[j, :3], x[j, 3], True
        scores.append(sc)
    return scores


# ---------------------------------------------------------------------------------------------- output


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W), zero padding (outside the image counts as unseen)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    C = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), padding=(0, r), groups=C)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), padding=(r, 0), groups=C)


def feather_composite(warped: Tensor, visible: Tensor, fill: Tensor, sigma: float) -> Tensor:
    """Composite a warp over a completion with a seam feathered into the holes only.

    warped, fill: (N, C, H, W); visible: (N, H, W) bool. Visible pixels are exactly `warped`; a hole
    pixel is G∗(warped·m) + (1 − G∗m)·fill with m the visible mask and G a Gaussian of `sigma`
    pixels: near the seam the warp's blurred colour (a normalised convolution, Knutsson & Westin
    1993, weighted by its own support) fades into the completion; far from it only the completion.
    """
    m = visible[:, None].to(warped.dtype)  # (N, 1, H, W)
    if sigma > 0:
        alpha, carry = gaussian_blur(m, sigma), gaussian_blur(warped * m, sigma)
    else:
        alpha, carry = torch.zeros_like(m), torch.zeros_like(warped)
    return torch.where(visible[:, None], warped, carry + (1 - alpha) * fill)


def warp_full(image: np.ndarray, depth: np.ndarray, cams: Cameras, frames: list[int], out_hw: tuple[int, int],
              cfg: NVSConfig, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The full-resolution warp of the source (0..255 colour) into cameras `frames` at out_hw.

    The source camera is frame 0's, its K rescaled to the source size. Returns colour (V, 3, h, w),
    depth (V, h, w), visible (V, h, w) bool.
    """
    K_src = torch.as_tensor(scale_intrinsics(cams.K[0], out_hw, image.shape[:2]), device=device)[None]
    src = torch.as_tensor(image, device=device).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    d_src = torch.as_tensor(depth, device=device)[None]  # (1, H, W)
    Kt = torch.as_tensor(cams.K[frames], device=device)[None]  # (1, V, 3, 3)
    Pt = torch.as_tensor(cams.c2w[frames], device=device)[None]  # (1, V, 4, 4)
    c2w0 = torch.as_tensor(cams.c2w[:1], device=device)  # (1, 4, 4)
    w = warp_rgbd(src, d_src, K_src, c2w0, Kt, Pt, out_hw, mode="nearest", hole_dilation=cfg.hole_dilation,
                  edge_threshold=cfg.edge_threshold)
    return w.color[0], w.depth[0], w.mask[0]


def _compose(image: np.ndarray, depth: np.ndarray, cams: Cameras, norm: ClipNormalization, st: _Working,
             frames: list[int], out_hw: tuple[int, int], cfg: NVSConfig) -> tuple[np.ndarray, ...]:
    """Output frames: full-resolution warp where visible, the upsampled completion elsewhere."""
    color, wdepth, visible = warp_full(image, depth, cams, frames, out_hw, cfg, st.rgb.device)
    rgb = F.interpolate((st.rgb[frames].float() + 1) * 127.5, size=out_hw, mode="bicubic", align_corners=False)
    # bilinear, not bicubic, for depth: no overshoot into negative or beyond-edge depths
    d = F.interpolate(norm.denormalize_depth(st.code[frames].float()), size=out_hw, mode="bilinear",
                      align_corners=False)  # (V, 1, h, w) scene units: the clip scale s multiplies back
    img = feather_composite(color, visible, rgb.clamp(0, 255), cfg.feather)  # (V, 3, h, w)
    dep = feather_composite(wdepth[:, None], visible, d, cfg.feather)[:, 0]  # (V, h, w)
    img = img.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return img.cpu().numpy(), dep.float().cpu().numpy(), visible.cpu().numpy()


def _source_at(image: np.ndarray, depth: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The source image and depth at the output size (unchanged when the sizes agree)."""
    if image.shape[:2] == tuple(out_hw):
        return image, depth
    import cv2

    shrink = out_hw[0] * out_hw[1] < image.shape[0] * image.shape[1]
    img = cv2.resize(image, out_hw[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return img, resize_depth(torch.as_tensor(depth)[None], out_hw)[0].numpy()


def _outputs(image, depth, cams, norm, st, out_hw, cfg, chunk: int, progress: Progress) -> tuple[np.ndarray, ...]:
    """All output frames in chunks (bounded full-resolution memory); frame 0 is the source itself."""
    Fr, (h, w) = len(cams), out_hw
    images, depths = np.empty((Fr, h, w, 3), np.uint8), np.empty((Fr, h, w), np.float32)
    visible = np.empty((Fr, h, w), bool)
    for lo in range(0, Fr, chunk):
        frames = list(range(lo, min(lo + chunk, Fr)))
        images[frames], depths[frames], visible[frames] = _compose(image, depth, cams, norm, st, frames, out_hw, cfg)
        progress(frames[-1] / Fr, f"compositing {frames[-1] + 1}/{Fr}")
    images[0], depths[0] = _source_at(image, depth, out_hw)
    visible[0] = True
    return images, depths, visible


def _fuse(images: np.ndarray, depths: np.ndarray, d_src: np.ndarray, cams: Cameras, cfg: NVSConfig,
          progress: Progress) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TSDF mesh of the views (the mesh job, pipelines/mesh.py). Generated depth beyond `mesh_far` times the
    farthest source depth is left out: the views show the source's scene, and a saturated depth code
    (sky, an undecided hole) would otherwise stretch the volume's bounds and coarsen every voxel."""
    from .mesh import fuse_mesh

    far = cfg.mesh_far * float(d_src.max())
    d = np.where(depths <= far, depths, 0.0).astype(np.float32)
    res = fuse_mesh(images, d, cams.K, cams.c2w, progress=progress)
    return res.vertices, res.faces, res.colors


def novel_views(bundle: ModelBundle, image: np.ndarray, K: np.ndarray, c2w: np.ndarray, *, width: int = 0,
                height: int = 0, depth: np.ndarray | None = None, depth_scale: float = 1.0, samples: int = 1,
                mesh: bool = False, steps: int = 20, seed: int = 0, sampler: str = "heun",
                progress: Progress = no_progress, config: NVSConfig | None = None) -> NVSResult:
    """Views of `image` (H, W, 3) uint8 from cameras K (F, 3, 3), c2w (F, 4, 4) (frame 0 = the source
    camera; K at the output size (height, width), 0 = the source size); see the module docstring."""
    cfg = config or NVSConfig()
    cams, out_hw = _check_inputs(image, K, c2w, width, height, depth_scale, samples, steps)
    if depth is not None:
        depth = check_depth_map("depth", depth, image.shape[:2])
    progress(0.0, "source depth")
    d_src, estimated = source_depth(bundle, image, depth, depth_scale, steps=steps, seed=seed, sampler=sampler,
                                    progress=sub_progress(progress, 0.0, 0.15))
    norm = clip_normalization(torch.as_tensor(d_src)[None], torch.as_tensor(cams.c2w))
    progress(0.15, "warping the source")
    st = _working_state(bundle, image, d_src, cams, norm, out_hw, cfg)
    gen = torch.Generator().manual_seed(int(seed))
    scores = _generate(bundle, st, gen, samples=samples, steps=steps, sampler=sampler, cfg=cfg,
                       progress=sub_progress(progress, 0.15, 0.85))
    images, depths, visible = _outputs(image, d_src, cams, norm, st, out_hw, cfg, bundle.window,
                                       sub_progress(progress, 0.85, 0.95))
    result = NVSResult(images, depths, cams.K, cams.c2w, visible, norm.scale, estimated, scores)
    if mesh:
        progress(0.95, "fusing the mesh")
        result.vertices, result.faces, result.colors = _fuse(images, depths, d_src, cams, cfg,
                                                              sub_progress(progress, 0.95, 1.0))
    progress(1.0, "novel views done")
    return result


# ---------------------------------------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser) -> None:
    from .cli_common import add_model_args, add_sampling_args

    parser.add_argument("--image", required=True, help="source image (the view of frame 0)")
    parser.add_argument("--cameras", required=True, help="transforms.json of the path; frame 0 = the source camera")
    parser.add_argument("--out", required=True, help="output clip folder (images/, depth/, transforms.json)")
    parser.add_argument("--depth", default=None, help="source depth .npy (H, W) in scene units (default: estimated)")
    parser.add_argument("--depth-scale", type=float, default=1.0, help="median of an estimated depth, scene units")
    parser.add_argument("--samples", type=int, default=1, help="best-of-N samples per window")
    parser.add_argument("--mesh", action="store_true", help="also write mesh.ply (TSDF fusion of the views)")
    add_sampling_args(parser)
    add_model_args(parser)


def check_out_folder(out: str) -> None:
    """Refuse to replace a non-empty folder that is not a clip folder (it may be the user's own files)."""
    if os.path.isdir(out) and os.listdir(out) and not os.path.isdir(os.path.join(out, "images")):
        raise ValueError(f"--out {out} exists and is not a clip folder; refusing to replace it")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a folder")


def run(args: argparse.Namespace) -> int:
    from backend.data.clips import Clip, read_image, write_clip
    from backend.data.ply import write_ply

    from .cli_common import bundle_from_args, progress_bar, sampling_kwargs

    check_out_folder(args.out)
    image = read_image(args.image)
    with open(args.cameras, encoding="utf-8") as f:
        cams, _ = cameras_from_transforms(json.load(f))
    depth = None if args.depth is None else np.load(args.depth, allow_pickle=False)
    kwargs = sampling_kwargs(args)
    bundle = bundle_from_args(args)
    with progress_bar("nvs") as bar:
        res = novel_views(bundle, image, cams.K, cams.c2w, width=cams.width, height=cams.height, depth=depth,
                          depth_scale=args.depth_scale, samples=args.samples, mesh=args.mesh, progress=bar,
                          **kwargs)
    write_clip(args.out, Clip(res.images, res.depth, Cameras(res.K, res.c2w, cams.width, cams.height)),
               overwrite=True)
    if res.vertices is not None:
        write_ply(os.path.join(args.out, "mesh.ply"), res.vertices, colors=res.colors, faces=res.faces)
    print(f"wrote {len(res.images)} views to {args.out}" + (" (+ mesh.ply)" if res.vertices is not None else ""))
    return 0
