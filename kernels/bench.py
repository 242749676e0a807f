"""`parallax bench kernels`: each kernel's paths as ratios against baselines measured in the same run.

CPU: the torch reference against one `scatter_reduce_` ('amin', int64 keys) over the same points and
target slots the splat itself scatters (the irreducible z-buffer pass), and the ray map against a copy
of its output's bytes. GPU: the Triton kernel against the torch reference, and against a bandwidth
bound: the bytes the kernel must move (inputs read once, outputs and z-buffer written and read once)
divided by the device copy bandwidth measured by a large tensor copy in the same run.
Times are the best of several runs after a warm-up; absolute milliseconds appear only beside baselines.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable

import torch

from kernels import splat as S
from kernels import splat_cpu as SC
from kernels import splat_native as SN

# (source H, W, views, target H, W) per suite size; quick is a CI smoke run (no Inductor compilation).
QUICK_SIZES = [(48, 64, 2, 48, 64), (96, 128, 4, 96, 128)]
FULL_SIZES = [
    (256, 384, 4, 256, 384),
    (720, 1280, 4, 720, 1280),
    (720, 1280, 8, 720, 1280),
    (1536, 2048, 16, 1536, 2048),
]


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(choice)


def _best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Least wall time in seconds of fn() over `repeats` calls after one warm-up call (which also compiles
    Triton). The minimum, not the median: on a shared machine other work only ever adds time, so the
    fastest run is the least noisy estimate of what the code itself costs (path and baseline alike)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def _scene(h: int, w: int, views: int, ht: int, wt: int, device: torch.device):
    """A plane with a near box, random colours, targets on a small arc around the source camera."""
    gen = torch.Generator().manual_seed(0)
    color = torch.rand(1, 3, h, w, generator=gen)
    depth = 3.0 + torch.linspace(0.0, 1.0, h)[None, :, None].expand(1, h, w).clone()
    depth[:, h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 1.5
    f = 0.9 * max(h, w)
    K = torch.tensor([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])[None]
    K_tgt = torch.tensor([[f * wt / w, 0.0, wt / 2], [0.0, f * ht / h, ht / 2], [0.0, 0.0, 1.0]])
    c2w_tgt = torch.eye(4).repeat(1, views, 1, 1)
    for v in range(views):
        a = 0.1 * (v / max(views - 1, 1) - 0.5)  # yaw in radians
        c2w_tgt[0, v, 0, 0] = c2w_tgt[0, v, 2, 2] = math.cos(a)
        c2w_tgt[0, v, 0, 2], c2w_tgt[0, v, 2, 0] = math.sin(a), -math.sin(a)
        c2w_tgt[0, v, 0, 3] = 0.3 * a
    args = (color, depth, K, torch.eye(4)[None], K_tgt.repeat(1, views, 1, 1), c2w_tgt)
    return tuple(t.to(device) for t in args)


def _scatter_baseline(args, ht: int, wt: int) -> Callable[[], object]:
    """One scatter_reduce_('amin') of int64 keys over the points and slots the splat scatters."""
    color, depth, K, c2w, K_tgt, c2w_tgt = args
    _, z, M = S._prepare(color, depth, K, c2w, K_tgt, c2w_tgt, 0.1)
    slots, keys = [], []
    for _view, _rows, ut, vt, zt in S._project_chunks(z, M):  # set-up, not timed
        hit = (zt > 0) & (ut >= 0) & (ut < wt) & (vt >= 0) & (vt < ht)
        slots.append(torch.where(hit, vt.long() * wt + ut.long(), ht * wt).flatten())
        keys.append(zt.view(torch.int32).long().flatten() << 32)
    slot, key = torch.cat(slots), torch.cat(keys)
    buf = torch.full((ht * wt + 1,), S._EMPTY, dtype=torch.int64, device=slot.device)
    return lambda: buf.scatter_reduce_(0, slot, key, "amin")


def _copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device copy (read + write counted)."""
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / _best_time(lambda: dst.copy_(src), device, 5)


def _splat_bytes(h: int, w: int, views: int, ht: int, wt: int, mode: str) -> int:
    """Bytes a splat cannot avoid: source read once, z-buffer written and read, outputs written."""
    src = h * w * 4 * 4  # depth + 3 colour channels
    zbuf = views * ht * wt * (8 if mode == "nearest" else 4 * (1 + 5)) * 2  # keys, or z_front + sums
    out = views * ht * wt * (4 * 4 + 1)  # colour, depth, mask
    return src + zbuf + out


def _row(kernel: str, size: str, device: str, path: str, vs: str, ratio: float, base_s: float) -> dict:
    return {
        "kernel": kernel,
        "size": size,
        "device": device,
        "path": path,
        "vs": vs,
        "ratio": ratio,
        "baseline_ms": round(base_s * 1e3, 3),
    }


