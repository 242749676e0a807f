"""Fast CPU forward splatting: the arithmetic of `kernels.splat.splat_reference` in a few fused passes.

The reference runs ~30 eager ops per point and view (projection, division, range tests, key packing),
each a full sweep over memory. Here the per-point maths of all views is one tensor expression per
block of source rows, compiled by TorchInductor's C++ backend into a single loop (the same idea as
the Triton kernels: fuse, then let one `scatter_reduce_` do the z-buffer). Without a working compiler
the very same functions run eagerly, still batched over views, which alone is several times faster
than the reference.

Exactness. The expressions repeat the reference's float32 operations in the reference's order:
p_r = ((M[r,0]·u) + (M[r,1]·v + M[r,2]))·z + M[r,3], then two correctly rounded divisions. Inductor
keeps that order, compiles with `-ffp-contract=off` (pinned below: an FMA would round once where the
reference rounds twice and move points across pixel borders), and never turns a tensor division into a
reciprocal multiply; so nearest mode is bit-identical to the reference (and to the Triton kernel),
which tests/test_splat.py checks. Soft mode's `exp` comes from a different vector library than
eager's: equal within float tolerance, like the Triton kernel.

Layout: one flat z-buffer of B·V·P keys (P = Ht·Wt) plus one dump slot at the end; a point that
misses sends its key there instead of being filtered out with a boolean index (which would copy).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable

import torch
from torch import Tensor

from kernels.splat import (
    SplatResult,
    _outputs,
    check_splat_inputs,
    composite_projection,
)
from kernels.splat import splat_reference as _reference

# (point, view) pairs per fused call: big enough to hide the ~0.1 ms call overhead of a compiled
# function, small enough that the int64 slot + key temporaries (16 B a pair) stay ~16 MiB.
CHUNK_PAIRS = 1 << 20
# High word of the empty z-buffer key: above every positive float's bits, so any hit replaces it.
_EMPTY_HIGH = 0x7FFFFFFF
# Compile only from this many (point, view) pairs up: a cold compilation costs 10-70 s of CPU once per
# machine (Inductor caches it on disk), which small warps (tests, previews) never earn back.
COMPILE_MIN_PAIRS = 1 << 20
# Inductor options for every compiled function: no FMA contraction (see the module docstring).
_COMPILE_OPTIONS = {"cpp.enable_floating_point_contract_flag": "off"}


def compile_enabled() -> bool:
    """Inductor allowed unless PARALLAX_NO_COMPILE=1 (e.g. no C++ compiler on the machine)."""
    return os.environ.get("PARALLAX_NO_COMPILE", "0") != "1"


@functools.cache
def _compiled(name: str) -> Callable:
    """torch.compile of the pass `name` (dynamic shapes: one compilation serves every size), cached."""
    return torch.compile(_PASSES[name], dynamic=True, fullgraph=True, options=_COMPILE_OPTIONS)


_BROKEN: set[str] = set()  # passes whose compilation failed once: eager from then on


def _run(compiled: bool, name: str, *args):
    """Run pass `name` compiled when asked and possible, else eagerly (same results)."""
    if compiled and name not in _BROKEN:
        try:
            return _compiled(name)(*args)
        except Exception:  # no C++ compiler, unsupported platform...: the eager maths is the same
            _BROKEN.add(name)
    return _PASSES[name](*args)


def use_compiled(device: torch.device, pairs: int) -> bool:
    """Dispatch rule of the fused passes: Inductor on CPU for big warps unless PARALLAX_NO_COMPILE=1."""
    return compile_enabled() and device.type == "cpu" and pairs >= COMPILE_MIN_PAIRS


def masked_depth(depth: Tensor, tau: float) -> Tensor:
    """float32 z with NaN where a pixel is not splatted: `source_validity`'s rule, in one pass.

    depth: (B, H, W); tau = edge threshold (math.inf disables the flying-pixel test). Returns (B, H, W).
    """
    z = depth.float()
    ok = torch.isfinite(z) & (z > 0)
    zn = torch.where(ok, z, math.nan)  # NaN fails every comparison below: invalid neighbours never count
    pad = torch.nn.functional.pad(zn, (1, 1, 1, 1), value=math.nan)  # (B, H + 2, W + 2)
    H, W = z.shape[1:]
    fly = torch.zeros_like(ok)
    for di, dj in ((0, -1), (0, 1), (-1, 0), (1, 0)):
        q = pad[:, 1 + di : 1 + di + H, 1 + dj : 1 + dj + W]
        fly = fly | ((zn - q).abs() > torch.minimum(zn, q) * tau)  # |z_p − z_q| > τ·min(z_p, z_q)
    return torch.where(fly, math.nan, zn)


def _project(z: Tensor, u: Tensor, v: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(u_t, v_t, z_t), each (B, V, h, W), in the reference's op order. z (B, h, W), u (W,), v (h,),
    m (B, V, 3, 4)."""
    zz = z[:, None]  # (B, 1, h, W)
    p = []
    for r in range(3):
        col = m[:, :, r, 0, None, None] * u  # (B, V, 1, W)
        row = m[:, :, r, 1, None, None] * v[:, None] + m[:, :, r, 2, None, None]  # (B, V, h, 1)
        p.append((col + row) * zz + m[:, :, r, 3, None, None])  # (B, V, h, W)
    return p[0] / p[2], p[1] / p[2], p[2]


