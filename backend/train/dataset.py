"""Training data: clip folders, plain videos and transforms.json scenes as model-space windows.

Every source is decoded once (at construction, in the main process, so DataLoader workers share it
copy-on-write) into a `SourceClip` of uint8 frames plus whatever geometry it has, pre-shrunk so its
largest possible crop is at most `max_source_factor` × the training size. A sample is then cheap:

1. a random temporal window of `frames` frames with a random stride;
2. one random crop (the same for every frame) with the training aspect, resized to (height, width);
   intrinsics follow exactly in the continuous pixel convention of backend/geometry/projection.py —
   cropping at (x0, y0) shifts (cx, cy) by (−x0, −y0); resizing by (sx, sy) scales row 0 by sx and row
   1 by sy (a pixel centre j + 0.5 maps to (j + 0.5)·s);
3. per-clip normalisation (backend/geometry/normalize.py): scale = median valid depth of the window's
   first frame, or without depth the largest camera distance from the first camera (1 if none);
4. model-space tensors: RGB in [−1, 1], the depth code 2/(1 + d/s) − 1 (unknown depth, e.g. sky where
   Cycles hits nothing, gets −1 = infinitely far, and `depth_valid` says which pixels were measured),
   Plücker ray maps of the normalised cameras, and two geometry-derived visibility masks for the
   trainer: `warp_visible` (frame 0 forward-splatted into every frame through the true geometry —
   the novel-view-synthesis mask) and `track_visible` (the complement of a box in frame 0 carried
   into later frames by projecting its 3D points — the edit-propagation mask).

Randomness comes only from numpy's generator seeded by (seed, index): a sample is a pure function of
its index, which makes runs reproducible and resumable whatever the worker count.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from backend.data.clips import (
    IMAGE_EXTS,
    IMAGES_DIR,
    TRANSFORMS_FILE,
    natural_key,
    read_clip,
    read_frames,
    read_image,
)
from backend.geometry.cameras import cameras_from_transforms
from backend.geometry.normalize import baseline_scale, clip_normalization
from backend.geometry.projection import project_points, unproject_depth
from backend.geometry.rays import ray_map
from backend.geometry.warp import warp_rgbd

NVS_HOLE_DILATION = 1  # as backend/pipelines/nvs.py NVSConfig.hole_dilation: train on the holes the job makes

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass
class DataConfig:
    """How windows are cut from the sources."""

    frames: int = 8  # F, frames per training window (the served model's `window`)
    height: int = 48  # h, training height in pixels (multiple of the model's patch)
    width: int = 64  # w, training width in pixels
    max_stride: int = 3  # temporal stride drawn in [1, max_stride] (capped by the clip length)
    crop_scale: tuple[float, float] = (0.6, 1.0)  # crop side / largest crop with the training aspect
    box_size: tuple[float, float] = (0.2, 0.5)  # tracked box side as a fraction of the image side
    seed: int = 0  # base seed: sample i draws from numpy Generator(SeedSequence([seed, i]))
    length: int = 1 << 30  # virtual dataset length (indices are drawn by the trainer's sampler)
    max_source_factor: float = 2.0  # sources are shrunk on load to at most this × the training size
    max_video_frames: int = 600  # frames decoded from a plain video (memory bound)

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width", "max_stride", "length", "max_video_frames"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DataConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("crop_scale", "box_size"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"DataConfig.{name} must satisfy 0 < lo <= hi <= 1, got {(lo, hi)}")
        if not self.max_source_factor >= 1.0:
            raise ValueError(f"DataConfig.max_source_factor must be >= 1, got {self.max_source_factor}")


@dataclass
class SourceClip:
    """One decoded source, any mix of modalities."""

    name: str  # path it came from (for messages)
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    depth: np.ndarray | None = None  # (N, H, W) float32 z-depth, 0 = unknown
    K: np.ndarray | None = None  # (N, 3, 3) float64 intrinsics, continuous pixels
    c2w: np.ndarray | None = None  # (N, 4, 4) float64 camera-to-world, OpenCV axes

    @property
    def num_frames(self) -> int:
        return self.images.shape[0]


# ---------------------------------------------------------------------------------------------- sources


def _shrink(src: SourceClip, cfg: DataConfig) -> SourceClip:
    """Downscale a source so its largest training-aspect crop is <= max_source_factor × (h, w)."""
    _N, H, W, _ = src.images.shape
    factor = min(H / cfg.height, W / cfg.width) / cfg.max_source_factor
    if factor <= 1.0:
        return src
    h2, w2 = max(cfg.height, round(H / factor)), max(cfg.width, round(W / factor))
    imgs = torch.from_numpy(src.images).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    imgs = F.interpolate(imgs, size=(h2, w2), mode="bilinear", antialias=True, align_corners=False)
    images = imgs.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous().numpy()
    depth = None
    if src.depth is not None:
        d = F.interpolate(torch.from_numpy(src.depth)[:, None], size=(h2, w2), mode="nearest-exact")
        depth = d[:, 0].numpy()
    K = None if src.K is None else np.diag([w2 / W, h2 / H, 1.0]) @ src.K  # (N, 3, 3)
    return SourceClip(src.name, images, depth, K, src.c2w)


def _clip_folder(path: str) -> SourceClip:
    clip = read_clip(path)
    cams = clip.cameras
    return SourceClip(path, clip.images, clip.depth, None if cams is None else cams.K,
                      None if cams is None else cams.c2w)


def _resolve_image(folder: str, rel: str) -> str:
    """A transforms.json file_path to an existing image file (NeRF-synthetic omits the extension)."""
    p = os.path.normpath(os.path.join(folder, rel.replace("\\", "/")))
    if os.path.isfile(p):
        return p
    for ext in IMAGE_EXTS:
        if os.path.isfile(p + ext):
            return p + ext
    raise ValueError(f"{os.path.join(folder, TRANSFORMS_FILE)}: image {rel!r} not found")


def _transforms_file(path: str) -> str | None:
    """transforms.json, else NeRF-synthetic's transforms_train.json, in `path`."""
    for name in (TRANSFORMS_FILE, "transforms_train.json"):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    return None


