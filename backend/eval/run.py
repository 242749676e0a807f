"""`parallax eval`: the model beside classical baselines on clip folders with ground truth.

Every clip folder must hold RGB, depth and cameras (e.g. `parallax data synth --out DIR --clips N` with a
seed the model never trained on). Per clip and task:

- completion: frame 0 (RGB + TRUE depth) is warped into every later frame's TRUE camera
  (backend/geometry/warp.warp_rgbd, z-buffered nearest splat); the pixels the warp leaves empty are the
  holes. The model completes them (backend.pipelines.nvs.novel_views with the true depth and cameras);
  the baseline is Telea inpainting of the same warped frame with the same holes. Scores: PSNR and SSIM
  over hole pixels (pooled over the clip's target frames), and PSNR over all pixels of those frames.
- depth: backend.pipelines.depth.estimate_depth on the RGB; AbsRel and δ<1.25 after least-squares
  scale-and-shift alignment per frame and, separately, one alignment per clip; baseline a constant map.
- cameras: backend.pipelines.cameras.recover_cameras on the RGB; ATE (RMSE of centres after Umeyama
  Sim(3)) and RPE (translation RMSE, rotation RMSE in degrees) between consecutive frames; baseline the
  chained OpenCV two-view geometry of baselines.py, which is given the TRUE intrinsics.

Seconds per clip are reported for model and baseline (informational, same process, same machine).
Metric values are means over clips; PSNR is capped at `psnr_cap_db` so identical pixels stay finite.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from backend.data.clips import IMAGES_DIR, Clip, read_clip
from backend.geometry.align import ate, depth_metrics, rpe
from backend.geometry.warp import warp_rgbd

from . import baselines
from .metrics import masked_mse, psnr_from_mse, ssim_map

TASKS = ("completion", "depth", "cameras")
# task -> (pipeline module, function) the model side calls
PIPELINES: dict[str, tuple[str, str]] = {
    "completion": ("backend.pipelines.nvs", "novel_views"),
    "depth": ("backend.pipelines.depth", "estimate_depth"),
    "cameras": ("backend.pipelines.cameras", "recover_cameras"),
}
# (task, metric key, label, better) for the summary table, in print order
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("completion", "hole_psnr", "PSNR holes (dB)", "higher"),
    ("completion", "hole_ssim", "SSIM holes", "higher"),
    ("completion", "psnr_all", "PSNR all pixels (dB)", "higher"),
    ("depth", "abs_rel_frame", "AbsRel (per-frame align)", "lower"),
    ("depth", "delta1_frame", "δ<1.25 (per-frame align)", "higher"),
    ("depth", "abs_rel_clip", "AbsRel (per-clip align)", "lower"),
    ("depth", "delta1_clip", "δ<1.25 (per-clip align)", "higher"),
    ("cameras", "ate", "ATE RMSE (Sim3)", "lower"),
    ("cameras", "rpe_trans", "RPE trans RMSE", "lower"),
    ("cameras", "rpe_rot_deg", "RPE rot RMSE (deg)", "lower"),
)
BASELINE_NAMES = {"completion": "Telea inpaint", "depth": "constant depth", "cameras": "OpenCV two-view"}


class PipelineUnavailable(RuntimeError):
    """A task's model pipeline cannot be imported (not written yet, or a broken dependency)."""


