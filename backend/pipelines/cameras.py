"""Recover cameras (and depth, points) from a video: RGB observed, depth and rays generated.

1. The video is cut into windows of `bundle.window` frames overlapping by CAMERA_OVERLAP frames and
   each window is sampled at the working resolution with every RGB token clean (masks.all_rgb).
2. Each window's ray maps become cameras (chain.decode_windows): K per frame with no prior
   (rays_to_camera: pixel → direction homography split by QR), pooled where the estimates agree
   (one K for the clip, else per window, else per frame: a video usually has one camera and a single
   ray map's K is noisy), poses refitted with the pooled K (Procrustes + least-squares centre). The
   depth comes from the same sample, in the window's units.
3. The windows are chained into the first window's frame by a Sim(3) fitted on the overlap
   (chain.fit_window_sim3: Umeyama on the centres when they span a real baseline, else rotation from
   the relative poses, scale from the overlap depth, translation from the centres); poses and depth
   of every later window go through it (depth scales with the Sim(3) scale).
4. Output frame: frame 0 is the identity and the median depth of frame 0 is 1 (translations and depth
   share that unit); K is scaled from the working resolution to the video's; depth is upsampled
   bilinearly; points are the depth of up to POINT_FRAMES evenly spaced frames unprojected with the
   recovered cameras, subsampled (seeded) to at most MAX_POINTS, coloured from the video.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from backend.data.clips import Clip, read_frames, write_clip
from backend.data.ply import write_ply
from backend.geometry.cameras import Cameras
from backend.geometry.projection import unproject_depth

from .bundle import ModelBundle
from .chain import chain_cameras, decode_windows, informative_depth, sample_windows
from .cli_common import add_model_args, add_sampling_args, bundle_from_args, progress_bar, sampling_kwargs
from .depth import check_frames, frame0_median, plan_windows, prepare_out, upsample_depth
from .engine import Progress, no_progress, scale_intrinsics

CAMERA_OVERLAP = 3  # frames shared by consecutive windows (3 lets Umeyama run; capped at window − 1)
POINT_FRAMES = 8  # frames unprojected into the point cloud
MAX_POINTS = 200_000  # point cloud size cap
POINTS_FILE = "points.ply"  # written by the CLI into the clip folder


@dataclass
class CamerasResult:
    """Cameras, depth and a point cloud for every frame of a video (OpenCV axes, continuous pixels)."""

    K: np.ndarray  # (F, 3, 3) float64 intrinsics at the video's resolution
    c2w: np.ndarray  # (F, 4, 4) float64 camera-to-world, frame 0 = identity
    depth: np.ndarray  # (F, H, W) float32 z-depth in the cameras' unit (median of frame 0 = 1)
    points: np.ndarray  # (N, 3) float32 world points, N <= MAX_POINTS (N = 0 when points=False)
    colors: np.ndarray  # (N, 3) uint8 RGB of the points
    windows: int = 1  # number of model windows
    chain: list[str] = field(default_factory=list)  # how each window was attached (chain.Sim3.method)
    intrinsics: str = "clip"  # pooling level of K: clip | window | frame

    def arrays(self) -> dict[str, np.ndarray]:
        return {"K": self.K, "c2w": self.c2w, "depth": self.depth, "points": self.points, "colors": self.colors}

    def params(self) -> dict:
        F_, H, W = self.depth.shape
        return {"frames": F_, "width": W, "height": H, "windows": self.windows, "chain": list(self.chain),
                "intrinsics": self.intrinsics, "points": int(self.points.shape[0]),
                "scale": "median depth of frame 0 = 1"}


def to_first_frame(c2w: np.ndarray, depth: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Poses relative to frame 0 (exactly the identity) with translations and depth divided by scale."""
    R0, c0 = c2w[0, :3, :3], c2w[0, :3, 3]
    out = np.array(c2w, np.float64)
    out[:, :3, :3] = R0.T @ c2w[:, :3, :3]
    out[:, :3, 3] = (c2w[:, :3, 3] - c0) @ R0 / scale  # R0ᵀ·(c − c0), row-vector form
    out[0] = np.eye(4)
    return out, depth / scale