def _transforms_scene(path: str) -> SourceClip:
    """A nerfstudio / NeRF-synthetic folder: transforms.json + the images it names (no depth).

    Frames are taken in natural file-name order (capture order for video-derived scenes: frame_2
    before frame_10); images decoded at a size other than the json's (w, h) (e.g. a downscaled
    images_2/) get their intrinsics scaled. NeRF-synthetic files give no (w, h): the first image does.
    """
    with open(_transforms_file(path), encoding="utf-8") as f:
        data = json.load(f)
    frames = data.get("frames") or []
    if ("w" not in data or "h" not in data) and frames and "w" not in frames[0]:
        h, w = read_image(_resolve_image(path, frames[0].get("file_path", ""))).shape[:2]
        data = {**data, "w": w, "h": h}
    cams, rels = cameras_from_transforms(data)
    order = sorted(range(len(rels)), key=lambda i: natural_key(rels[i]))
    images = np.stack([read_image(_resolve_image(path, rels[i])) for i in order])  # (N, H, W, 3)
    H, W = images.shape[1:3]
    K = np.diag([W / cams.width, H / cams.height, 1.0]) @ cams.K[order]  # (N, 3, 3)
    return SourceClip(path, images, None, K, cams.c2w[order])


def _is_clip_folder(path: str) -> bool:
    return os.path.isdir(os.path.join(path, IMAGES_DIR))


