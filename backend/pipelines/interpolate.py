"""Frames between two images (DESIGN.md: two-view interpolation, a mask that comes for free).

The first and last frames' RGB are clean (masks.endpoints), everything else is generated; with
cameras (K, c2w per frame) every frame's rays are clean too. The depth of the two images is unknown,
so the clip scale comes from the cameras, exactly as training normalises depth-less clips: s = the
largest camera distance from the first camera (geometry.normalize.baseline_scale). The ray moments
then have the range the model learned whatever the scene's units, and the returned depth is decoded
back to the cameras' own units. Without cameras the depth is in the normalised unit of a scale-1 clip
(relative depth only).

More frames than the model's window are generated hierarchically (keyframes first, as in the
coarse-to-fine "temporal interpolation" stages of video diffusion systems): a coarse pass generates
`window` evenly spaced frames between the endpoints, then every gap is filled by a window whose two
ends — now known keyframes, RGB and generated depth — are clean, recursing while a gap is still
longer than a window. Every frame is generated once, each gap sees both of its ends, and errors do
not accumulate along the clip as they would with chained overlapping windows.

Output is at the inputs' full resolution (the completion upsampled bicubically); the first and last
frames are the inputs themselves, bit for bit.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from backend.diffusion import masks
from backend.geometry.cameras import Cameras, cameras_from_transforms
from backend.geometry.normalize import ClipNormalization, baseline_scale, clip_normalization
from backend.model.tokenizer import TokenLayout

from .bundle import ModelBundle
from .engine import (
    Progress,
    complete,
    model_multiple,
    no_progress,
    rays_to_model,
    rgb_from_model,
    rgb_to_model,
    scale_intrinsics,
    sub_progress,
    working_size,
)

# Stochastic conditioning τ for the clean endpoints (and keyframes), as in the NVS job (nvs.NVSConfig).
COND_THRESHOLD = 0.2


@dataclass
class InterpolateResult:
    """The interpolated clip at the inputs' resolution."""

    images: np.ndarray  # (F, H, W, 3) uint8; images[0], images[-1] are the inputs
    depth: np.ndarray  # (F, H, W) float32 z-depth (cameras' units with cameras, else relative)
    K: np.ndarray | None = None  # (F, 3, 3) the given intrinsics, None without cameras
    c2w: np.ndarray | None = None  # (F, 4, 4) the given camera-to-world, None without cameras
    windows: int = 1  # model windows run (keyframe pass + gap fills)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"images": self.images, "depth": self.depth}
        if self.K is not None:
            out |= {"K": self.K, "c2w": self.c2w}
        return out

    def params(self) -> dict:
        return {"frames": int(self.images.shape[0]), "width": int(self.images.shape[2]),
                "height": int(self.images.shape[1]), "windows": int(self.windows), "cameras": self.K is not None}


def plan_groups(frames: int, window: int) -> list[list[int]]:
    """Frame groups in generation order: each group's first and last frames are known when it runs.

    The first group spans the whole clip (all of it when frames <= window, else `window` evenly
    spaced keyframes); each gap between consecutive frames of a group is then planned the same way.
    """
    if window < 3:
        raise ValueError(f"window must be >= 3 frames to interpolate hierarchically, got {window}")
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    groups: list[list[int]] = []

    def plan(a: int, b: int) -> None:
        if b - a + 1 <= window:
            groups.append(list(range(a, b + 1)))
            return
        keys = sorted({int(k) for k in np.round(np.linspace(a, b, window))})
        groups.append(keys)
        for k0, k1 in itertools.pairwise(keys):
            if k1 - k0 > 1:
                plan(k0, k1)

    plan(0, frames - 1)
    return groups


def _check_inputs(first, last, frames, K, c2w) -> Cameras | None:
    for name, img in (("first", first), ("last", last)):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{name} must be a (H, W, 3) uint8 array, got "
                             f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}")
    if first.shape != last.shape:
        raise ValueError(f"last must have the shape of first {first.shape}, got {last.shape}")
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer) or frames < 2:
        raise ValueError(f"frames must be an int >= 2, got {frames!r}")
    if (K is None) != (c2w is None):
        raise ValueError("K and c2w must be given together (or neither)")
    if K is None:
        return None
    cams = Cameras(np.asarray(K), np.asarray(c2w), first.shape[1], first.shape[0])
    if len(cams) != frames:
        raise ValueError(f"K and c2w have {len(cams)} cameras but frames = {frames}")
    return cams


@dataclass
class _State:
    """Working-resolution frames and which of them are known."""

    rgb: Tensor  # (F, 3, h, w) model-space RGB
    code: Tensor  # (F, 1, h, w) depth code
    rays: Tensor | None  # (F, 6, h, w) clean rays, None without cameras
    rgb_known: list[bool]  # per frame: its RGB is an input or was generated
    depth_known: list[bool]  # per frame: its depth was generated


def _levels(layout: TokenLayout, known: list[bool], device) -> Tensor:
    """(1, N) token levels: 0 on the frames marked known, 1 on the others."""
    per_frame = torch.tensor([0.0 if k else 1.0 for k in known], device=device)  # (F,)
    return per_frame.repeat_interleave(layout.grid[1] * layout.grid[2])[None]  # (1, N)