def _nearest_pass(z: Tensor, u: Tensor, v: Tensor, m: Tensor, row0: int, Ht: int, Wt: int):
    """Flat z-buffer slot and 64-bit key of every (point, view) of a block of source rows.

    Key = float bits of z_t << 32 | source index (module docstring of kernels.splat). Returns two
    (B·V·h·W,) int64; misses go to the dump slot B·V·Ht·Wt.
    """
    B, h, W = z.shape
    V = m.shape[1]
    ut, vt, zt = _project(z, u, v, m)
    hit = (zt > 0) & (ut >= 0) & (ut < Wt) & (vt >= 0) & (vt < Ht)
    # ut, vt ≥ 0 where hit, so truncation is the floor; other lanes go to the dump slot
    pix = vt.to(torch.int64) * Wt + ut.to(torch.int64)
    image = torch.arange(B * V, device=z.device).view(B, V, 1, 1) * (Ht * Wt)  # (B, V, 1, 1)
    slot = torch.where(hit, pix + image, B * V * Ht * Wt)
    index = (torch.arange(h, device=z.device)[:, None] + row0) * W + torch.arange(W, device=z.device)  # (h, W)
    key = (zt.view(torch.int32).to(torch.int64) << 32) | index
    return slot.reshape(-1), key.reshape(-1)


def _nearest_gather(keys: Tensor, color: Tensor, out: SplatResult) -> None:
    """Write colour, depth and mask of each pixel's winning key into `out` (flat (B, V, …) views).

    keys: (B, V, P) int64 whose empty value has low word N, so the colour lookup of a hole reads the
    zero column appended to color (B, C, N) instead of needing a mask; its high word 0x7FFFFFFF
    (a NaN as float) is masked out of the depth.
    """
    B, V, P = keys.shape
    C = color.shape[1]
    words = keys.view(torch.int32).view(B, V, P, 2)  # little-endian: [..., 0] low, [..., 1] high
    mask = out.mask.view(B, V, P)
    torch.ne(words[..., 1], _EMPTY_HIGH, out=mask)
    zero = keys.new_zeros((), dtype=torch.float32)
    torch.where(mask, words[..., 1].view(torch.float32), zero, out=out.depth.view(B, V, P))  # NaN → 0
    src = words[..., 0].contiguous()  # (B, V, P) int32 source index, N in holes
    table = torch.nn.functional.pad(color, (0, 1))  # (B, C, N + 1), last column 0
    rgb = out.color.view(B, V, C, P)
    for b in range(B):
        for v in range(V):
            for c in range(C):  # a 1-D index_select per plane: the fastest CPU gather in eager torch
                torch.index_select(table[b, c], 0, src[b, v], out=rgb[b, v, c])