def _load_one(path: str, cfg: DataConfig) -> list[SourceClip]:
    """Every source found at `path` (a video, a clip folder, a transforms scene or a folder of them)."""
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() not in VIDEO_EXTS:
            return []
        from backend.data.clips import read_video

        frames, _fps = read_video(path, max_frames=cfg.max_video_frames)
        return [SourceClip(path, frames)]
    has_tf = _transforms_file(path) is not None
    if _is_clip_folder(path):
        try:
            return [_clip_folder(path)]
        except ValueError:
            if not has_tf:
                raise
            return [_transforms_scene(path)]  # a nerfstudio folder whose json does not cover images/
    if has_tf:
        return [_transforms_scene(path)]
    entries = sorted(os.listdir(path))
    if any(os.path.splitext(n)[1].lower() in IMAGE_EXTS for n in entries):
        frames, _fps = read_frames(path)  # a plain folder of frames: RGB only
        return [SourceClip(path, frames)]
    out: list[SourceClip] = []
    for name in entries:
        out.extend(_load_one(os.path.join(path, name), cfg))
    return out


def load_sources(paths: list[str], cfg: DataConfig) -> list[SourceClip]:
    """Decode every source under `paths`, keep those with at least `frames` frames, shrink them."""
    if not paths:
        raise ValueError("data paths must not be empty")
    found: list[SourceClip] = []
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"data path {p} does not exist")
        found.extend(_load_one(os.fspath(p), cfg))
    usable = [_shrink(s, cfg) for s in found if s.num_frames >= cfg.frames]
    if not usable:
        raise ValueError(f"data: no source under {paths} has at least frames={cfg.frames} frames "
                         f"({len(found)} source(s) found)")
    return usable


# ---------------------------------------------------------------------------------------------- windows


def sample_window(n: int, frames: int, max_stride: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `frames` frames with a random stride in [1, max_stride] (capped to fit n)."""
    cap = (n - 1) // (frames - 1) if frames > 1 else 1
    stride = int(rng.integers(1, max(1, min(max_stride, cap)) + 1))
    start = int(rng.integers(0, n - (frames - 1) * stride))
    return start + stride * np.arange(frames)


def sample_crop(H: int, W: int, cfg: DataConfig, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(x0, y0, cw, ch): a crop with the training aspect whose side is crop_scale × the largest one."""
    aspect = cfg.width / cfg.height
    cw_max, ch_max = (H * aspect, H) if aspect < W / H else (W, W / aspect)
    a = rng.uniform(*cfg.crop_scale)
    cw, ch = min(W, max(1, round(a * cw_max))), min(H, max(1, round(a * ch_max)))
    return int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1)), cw, ch


def crop_intrinsics(K: Tensor, crop: tuple[int, int, int, int], size: tuple[int, int]) -> Tensor:
    """K (..., 3, 3) of the source -> K of the crop (x0, y0, cw, ch) resized to size = (h, w).

    Continuous pixels: crop shifts the principal point, resize scales rows 0 and 1 by w/cw and h/ch.
    """
    x0, y0, cw, ch = crop
    shift = torch.tensor([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]], dtype=K.dtype)
    scale = torch.diag(torch.tensor([size[1] / cw, size[0] / ch, 1.0], dtype=K.dtype))
    return scale @ shift @ K


def _crop_resize(x: Tensor, crop: tuple[int, int, int, int], size: tuple[int, int], mode: str) -> Tensor:
    """x (F, C, H, W) -> (F, C, h, w): one crop for all frames, then one vectorised resample."""
    x0, y0, cw, ch = crop
    x = x[..., y0:y0 + ch, x0:x0 + cw]
    if tuple(x.shape[-2:]) == tuple(size):
        return x.contiguous()
    if mode == "nearest-exact":  # depth: sample the nearest source pixel centre, never blend across edges
        return F.interpolate(x, size=size, mode=mode)
    return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)


# ---------------------------------------------------------------------------------------------- masks