def _run_group(bundle: ModelBundle, st: _State, idx: list[int], seed: int, steps: int, sampler: str,
               progress: Progress) -> None:
    """Generate the unknown frames (and depths) of group `idx` into `st`."""
    dev, (h, w) = bundle.device, st.rgb.shape[-2:]
    layout = TokenLayout(len(idx), h, w, bundle.cfg.patch, bundle.cfg.channels)
    video = {"rgb": st.rgb[idx][None], "depth": st.code[idx][None]}
    levels = {"rgb": _levels(layout, [st.rgb_known[f] for f in idx], dev),
              "depth": _levels(layout, [st.depth_known[f] for f in idx], dev)}
    if st.rays is not None:
        video["rays"], levels["rays"] = st.rays[idx][None], 0.0
    mask = masks.modality_levels(layout, 1, dev, **levels)  # rays generated (level 1) without cameras
    out = complete(bundle, video, mask, steps=steps, seed=seed, sampler=sampler, cond_threshold=COND_THRESHOLD,
                   progress=progress)
    for j, f in enumerate(idx):
        if not st.rgb_known[f]:
            st.rgb[f], st.rgb_known[f] = out["rgb"][0, j], True
        if not st.depth_known[f]:
            st.code[f], st.depth_known[f] = out["depth"][0, j], True


def _initial_state(bundle: ModelBundle, first: np.ndarray, last: np.ndarray, frames: int, cams: Cameras | None,
                   norm: ClipNormalization) -> _State:
    H, W = first.shape[:2]
    size = working_size(H, W, bundle.area, model_multiple(bundle))
    ends = rgb_to_model(np.stack([first, last]), size, bundle.device)[0]  # (2, 3, h, w)
    rgb = ends.new_zeros(frames, 3, *size)
    rgb[0], rgb[-1] = ends[0], ends[1]
    rays = None
    if cams is not None:
        rays = rays_to_model(scale_intrinsics(cams.K, (H, W), size), cams.c2w, norm, size, bundle.device)[0]
    known = [f in (0, frames - 1) for f in range(frames)]
    return _State(rgb, ends.new_zeros(frames, 1, *size), rays, known, [False] * frames)


def interpolate(bundle: ModelBundle, first: np.ndarray, last: np.ndarray, *, frames: int = 16,
                K: np.ndarray | None = None, c2w: np.ndarray | None = None, steps: int = 20, seed: int = 0,
                sampler: str = "heun", progress: Progress = no_progress) -> InterpolateResult:
    """`frames` frames from `first` to `last` (H, W, 3) uint8, optionally along cameras K (F, 3, 3) at
    (H, W) and c2w (F, 4, 4); see the module docstring for the plan and the depth units."""
    cams = _check_inputs(first, last, frames, K, c2w)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    frames = int(frames)
    if cams is None:
        norm = ClipNormalization(1.0, torch.eye(4, dtype=torch.float64))
    else:  # no depth: the camera baseline sets the scale, exactly as training does for depth-less clips
        c2w_t = torch.as_tensor(cams.c2w)
        norm = clip_normalization(None, c2w_t, scale=baseline_scale(c2w_t))
    st = _initial_state(bundle, first, last, frames, cams, norm)
    groups = plan_groups(frames, bundle.window)
    gen = torch.Generator().manual_seed(int(seed))
    for k, idx in enumerate(groups):
        s = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        sub = sub_progress(progress, 0.95 * k / len(groups), 0.95 * (k + 1) / len(groups))
        _run_group(bundle, st, idx, s, steps, sampler, sub)
    H, W = first.shape[:2]
    images = rgb_from_model(st.rgb[None], (H, W))  # (F, H, W, 3) uint8, bicubic
    images[0], images[-1] = first, last
    depth = F.interpolate(norm.denormalize_depth(st.code.float()), size=(H, W), mode="bilinear",
                          align_corners=False)[:, 0].cpu().numpy().astype(np.float32)
    progress(1.0, "interpolation done")
    return InterpolateResult(images, depth, None if cams is None else cams.K, None if cams is None else cams.c2w,
                             windows=len(groups))


# ---------------------------------------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser) -> None:
    from .cli_common import add_model_args, add_sampling_args

    parser.add_argument("--first", required=True, help="first image")
    parser.add_argument("--last", required=True, help="last image (same size as the first)")
    parser.add_argument("--frames", type=int, default=None, help="frames in all, endpoints included (default 16, "
                        "or the number of cameras)")
    parser.add_argument("--out", required=True, help="output clip folder (images/, depth/, transforms.json)")
    parser.add_argument("--cameras", default=None, help="transforms.json with one camera per frame (optional)")
    add_sampling_args(parser)
    add_model_args(parser)


def _read_cameras(path: str, frames: int | None, hw: tuple[int, int]) -> Cameras:
    with open(path, encoding="utf-8") as f:
        cams, _ = cameras_from_transforms(json.load(f))
    if frames is not None and frames != len(cams):
        raise ValueError(f"--frames {frames} differs from the {len(cams)} cameras in {path}")
    K = scale_intrinsics(cams.K, (cams.height, cams.width), hw)  # cameras at the images' size
    return Cameras(K, cams.c2w, hw[1], hw[0])


def run(args: argparse.Namespace) -> int:
    from backend.data.clips import Clip, read_image, write_clip

    from .cli_common import bundle_from_args, progress_bar, sampling_kwargs
    from .nvs import check_out_folder

    check_out_folder(args.out)
    first, last = read_image(args.first), read_image(args.last)
    cams = None if args.cameras is None else _read_cameras(args.cameras, args.frames, first.shape[:2])
    frames = len(cams) if cams is not None else (16 if args.frames is None else args.frames)
    kwargs = sampling_kwargs(args)
    bundle = bundle_from_args(args)
    with progress_bar("interpolate") as bar:
        res = interpolate(bundle, first, last, frames=frames, K=None if cams is None else cams.K,
                          c2w=None if cams is None else cams.c2w, progress=bar, **kwargs)
    write_clip(args.out, Clip(res.images, res.depth, cams), overwrite=True)
    print(f"wrote {len(res.images)} frames to {args.out}")
    return 0
