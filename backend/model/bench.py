"""`parallax bench model`: DiT forward throughput as a fraction of this machine's own matmul rate.

Both numbers are measured in the same run. The matmul rate is that of square (d × d) @ (d × d)
products at the preset's width d, in the same dtype; the model rate is analytic FLOPs (matmuls and
attention, 2 per multiply-add) divided by the measured forward time. Token count: one clip of
4 × 12 × 14 tokens per modality (N = 672, L = 3N = 2016 ≈ 2k tokens), batch 1, every σ distinct
per modality. bf16 runs under torch.autocast (weights stay fp32; on the CPU attention itself runs in
fp32, where the flash kernel is faster). Timings are the best of several repeats, the most stable
statistic on a shared machine. wan-1.3b is only sized (parameters, FLOPs) on the CPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from backend.model.config import DiTConfig, preset
from backend.model.dit import DiT

GRID = (4, 12, 14)  # tokens per modality along (f, h, w): N = 672, L = 2016
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def configure(parser: argparse.ArgumentParser) -> None:
    """Suite-specific options (`--compile`); --threads is `parallax bench`'s own."""
    parser.add_argument("--compile", action="store_true", help="torch.compile each DiT block first")


def model_flops(cfg: DiTConfig, tokens: int, text_tokens: int = 0) -> float:
    """Matmul + attention FLOPs of one forward at `tokens` tokens (2 FLOPs per multiply-add).

    Per block: q/k/v/o 8·L·d², FFN 4·L·d·m, attention scores and weighted values 4·L²·d; text
    cross-attention adds 4·L·d² + 4·Lc·d² + 4·L·Lc·d. Patch embedding, head and the time MLPs
    (run once per distinct σ) are below 1 % and not counted.
    """
    L, d = tokens, cfg.dim
    block = 8 * L * d * d + 4 * L * d * cfg.mlp_dim + 4 * L * L * d
    if cfg.text_dim is not None and text_tokens:
        block += 4 * L * d * d + 4 * text_tokens * d * d + 4 * L * text_tokens * d
    return float(cfg.depth * block)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_times(fns: list, device: torch.device, repeats: int, inner: list[int]) -> list[float]:
    """Best seconds per call of each fn, the fns interleaved try by try after one warm-up each.

    Interleaving exposes the baseline and the model to the same load from other processes.
    """
    for fn in fns:
        fn()
    _sync(device)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, (fn, n) in enumerate(zip(fns, inner)):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            best[i] = min(best[i], (time.perf_counter() - t0) / n)
    return best


def measure(model: DiT, dtype: torch.dtype, device: torch.device, repeats: int) -> tuple[float, float]:
    """(model GFLOP/s on the GRID clip, batch 1; GFLOP/s of square d × d matmuls), same dtype, interleaved."""
    n = model.cfg.dim
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    pt, ph, pw = model.cfg.patch
    layout = model.token_layout(GRID[0] * pt, GRID[1] * ph, GRID[2] * pw)
    x = torch.randn(1, layout.length, layout.patch_dim, device=device) * layout.channel_mask(device)
    sigma = torch.rand(1, layout.length, device=device)
    flops = model_flops(model.cfg, layout.length)

    def step() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(x, sigma, layout)

    inner = max(1, int(flops // (2 * n**3)))  # as many FLOPs per matmul try as per forward
    t_model, t_mm = _best_times([step, lambda: torch.mm(a, b)], device, repeats, [1, inner])
    return flops / t_model / 1e9, 2 * n**3 / t_mm / 1e9


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _row(name, dtype, tokens, params, gflop, model_rate, mm_rate, note) -> dict:
    ratio = model_rate / mm_rate if model_rate and mm_rate else float("nan")
    return {"preset": name, "dtype": dtype, "tokens": tokens, "params_M": params / 1e6, "GFLOP/fwd": gflop,
            "model_GFLOP/s": model_rate, "matmul_GFLOP/s": mm_rate, "ratio": ratio, "note": note}


def run_suite(args: argparse.Namespace) -> list[dict]:
    """One row per (preset, dtype): model FLOP/s over the matmul rate at the preset's width."""
    device = _device(getattr(args, "device", "auto"))
    quick = bool(getattr(args, "quick", False))
    use_compile = bool(getattr(args, "compile", False))
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    repeats = 3 if quick else 7
    tokens = 3 * GRID[0] * GRID[1] * GRID[2]
    names = ["tiny", "small", "wan-1.3b"]
    rows: list[dict] = []
    for name in names:
        cfg = preset(name)
        gflop = model_flops(cfg, tokens) / 1e9
        if name == "wan-1.3b" and device.type == "cpu":
            with torch.device("meta"):
                params = DiT(cfg).num_params()
            rows.append(_row(name, "-", tokens, params, gflop, None, None, "skipped on CPU (size only)"))
            continue
        torch.manual_seed(0)
        model = DiT(cfg).to(device).eval()
        if use_compile:
            for block in model.blocks:
                block.compile()
        for label, dtype in DTYPES.items():
            achieved, mm = measure(model, dtype, device, repeats)
            note = f"{torch.get_num_threads()} threads" if device.type == "cpu" else device.type
            note += ", compiled blocks" if use_compile else ""
            rows.append(_row(name, label, tokens, model.num_params(), gflop, achieved, mm, note))
        del model
    return rows