def warp_visibility(depth_n: Tensor, K: Tensor, c2w_n: Tensor) -> Tensor:
    """Pixels of every frame that frame 0 reaches through the true geometry: (F, h, w) bool.

    depth_n (F, h, w) normalised z-depth (0 = unknown), K (F, 3, 3), c2w_n (F, 4, 4); frame 0 is
    fully visible (it is the observed view). Exactly the conditioning novel-view synthesis builds.
    """
    _, h, w = depth_n.shape
    ones = torch.ones(1, 1, h, w)
    res = warp_rgbd(ones, depth_n[:1].float(), K[:1].float(), c2w_n[:1].float(), K[None, 1:].float(),
                    c2w_n[None, 1:].float(), (h, w), hole_dilation=NVS_HOLE_DILATION)
    return torch.cat([torch.ones(1, h, w, dtype=torch.bool), res.mask[0]], dim=0)  # (F, h, w)


def _box_mask(boxes: np.ndarray, h: int, w: int) -> Tensor:
    """boxes (F, 4) [x0, y0, x1, y1) in pixels (empty where x1 <= x0) -> (F, h, w) bool inside."""
    ys, xs = torch.arange(h)[:, None], torch.arange(w)[None, :]
    b = torch.as_tensor(boxes, dtype=torch.float32)[:, :, None, None]  # (F, 4, 1, 1)
    return (xs + 0.5 >= b[:, 0]) & (xs + 0.5 < b[:, 2]) & (ys + 0.5 >= b[:, 1]) & (ys + 0.5 < b[:, 3])


def track_visibility(depth_n: Tensor | None, K: Tensor | None, c2w_n: Tensor | None, cfg: DataConfig,
                     rng: np.random.Generator) -> Tensor:
    """The complement of a tracked box: (F, h, w) bool, all of frame 0 visible (the edited frame).

    A random box in frame 0 is lifted with its valid depth and projected into every later frame; the
    bounding box of its projections (one pixel of margin) is what those frames must regenerate.
    Without depth and cameras the box moves at a random constant velocity instead.
    """
    Fr, h, w = cfg.frames, cfg.height, cfg.width
    bw, bh = rng.uniform(*cfg.box_size) * w, rng.uniform(*cfg.box_size) * h
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    box0 = np.array([x0, y0, x0 + bw, y0 + bh])
    boxes = np.tile(box0, (Fr, 1))  # (F, 4)
    inside = _box_mask(box0[None], h, w)[0]  # (h, w)
    if depth_n is not None and K is not None and bool((inside & (depth_n[0] > 0)).any()):
        pts = unproject_depth(depth_n[:1].double(), K[:1].double(), c2w_n[:1].double())[0]  # (h, w, 3)
        pts = pts[inside & (depth_n[0] > 0)]  # (M, 3)
        uv, _z = project_points(pts[None].expand(Fr, -1, -1), K.double(), c2w_n.double())  # (F, M, 2)
        ok = torch.isfinite(uv).all(-1)  # (F, M)
        lo = torch.where(ok[..., None], uv, torch.full_like(uv, math.inf)).amin(1)  # (F, 2)
        hi = torch.where(ok[..., None], uv, torch.full_like(uv, -math.inf)).amax(1)
        boxes = torch.cat([lo - 1, hi + 1], dim=1).numpy()  # (F, 4), empty (inf > -inf) when none visible
    else:
        vel = rng.uniform(-0.05, 0.05, size=2) * np.array([w, h])  # pixels per frame
        boxes = boxes + np.concatenate([vel, vel])[None] * np.arange(Fr)[:, None]
    box = _box_mask(boxes, h, w)
    box[0] = False
    return ~box


# ---------------------------------------------------------------------------------------------- dataset