def _native_rows(kernel: str, size: str, args, hw, mode: str, base: float, repeats: int) -> list[dict]:
    """The C kernels (kernels/csrc/splat.c): with fresh outputs, and writing into reused ones (`out=`),
    which spares the page faults of fresh memory, as the baseline's own preallocated buffer does."""
    if not SN.available():
        return []
    fresh = _best_time(functools.partial(SN.splat_native, *args, hw, mode=mode), torch.device("cpu"), repeats)
    out = S._outputs(None, 1, args[4].shape[1], args[0].shape[1], *hw, "cpu")
    reused = _best_time(functools.partial(SN.splat_native, *args, hw, mode=mode, out=out), torch.device("cpu"), repeats)
    return [
        _row(kernel, size, "cpu", "native", "scatter_reduce_", fresh / base, base),
        _row(kernel, size, "cpu", "native out=", "scatter_reduce_", reused / base, base),
    ]


def _splat_rows(
    device: torch.device, sizes, repeats: int, bandwidth: float | None, inductor: bool = True
) -> list[dict]:
    rows = []
    for h, w, views, ht, wt in sizes:
        args = _scene(h, w, views, ht, wt, device)
        size = f"{h}x{w}->{views}x{ht}x{wt}"
        for mode in ("nearest", "soft"):
            kernel = f"splat-{mode}"
            ref = _best_time(lambda m=mode, a=args, hw=(ht, wt): S.splat_reference(*a, hw, mode=m), device, repeats)
            if device.type == "cpu":
                base = _best_time(_scatter_baseline(args, ht, wt), device, repeats)
                rows.append(_row(kernel, size, "cpu", "reference", "scatter_reduce_", ref / base, base))
                fused_paths = (("fused-eager", False), ("fused-inductor", True))[: 2 if inductor else 1]
                for path, compiled in fused_paths:
                    fn = functools.partial(SC.splat_cpu, *args, (ht, wt), mode=mode, compiled=compiled)
                    fused = _best_time(fn, device, repeats)  # the warm-up call compiles (disk-cached)
                    rows.append(_row(kernel, size, "cpu", path, "scatter_reduce_", fused / base, base))
                rows += _native_rows(kernel, size, args, (ht, wt), mode, base, repeats)
                continue
            tri = _best_time(lambda m=mode, a=args, hw=(ht, wt): S.splat_triton(*a, hw, mode=m), device, repeats)
            bound = _splat_bytes(h, w, views, ht, wt, mode) / bandwidth
            rows.append(_row(kernel, size, "cuda", "triton", "reference", tri / ref, ref))
            rows.append(_row(kernel, size, "cuda", "triton", "bandwidth-bound", tri / bound, bound))
    return rows


def _ray_rows(device: torch.device, sizes, repeats: int, bandwidth: float | None) -> list[dict]:
    """Plücker ray maps, when kernels/rays.py is there: one ray map per target view."""
    try:
        from kernels import rays
    except ImportError:
        return []
    rows = []
    for _h, _w, views, ht, wt in sizes:
        K = torch.tensor([[0.9 * wt, 0.0, wt / 2], [0.0, 0.9 * wt, ht / 2], [0.0, 0.0, 1.0]]).repeat(views, 1, 1)
        c2w = torch.eye(4).repeat(views, 1, 1)
        c2w[:, :3, 3] = torch.linspace(-1.0, 1.0, views)[:, None]
        K, c2w = K.to(device), c2w.to(device)
        size = f"{views}x{ht}x{wt}"
        ref = _best_time(lambda K=K, c2w=c2w, hw=(ht, wt): rays.plucker_rays_reference(K, c2w, *hw), device, repeats)
        if device.type == "cpu":
            out = torch.empty(views, 6, ht, wt)
            dst = torch.empty_like(out)
            base = _best_time(lambda o=out, d=dst: d.copy_(o), device, repeats)
            rows.append(_row("rays", size, "cpu", "reference", "copy of output", ref / base, base))
            continue
        tri = _best_time(lambda K=K, c2w=c2w, hw=(ht, wt): rays.plucker_rays_triton(K, c2w, *hw), device, repeats)
        bound = views * 6 * ht * wt * 4 / bandwidth
        rows.append(_row("rays", size, "cuda", "triton", "reference", tri / ref, ref))
        rows.append(_row("rays", size, "cuda", "triton", "bandwidth-bound", tri / bound, bound))
    return rows


def run_suite(args: argparse.Namespace) -> list[dict]:
    """Rows of ratios for `parallax bench kernels` (args.quick: bool, args.device: auto|cpu|cuda)."""
    device = _device(getattr(args, "device", "auto"))
    if getattr(args, "threads", None):  # `parallax bench --threads` (backend/bench.py)
        torch.set_num_threads(int(args.threads))
    quick = bool(getattr(args, "quick", False))
    sizes = QUICK_SIZES if quick else FULL_SIZES
    repeats = 5
    bandwidth = _copy_bandwidth(device) if device.type == "cuda" else None
    # quick (CI smoke) skips the Inductor path: its cold compilation alone takes tens of seconds
    rows = _splat_rows(device, sizes, repeats, bandwidth, inductor=not quick)
    rows += _ray_rows(device, sizes, repeats, bandwidth)
    if bandwidth is not None:
        rows.append(
            _row(
                "copy",
                "256 MiB",
                "cuda",
                "torch copy_",
                f"{bandwidth / 1e9:.0f} GB/s",
                1.0,
                2 * 256 * 2**20 / bandwidth,
            )
        )
    return rows


def configure(parser: argparse.ArgumentParser) -> None:
    """No options of its own: --quick, --device and --threads come from `parallax bench`."""
