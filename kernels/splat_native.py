"""Host wrapper of the native CPU splat (kernels/csrc/splat.c): what CPU users run when a C compiler exists.

Same arguments and result as `kernels.splat.splat_reference`; nearest mode is bit-identical to it
(tests/test_splat_native.py), soft mode equal within float tolerance. Scratch buffers (z-buffer keys,
or z_front and the weighted sums) are torch tensors handed to C by pointer; the C code releases the
GIL (ctypes does) and runs `torch.get_num_threads()` OpenMP threads.
"""

from __future__ import annotations

import ctypes
import functools
import math

import torch
from torch import Tensor

from kernels import native
from kernels.splat import SplatResult, _outputs, check_splat_inputs, composite_projection

_P, _I64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SIGNATURES = {
    "parallax_masked_depth": ([_P, _P, _P, _I64, _I64, _I64, _F32, _INT], None),  # depth, z, scratch, B, H, W, tau
    # z, M, color, B, C, H, W, V, Ht, Wt, keys, rows, out colour, depth, mask, threads
    "parallax_splat_nearest": ([_P, _P, _P, *[_I64] * 7, _P, _P, _P, _P, _P, _INT], None),
    # z, M, color, B, C, H, W, V, Ht, Wt, k, eps, front, acc, rows, out colour, depth, mask, threads
    "parallax_splat_soft": ([_P, _P, _P, *[_I64] * 7, _F32, _F32, _P, _P, _P, _P, _P, _P, _INT], None),
    "parallax_has_openmp": ([], _INT),
}
# int64 words of row scratch per thread and source column (ROW_SCRATCH in splat.c)
ROW_SCRATCH = 4
# Bytes of per-thread z-buffers (or soft sums) a call may hold; beyond it fewer threads take whole planes.
SCRATCH_BUDGET = 1 << 30


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = native.load("splat")
    if lib is None:
        return None
    for fn, (argtypes, restype) in _SIGNATURES.items():
        getattr(lib, fn).argtypes = argtypes
        getattr(lib, fn).restype = restype
    return lib


def available() -> bool:
    """True when the native library is built (or builds now) and loads; see kernels.native.build_error."""
    return _library() is not None


def has_openmp() -> bool:
    """True when the library runs its loops on several threads (built with OpenMP)."""
    lib = _library()
    return lib is not None and bool(lib.parallax_has_openmp())


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def _threads() -> int:
    """torch's thread count, or 1 in a forked child (kernels.native.forked_child): the OpenMP runtime,
    which these kernels share with torch, does not survive fork() once its thread pool has started, and
    the child would hang in its first parallel region (torch runs single-threaded there too)."""
    return 1 if native.forked_child() else max(1, torch.get_num_threads())


def _layout(planes: int, per_plane_bytes: int) -> tuple[int, int]:
    """(threads, private scratch copies): whole planes per thread when planes >= threads, each thread
    with its own scratch (fewer threads if SCRATCH_BUDGET would be exceeded); else one shared plane's
    scratch split into bands of pixels."""
    threads = _threads()
    if planes < threads:
        return threads, 1
    threads = max(1, min(threads, SCRATCH_BUDGET // max(1, per_plane_bytes)))
    return threads, threads


def masked_depth(depth: Tensor, edge_threshold: float | None) -> Tensor:
    """float32 (B, H, W) z with NaN where a pixel is not splatted (kernels.splat.source_validity's rule)."""
    lib = _library()
    if lib is None:
        raise RuntimeError(f"native splat unavailable: {native.build_error('splat')}")
    d = depth.detach().float().contiguous()
    z, scratch = torch.empty_like(d), torch.empty_like(d)
    tau = math.inf if edge_threshold is None else float(edge_threshold)
    lib.parallax_masked_depth(_ptr(d), _ptr(z), _ptr(scratch), *d.shape, tau, _threads())
    return z


def splat_native(
    color: Tensor,
    depth: Tensor,
    K_src: Tensor,
    c2w_src: Tensor,
    K_tgt: Tensor,
    c2w_tgt: Tensor,
    out_hw: tuple[int, int],
    mode: str = "nearest",
    edge_threshold: float | None = 0.1,
    soft_sharpness: float = 50.0,
    soft_eps: float = 1e-2,
    out: SplatResult | None = None,
) -> SplatResult:
    """Forward splatting in C on CPU tensors; writes into `out` when given (checked like splat_triton's)."""
    check_splat_inputs(color, depth, K_src, c2w_src, K_tgt, c2w_tgt, out_hw, mode, edge_threshold)
    named = {"color": color, "depth": depth, "K_src": K_src, "c2w_src": c2w_src, "K_tgt": K_tgt, "c2w_tgt": c2w_tgt}
    for name, t in named.items():
        if t.device.type != "cpu":
            raise ValueError(f"splat_native needs CPU tensors, {name} is on {t.device}")
    lib = _library()
    if lib is None:
        raise RuntimeError(f"native splat unavailable: {native.build_error('splat')}")
    B, C, H, W = color.shape
    V = K_tgt.shape[1]
    Ht, Wt = (int(s) for s in out_hw)
    if H * W >= 2**32:
        raise ValueError(f"source image of {H}x{W} pixels is too large (the z-buffer key holds a 32-bit index)")
    res = _outputs(out, B, V, C, Ht, Wt, color.device)
    if B * V == 0:
        return res
    z = masked_depth(depth, edge_threshold)  # (B, H, W)
    M = composite_projection(K_src, c2w_src, K_tgt, c2w_tgt)  # (B, V, 3, 4) float32, contiguous
    rgb = color.detach().float().reshape(B, C, H * W).contiguous()  # (B, C, N)
    shape = (B, C, H, W, V, Ht, Wt)
    outs = (_ptr(res.color), _ptr(res.depth), _ptr(res.mask))
    P = Ht * Wt
    if mode == "nearest":
        threads, copies = _layout(B * V, P * 8)
        keys = torch.empty(copies * P, dtype=torch.int64)  # z-buffers, filled by the C code
        rows = torch.empty(threads * ROW_SCRATCH * W, dtype=torch.int64)
        lib.parallax_splat_nearest(_ptr(z), _ptr(M), _ptr(rgb), *shape, _ptr(keys), _ptr(rows), *outs, threads)
        return res
    threads, copies = _layout(B * V, P * (C + 3) * 4)
    front = torch.empty(copies * P, dtype=torch.float32)  # z_front
    acc = torch.empty(copies * P * (C + 2), dtype=torch.float32)  # weight, weight·z, weight·colour
    rows = torch.empty(threads * ROW_SCRATCH * W, dtype=torch.int64)
    k, eps = float(soft_sharpness), float(soft_eps)
    lib.parallax_splat_soft(
        _ptr(z), _ptr(M), _ptr(rgb), *shape, k, eps, _ptr(front), _ptr(acc), _ptr(rows), *outs, threads
    )
    return res