def point_cloud(images: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, *, frames: int = POINT_FRAMES,
                max_points: int = MAX_POINTS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unproject the known depth of up to `frames` evenly spaced frames; at most `max_points` (seeded).

    images (F, H, W, 3) uint8, depth (F, H, W), K (F, 3, 3), c2w (F, 4, 4). Pixels at the decoder's
    far clamp (sky, background) are left out. Returns points (N, 3) float32 and colours (N, 3) uint8.
    """
    idx = np.unique(np.linspace(0, len(depth) - 1, min(len(depth), frames)).round().astype(int))
    d = torch.from_numpy(np.asarray(depth[idx], np.float64))  # (n, H, W)
    pts = unproject_depth(d, torch.from_numpy(K[idx]), torch.from_numpy(c2w[idx])).numpy()  # (n, H, W, 3)
    keep = informative_depth(d.numpy())  # (n, H, W)
    pts, cols = pts[keep], images[idx][keep]
    if len(pts) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(pts), max_points, replace=False))
        pts, cols = pts[pick], cols[pick]
    return pts.astype(np.float32), np.ascontiguousarray(cols, np.uint8)


def recover_cameras(bundle: ModelBundle, video: np.ndarray, *, points: bool = True, steps: int = 20, seed: int = 0,
                    sampler: str = "heun", progress: Progress = no_progress) -> CamerasResult:
    """Cameras K (F, 3, 3), c2w (F, 4, 4), depth (F, H, W) and points for a video (F, H, W, 3) uint8."""
    video = check_frames("video", video)
    Fr, H, W, _ = video.shape
    size, spans = plan_windows(bundle, Fr, H, W, CAMERA_OVERLAP)
    samples = sample_windows(bundle, video, size, spans, steps=steps, seed=seed, sampler=sampler,
                             progress=lambda f, m="": progress(0.9 * f, m))
    progress(0.9, "rays to cameras")
    geoms, level = decode_windows(samples, spans)
    K, c2w, depth, sims = chain_cameras(geoms, spans, Fr)  # working resolution, first window's frame
    depth = upsample_depth(depth, (H, W))
    c2w, depth = to_first_frame(c2w, depth, frame0_median(depth))
    K = scale_intrinsics(K, size, (H, W))
    cams = Cameras(K, c2w, W, H)  # validates: finite, upper-triangular K, rigid poses
    progress(0.95, "point cloud")
    pts, cols = (point_cloud(video, depth, cams.K, cams.c2w, seed=seed) if points
                 else (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)))
    progress(1.0, "cameras done")
    return CamerasResult(K=cams.K, c2w=cams.c2w, depth=depth.astype(np.float32), points=pts, colors=cols,
                         windows=len(spans), chain=[s.method for s in sims], intrinsics=level)


# ----------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", required=True, help="video file, clip folder or folder of frames")
    parser.add_argument("--out", required=True, help="output clip folder (transforms.json, images/, depth/, "
                                                     f"{POINTS_FILE})")
    parser.add_argument("--no-points", dest="points", action="store_false", help=f"skip {POINTS_FILE}")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    add_model_args(parser)
    add_sampling_args(parser)


def run(args: argparse.Namespace) -> int:
    frames, fps = read_frames(args.video)
    kwargs = sampling_kwargs(args)
    overwrite = prepare_out(args.out, args.overwrite)
    bundle = bundle_from_args(args)
    with progress_bar("cameras") as bar:
        result = recover_cameras(bundle, frames, points=args.points, progress=bar, **kwargs)
    H, W = frames.shape[1:3]
    clip = Clip(images=frames, depth=result.depth, cameras=Cameras(result.K, result.c2w, W, H), fps=fps)
    write_clip(args.out, clip, overwrite=overwrite)
    if args.points:
        write_ply(os.path.join(args.out, POINTS_FILE), result.points, result.colors)
    extra = f", {POINTS_FILE} ({len(result.points)} points)" if args.points else ""
    print(f"wrote cameras for {len(frames)} frame(s) to {args.out} (transforms.json, images/, depth/{extra})")
    return 0