def _corners(ut: Tensor, vt: Tensor, zt: Tensor, Ht: int, Wt: int) -> tuple[Tensor, Tensor]:
    """Flat slot (dump for misses) and bilinear weight of the 4 corners, each (4, B, V, h, W); the
    reference's `_soft_corners` rule and op order."""
    B, V = ut.shape[:2]
    us, vs = ut - 0.5, vt - 0.5  # relative to pixel centres
    inside = (zt > 0) & (us >= -1) & (us < Wt) & (vs >= -1) & (vs < Ht)
    x0, y0 = torch.floor(us), torch.floor(vs)
    fx, fy = us - x0, vs - y0
    x0i, y0i = x0.to(torch.int64), y0.to(torch.int64)
    image = torch.arange(B * V, device=ut.device).view(B, V, 1, 1) * (Ht * Wt)  # (B, V, 1, 1)
    slots, weights = [], []
    for dy in (0, 1):
        for dx in (0, 1):
            x, y = x0i + dx, y0i + dy
            w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
            ok = inside & (x >= 0) & (x < Wt) & (y >= 0) & (y < Ht) & (w > 0)
            slots.append(torch.where(ok, y * Wt + x + image, B * V * Ht * Wt))
            weights.append(torch.where(ok, w, 0.0))
    return torch.stack(slots), torch.stack(weights)


def _soft_front_pass(z: Tensor, u: Tensor, v: Tensor, m: Tensor, Ht: int, Wt: int):
    """Slots (4·B·V·h·W,) int64 and z_t per slot, for the z_front scatter_reduce_('amin')."""
    ut, vt, zt = _project(z, u, v, m)
    slot, _w = _corners(ut, vt, zt, Ht, Wt)
    return slot.reshape(-1), zt.expand_as(slot).reshape(-1)


def _soft_accumulate_pass(
    z: Tensor, color: Tensor, u: Tensor, v: Tensor, m: Tensor, front: Tensor, k: float, Ht: int, Wt: int
):
    """Slots (4·B·V·h·W,) and rows (…, C + 2) = weight, weight·z, weight·colour for index_add_.

    color: (B, C, h, W) of the same source rows; front: flat z_front (B·V·P + 1,).
    """
    C = color.shape[1]
    ut, vt, zt = _project(z, u, v, m)
    slot, bil = _corners(ut, vt, zt, Ht, Wt)  # (4, B, V, h, W)
    zf = front[slot]
    w = torch.where(bil > 0, bil * torch.exp(-k * ((zt - zf) / zf)), 0.0)  # (4, B, V, h, W)
    vals = torch.cat([zt[:, :, None], color[:, None].expand(-1, zt.shape[1], -1, -1, -1)], dim=2)  # (B, V, 1 + C, h, W)
    rows = torch.cat([w[:, :, :, None], w[:, :, :, None] * vals[None]], dim=3)  # (4, B, V, C + 2, h, W)
    return slot.reshape(-1), rows.movedim(3, -1).reshape(-1, C + 2)