@dataclass
class EvalConfig:
    """What `evaluate` runs and how."""

    tasks: tuple[str, ...] = TASKS  # subset of TASKS, in any order
    steps: int = 20  # sampling steps of every model pipeline
    seed: int = 0  # sampling seed (same seed, same numbers)
    sampler: str = "heun"  # sampler name (backend/diffusion/samplers.py)
    max_clips: int = 0  # evaluate at most this many clips (0 = all)
    psnr_cap_db: float = 100.0  # PSNR of identical pixels (inf) is reported as this
    telea_radius: int = baselines.TELEA_RADIUS  # cv2.inpaint neighbourhood radius
    two_view: baselines.TwoViewConfig = field(default_factory=baselines.TwoViewConfig)  # camera baseline

    def validate(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if not self.tasks or unknown:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.max_clips < 0:
            raise ValueError(f"max_clips must be >= 0, got {self.max_clips}")


def pipeline(task: str) -> Callable:
    """The model function for `task`; PipelineUnavailable with the reason when it cannot be imported."""
    module_name, func_name = PIPELINES[task]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineUnavailable(f"eval task '{task}' needs {module_name}.{func_name}, "
                                  f"which cannot be imported: {exc}") from exc
    if not hasattr(module, func_name):
        raise PipelineUnavailable(f"eval task '{task}' needs {module_name}.{func_name}, which does not exist")
    return getattr(module, func_name)


# ----------------------------------------------------------------------------------------------------
# clips


def find_clips(paths: list[str], max_clips: int = 0) -> list[str]:
    """Clip folders under `paths`: each path is a clip folder (has images/) or a folder of them."""
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--clips {path}: no such folder")
        if os.path.isdir(os.path.join(path, IMAGES_DIR)):
            found.append(path)
            continue
        subs = sorted(os.path.join(path, n) for n in os.listdir(path))
        clips = [s for s in subs if os.path.isdir(os.path.join(s, IMAGES_DIR))]
        if not clips:
            raise ValueError(f"--clips {path}: neither a clip folder nor a folder of clip folders")
        found.extend(clips)
    return found[:max_clips] if max_clips else found


def load_eval_clip(path: str) -> Clip:
    """Read a clip and insist on the ground truth the evaluation needs."""
    clip = read_clip(path)
    if clip.depth is None or clip.cameras is None:
        raise ValueError(f"clip {path} lacks ground truth: eval needs depth/ and transforms.json")
    if clip.num_frames < 3:
        raise ValueError(f"clip {path} has {clip.num_frames} frames; eval needs at least 3 "
                         "(a Sim(3) fit of camera centres)")
    return clip


# ----------------------------------------------------------------------------------------------------
# completion


def warp_first_frame(clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    """Frame 0 with its true depth splatted into every later true camera.

    Returns warped (F-1, H, W, 3) uint8 (0 in holes) and holes (F-1, H, W) bool.
    """
    _F, H, W = clip.images.shape[:3]
    K = torch.as_tensor(clip.cameras.K, dtype=torch.float32)  # (F, 3, 3)
    c2w = torch.as_tensor(clip.cameras.c2w, dtype=torch.float32)  # (F, 4, 4)
    image = torch.as_tensor(clip.images[0]).permute(2, 0, 1)[None].float()  # (1, 3, H, W), 0..255
    depth = torch.as_tensor(clip.depth[0])[None]  # (1, H, W)
    res = warp_rgbd(image, depth, K[:1], c2w[:1], K[None, 1:], c2w[None, 1:], (H, W))
    warped = res.color[0].permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy()  # (F-1, H, W, 3)
    return warped, ~res.mask[0].numpy()


def completion_scores(pred: np.ndarray, target: np.ndarray, holes: np.ndarray, cap_db: float) -> dict:
    """Hole PSNR / SSIM pooled over frames, and all-pixel PSNR. pred, target (V, H, W, 3); holes (V, H, W)."""
    se_holes, n_holes, se_all, n_all, ssim_vals = 0.0, 0, 0.0, 0, []
    for p, t, h in zip(pred, target, holes):
        n = int(h.sum())
        if n:
            se_holes += masked_mse(p, t, h) * n
            n_holes += n
            ssim_vals.append(ssim_map(p, t)[h])
        se_all += masked_mse(p, t) * h.size
        n_all += h.size
    cap = lambda v: min(v, cap_db)  # noqa: E731 (inf -> cap, NaN stays NaN)
    return {
        "hole_psnr": cap(psnr_from_mse(se_holes / n_holes)) if n_holes else float("nan"),
        "hole_ssim": float(np.concatenate(ssim_vals).mean()) if n_holes else float("nan"),
        "psnr_all": cap(psnr_from_mse(se_all / n_all)),
        "hole_fraction": n_holes / n_all,
    }


def eval_completion(bundle, clip: Clip, cfg: EvalConfig) -> dict:
    """Model completion vs Telea inpainting of the same holes left by warping frame 0 (true geometry)."""
    novel_views = pipeline("completion")
    warped, holes = warp_first_frame(clip)
    target = clip.images[1:]
    t0 = time.perf_counter()
    res = novel_views(bundle, clip.images[0], clip.cameras.K, clip.cameras.c2w, depth=clip.depth[0],
                      steps=cfg.steps, seed=cfg.seed, sampler=cfg.sampler)
    t1 = time.perf_counter()
    filled = np.stack([baselines.telea_inpaint(w, h, cfg.telea_radius) for w, h in zip(warped, holes)])
    t2 = time.perf_counter()
    pred = np.asarray(res.images)[1:]
    if pred.shape != target.shape:
        raise ValueError(f"novel_views returned images {np.asarray(res.images).shape}, "
                         f"expected {clip.images.shape}")
    return {
        "model": completion_scores(pred, target, holes, cfg.psnr_cap_db),
        "baseline": completion_scores(filled, target, holes, cfg.psnr_cap_db),
        "frames": len(target), "model_s": t1 - t0, "baseline_s": t2 - t1,
    }


# ----------------------------------------------------------------------------------------------------
# depth


def depth_scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    """AbsRel / δ1 after scale-and-shift alignment per frame (mean over frames) and once per clip."""
    frames = [depth_metrics(p, g) for p, g in zip(pred, gt) if (g > 0).any()]
    if not frames:
        raise ValueError("ground-truth depth has no valid (> 0) pixel in any frame")
    clip = depth_metrics(pred, gt)
    return {
        "abs_rel_frame": float(np.mean([m["abs_rel"] for m in frames])),
        "delta1_frame": float(np.mean([m["delta1"] for m in frames])),
        "abs_rel_clip": clip["abs_rel"],
        "delta1_clip": clip["delta1"],
    }


def eval_depth(bundle, clip: Clip, cfg: EvalConfig) -> dict:
    """Model depth vs a constant map, both aligned to the truth by least-squares scale and shift."""
    estimate_depth = pipeline("depth")
    t0 = time.perf_counter()
    res = estimate_depth(bundle, clip.images, steps=cfg.steps, seed=cfg.seed, sampler=cfg.sampler)
    t1 = time.perf_counter()
    const = baselines.constant_depth(clip.depth.shape)
    t2 = time.perf_counter()
    pred = np.asarray(res.depth, dtype=np.float64)
    if pred.shape != clip.depth.shape:
        raise ValueError(f"estimate_depth returned depth {pred.shape}, expected {clip.depth.shape}")
    return {"model": depth_scores(pred, clip.depth), "baseline": depth_scores(const, clip.depth),
            "frames": clip.num_frames, "model_s": t1 - t0, "baseline_s": t2 - t1}


# ----------------------------------------------------------------------------------------------------
# cameras


def camera_scores(pred_c2w: np.ndarray, gt_c2w: np.ndarray) -> dict:
    """ATE RMSE after Sim(3), RPE translation and rotation RMSE over consecutive pairs."""
    a, r = ate(pred_c2w, gt_c2w), rpe(pred_c2w, gt_c2w)
    return {"ate": a["rmse"], "rpe_trans": r["trans_rmse"], "rpe_rot_deg": r["rot_rmse_deg"]}


def eval_cameras(bundle, clip: Clip, cfg: EvalConfig) -> dict:
    """Model cameras vs chained OpenCV two-view poses (given the true K)."""
    recover_cameras = pipeline("cameras")
    t0 = time.perf_counter()
    res = recover_cameras(bundle, clip.images, points=False, steps=cfg.steps, seed=cfg.seed,
                          sampler=cfg.sampler)
    t1 = time.perf_counter()
    two = baselines.two_view_trajectory(clip.images, clip.cameras.K, cfg.two_view)
    t2 = time.perf_counter()
    baseline = camera_scores(two.c2w, clip.cameras.c2w)
    baseline["failed_pairs"] = two.failures
    return {"model": camera_scores(np.asarray(res.c2w, np.float64), clip.cameras.c2w), "baseline": baseline,
            "frames": clip.num_frames, "model_s": t1 - t0, "baseline_s": t2 - t1}


EVALUATORS = {"completion": eval_completion, "depth": eval_depth, "cameras": eval_cameras}


# ----------------------------------------------------------------------------------------------------
# driver


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summary_rows(per_clip: dict[str, dict]) -> list[dict]:
    """One row per (task, metric): means over clips of model and baseline, frames, seconds per clip."""
    rows = []
    for task, key, label, better in METRICS:
        results = [c[task] for c in per_clip.values() if task in c]
        if not results:
            continue
        rows.append({
            "task": task, "metric": label, "better": better,
            "model": _nanmean([r["model"][key] for r in results]),
            "baseline": _nanmean([r["baseline"][key] for r in results]),
            "baseline_name": BASELINE_NAMES[task],
            "clips": len(results), "frames": sum(r["frames"] for r in results),
            "model_s_per_clip": float(np.mean([r["model_s"] for r in results])),
            "baseline_s_per_clip": float(np.mean([r["baseline_s"] for r in results])),
            "key": key,
        })
    return rows


def evaluate(bundle, clip_paths: list[str], cfg: EvalConfig,
             progress: Callable[[float, str], None] | None = None) -> dict:
    """Run every task of `cfg` on every clip. Returns {"config", "model", "rows", "clips"} (JSON-able
    after `json_safe`). Fails before any work if a task's pipeline is unavailable."""
    cfg.validate()
    for task in cfg.tasks:
        pipeline(task)
    paths = clip_paths[: cfg.max_clips] if cfg.max_clips else list(clip_paths)
    if not paths:
        raise ValueError("no clips to evaluate")
    per_clip: dict[str, dict] = {}
    total, done = len(paths) * len(cfg.tasks), 0
    for path in paths:
        clip = load_eval_clip(path)
        name = os.path.basename(os.path.normpath(path))
        if name in per_clip:  # two --clips folders may both hold clip_00000
            name = os.path.normpath(path)
        per_clip[name] = {}
        for task in cfg.tasks:
            if progress:
                progress(done / total, f"{name} {task}")
            per_clip[name][task] = EVALUATORS[task](bundle, clip, cfg)
            done += 1
    if progress:
        progress(1.0, "done")
    model_info = bundle.info() if hasattr(bundle, "info") else {}
    return {"config": asdict(cfg), "model": model_info, "rows": summary_rows(per_clip), "clips": per_clip}


def json_safe(obj):
    """Strict-JSON copy: NaN/inf -> None, tuples -> lists, numpy scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def format_report(report: dict) -> str:
    """The summary table (backend/bench.format_table) without the internal `key` column."""
    from backend.bench import format_table

    return format_table([{k: v for k, v in r.items() if k != "key"} for r in report["rows"]])


def write_report(report: dict, path: str) -> None:
    """Write the report as strict JSON (atomic: temp file then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(json_safe(report), f, indent=2, allow_nan=False)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    from backend.pipelines.cli_common import add_model_args, add_sampling_args

    parser.add_argument("--clips", action="append", required=True, metavar="DIR",
                        help="a clip folder, or a folder of clip folders, with RGB, depth and cameras "
                             "(repeatable)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    parser.add_argument("--max-clips", type=int, default=0, help="evaluate at most this many clips (0 = all)")
    parser.add_argument("--out", default="eval_results.json", help="JSON report path")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(parser)
    add_sampling_args(parser, steps=20)


def run(args: argparse.Namespace) -> int:
    from backend.pipelines.cli_common import bundle_from_args, progress_bar, sampling_kwargs

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    cfg = EvalConfig(tasks=tasks, max_clips=args.max_clips, **sampling_kwargs(args))
    cfg.validate()
    paths = find_clips(args.clips, args.max_clips)
    try:
        for task in cfg.tasks:
            pipeline(task)
    except PipelineUnavailable as exc:
        print(f"parallax eval: error: {exc}", file=sys.stderr)
        return 2
    bundle = bundle_from_args(args)
    if args.quiet:
        report = evaluate(bundle, paths, cfg)
    else:
        with progress_bar("eval") as bar:
            report = evaluate(bundle, paths, cfg, bar)
    print(format_report(report))
    write_report(report, args.out)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m backend.eval.run ...`: the same as `parallax eval ...`."""
    parser = argparse.ArgumentParser(prog="parallax eval", description=__doc__.splitlines()[0])
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"parallax eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