class ClipDataset(Dataset):
    """Random model-space windows of decoded sources; item i is a pure function of (seed, i)."""

    def __init__(self, sources: list[SourceClip], cfg: DataConfig) -> None:
        if not sources:
            raise ValueError("ClipDataset needs at least one source")
        self.sources, self.cfg = sources, cfg

    @classmethod
    def from_paths(cls, paths: list[str], cfg: DataConfig) -> ClipDataset:
        return cls(load_sources(paths, cfg), cfg)

    def __len__(self) -> int:
        return self.cfg.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        # these tensors are tiny: intra-op threads only cost wake-ups (10x slower on a busy 2-core CPU)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._item(index)
        finally:
            torch.set_num_threads(threads)

    def _item(self, index: int) -> dict[str, Tensor]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, int(index)])
        src = self.sources[int(rng.integers(len(self.sources)))]
        idx = sample_window(src.num_frames, cfg.frames, cfg.max_stride, rng)
        H, W = src.images.shape[1:3]
        crop, size = sample_crop(H, W, cfg, rng), (cfg.height, cfg.width)
        imgs = torch.from_numpy(src.images[idx]).permute(0, 3, 1, 2).float()  # (F, 3, H, W)
        rgb = _crop_resize(imgs, crop, size, "bilinear") / 127.5 - 1.0  # (F, 3, h, w)
        depth = None
        if src.depth is not None:
            depth = _crop_resize(torch.from_numpy(src.depth[idx])[:, None], crop, size, "nearest-exact")[:, 0]
            if not bool((depth[0] > 0).any()):
                depth = None  # no scale to normalise with: treat the window as depth-less
        K = c2w = None
        if src.K is not None:
            K = crop_intrinsics(torch.from_numpy(src.K[idx]), crop, size)  # (F, 3, 3) float64
            c2w = torch.from_numpy(src.c2w[idx])  # (F, 4, 4) float64
        return self._model_space(rgb.clamp(-1, 1), depth, K, c2w, rng)

    def _model_space(self, rgb: Tensor, depth: Tensor | None, K: Tensor | None, c2w: Tensor | None,
                     rng: np.random.Generator) -> dict[str, Tensor]:
        cfg = self.cfg
        Fr, h, w = cfg.frames, cfg.height, cfg.width
        scale = None
        if depth is None:  # no depth: a scale from the camera baseline, else 1
            scale = 1.0 if c2w is None else baseline_scale(c2w)
        pose = c2w if c2w is not None else torch.eye(4, dtype=torch.float64).expand(Fr, 4, 4)
        norm = clip_normalization(depth, pose, scale=scale)
        out = {"rgb": rgb.float(), "scale": torch.tensor(norm.scale, dtype=torch.float64)}
        if depth is not None:
            code, valid = norm.normalize_depth(depth, fill=-1.0)  # unknown = infinitely far (sky)
            out["depth"], out["depth_valid"] = code[:, None].float(), valid[:, None]
            depth_n = depth / norm.scale  # (F, h, w), 0 stays unknown
        else:
            out["depth"] = torch.zeros(Fr, 1, h, w)
            out["depth_valid"] = torch.zeros(Fr, 1, h, w, dtype=torch.bool)
            depth_n = None
        c2w_n = None
        if K is not None:
            c2w_n = norm.normalize_poses(c2w)  # (F, 4, 4) float64, frame 0 = identity
            out["rays"] = ray_map(K, c2w_n, h, w).float()  # (F, 6, h, w)
            out["K"], out["c2w"] = K.float(), c2w_n.float()
        else:
            out["rays"] = torch.zeros(Fr, 6, h, w)
            out["K"], out["c2w"] = torch.eye(3).expand(Fr, 3, 3).clone(), torch.eye(4).expand(Fr, 4, 4).clone()
        geometry = depth_n is not None and c2w_n is not None
        out["has_geometry"] = torch.tensor(geometry)
        out["warp_visible"] = (warp_visibility(depth_n, K, c2w_n) if geometry
                               else torch.ones(Fr, h, w, dtype=torch.bool))
        out["track_visible"] = track_visibility(depth_n if geometry else None, K, c2w_n, cfg, rng)
        out["available"] = torch.tensor([True, depth is not None, K is not None])
        return out


def collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack samples into a batch: every key gets a leading B axis (available: (B, 3) bool)."""
    if not items:
        raise ValueError("collate: empty batch")
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