def _soft_normalise(acc: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted means from sums acc (B, V, P, C + 2): colour (B, V, C, P), depth, mask (B, V, P)."""
    wsum = acc[..., 0]
    mask = wsum > eps
    mean = acc[..., 1:] / torch.where(mask, wsum, 1.0)[..., None]
    mean = torch.where(mask[..., None], mean, 0.0)  # (B, V, P, C + 1)
    return mean[..., 1:].transpose(2, 3), mean[..., 0], mask


_PASSES: dict[str, Callable] = {
    "masked_depth": masked_depth,
    "nearest": _nearest_pass,
    "soft_front": _soft_front_pass,
    "soft_accumulate": _soft_accumulate_pass,
    "normalise": _soft_normalise,
}


def _row_blocks(B: int, V: int, H: int, W: int, corners: int = 1):
    """Slices of source rows holding about CHUNK_PAIRS (point, view, corner) triples each."""
    step = max(1, CHUNK_PAIRS // max(1, B * V * W * corners))
    return [slice(r0, min(H, r0 + step)) for r0 in range(0, H, step)]


def _nearest(rgb: Tensor, z: Tensor, M: Tensor, Ht: int, Wt: int, out: SplatResult, compiled: bool) -> None:
    """z-buffer by fused key passes + scatter_reduce_('amin'), then the winners' colour and depth."""
    B, H, W = z.shape
    V = M.shape[1]
    empty = (_EMPTY_HIGH << 32) | H * W  # low word N: the zero colour column (see _nearest_gather)
    keys = torch.full((B * V * Ht * Wt + 1,), empty, dtype=torch.int64, device=z.device)  # + dump slot
    u = torch.arange(W, dtype=torch.float32, device=z.device) + 0.5  # pixel centres (W,)
    v = torch.arange(H, dtype=torch.float32, device=z.device) + 0.5  # (H,)
    for rows in _row_blocks(B, V, H, W):
        slot, key = _run(compiled, "nearest", z[:, rows], u, v[rows], M, rows.start, Ht, Wt)
        keys.scatter_reduce_(0, slot, key, "amin")  # include_self: the buffer holds the running minimum
    _nearest_gather(keys[:-1].view(B, V, Ht * Wt), rgb, out)


def _soft(rgb: Tensor, z: Tensor, M: Tensor, Ht: int, Wt: int, k: float, eps: float, compiled: bool):
    """Depth-aware bilinear splatting: a z_front pass (amin scatter), then weighted sums (index_add_)."""
    B, H, W = z.shape
    C, V, P = rgb.shape[1], M.shape[1], Ht * Wt
    u = torch.arange(W, dtype=torch.float32, device=z.device) + 0.5  # (W,)
    v = torch.arange(H, dtype=torch.float32, device=z.device) + 0.5  # (H,)
    blocks = _row_blocks(B, V, H, W, corners=4)
    front = torch.full((B * V * P + 1,), math.inf, device=z.device)  # z_front, + dump slot
    for rows in blocks:
        slot, zt = _run(compiled, "soft_front", z[:, rows], u, v[rows], M, Ht, Wt)
        front.scatter_reduce_(0, slot, zt, "amin")
    acc = torch.zeros(B * V * P + 1, C + 2, device=z.device)  # weight, weight·z, weight·colour
    color = rgb.view(B, C, H, W)
    for rows in blocks:
        slot, vals = _run(compiled, "soft_accumulate", z[:, rows], color[:, :, rows], u, v[rows], M, front, k, Ht, Wt)
        acc.index_add_(0, slot, vals)
    return _run(compiled, "normalise", acc[:-1].view(B, V, P, C + 2), eps)


def splat_cpu(
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
    compiled: bool | None = None,
) -> SplatResult:
    """Fast torch forward splatting with `splat_reference`'s arguments and result (nearest: bit-identical).

    `out` (contiguous float32 colour and depth, bool mask) is written in place when given: reusing it
    across calls saves the page faults of fresh output memory. `compiled`: force the Inductor passes on
    or off (None: `use_compiled`). Eager soft mode is the reference itself (batching does not pay there).
    """
    check_splat_inputs(color, depth, K_src, c2w_src, K_tgt, c2w_tgt, out_hw, mode, edge_threshold)
    B, C, H, W = color.shape
    V = K_tgt.shape[1]
    Ht, Wt = (int(s) for s in out_hw)
    if compiled is None:
        compiled = use_compiled(color.device, B * V * H * W)
    if mode == "soft" and not compiled:
        return _reference(
            color, depth, K_src, c2w_src, K_tgt, c2w_tgt, out_hw, mode, edge_threshold, soft_sharpness, soft_eps, out
        )
    tau = math.inf if edge_threshold is None else float(edge_threshold)
    z = _run(compiled, "masked_depth", depth.float().contiguous(), tau)  # (B, H, W), NaN = not splatted
    M = composite_projection(K_src, c2w_src, K_tgt, c2w_tgt)  # (B, V, 3, 4)
    rgb = color.float().reshape(B, C, H * W).contiguous()  # (B, C, N)
    res = _outputs(out, B, V, C, Ht, Wt, color.device)
    if mode == "nearest":
        _nearest(rgb, z, M, Ht, Wt, res, compiled)
        return res
    col, dep, mask = _soft(rgb, z, M, Ht, Wt, float(soft_sharpness), float(soft_eps), compiled)
    res.color.copy_(col.reshape(B, V, C, Ht, Wt))
    res.depth.copy_(dep.reshape(B, V, Ht, Wt))
    res.mask.copy_(mask.reshape(B, V, Ht, Wt))
    return res
