"""Forward splatting of an RGB-D image into target cameras with a z-buffer: Triton beside torch.

Every valid source pixel is lifted to 3D with its z-depth, projected into each target camera and
written into the target image; where several points land on one pixel the nearest wins (a z-buffer,
Catmull 1974), as in the point-cloud warps of ViewCrafter, GEN3C and TrajectoryCrafter.

Rules shared exactly by the reference and the Triton kernels:

- Source pixel (i, j) has continuous centre (u, v) = (j + 0.5, i + 0.5) and z-depth z (see
  backend/geometry/projection.py). It is *valid* when z is finite and z > 0.
- Flying pixels: a valid pixel p is dropped when some valid 4-neighbour q (inside the image) has
  |z_p − z_q| > τ · min(z_p, z_q), τ = `edge_threshold` (float32 arithmetic; None disables the test).
  Depth maps blur across occlusion boundaries; these in-between points would float in mid-air.
- Projection uses one 3×4 matrix per (batch, view), M = K_tgt · w2c_tgt · c2w_src · diag(K_src⁻¹, 1),
  composed in float64 and rounded to float32 once, then per point and row r in fixed float32 order:
  p_r = ((M[r,0]·u) + (M[r,1]·v + M[r,2]))·z + M[r,3]; u_t = p_0 / p_2, v_t = p_1 / p_2 (correctly
  rounded), z_t = p_2. Fixing the order (and turning off FMA contraction in Triton) makes the two
  paths agree bit for bit, which the nearest mode needs.
- nearest: the point lands in pixel (⌊v_t⌋, ⌊u_t⌋) when z_t > 0, 0 ≤ u_t < W_t, 0 ≤ v_t < H_t. Its
  key is (float32 bits of z_t) << 32 | (source index i·W + j); positive floats order like their
  bits, so the minimum key is the nearest point, ties going to the lower source index. A gather
  pass then reads colour and depth of the winner. Holes get colour 0, depth 0, mask False.
- soft: bilinear splatting to the 4 pixel centres around (u_t − ½, v_t − ½). z_front of a target
  pixel is the smallest z_t among points with a positive bilinear weight on it; a point's weight
  there is bilinear · exp(−k·(z_t − z_front)/z_front) (k = `soft_sharpness`), so surfaces behind the
  front one fade out instead of bleeding through (a depth-aware variant of softmax splatting,
  Niklaus & Liu 2020). Colour and depth are weighted means; mask where the summed weight > `soft_eps`.

Outputs are float32: colour (B, V, C, H_t, W_t), depth (B, V, H_t, W_t), mask (B, V, H_t, W_t) bool.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from backend.geometry.projection import invert_pose, pixel_centres
from kernels import native  # noqa: F401  (imported early: its at-fork hook must see every fork)
from kernels.dispatch import has_triton, use_triton

MODES = ("nearest", "soft")
# Source pixels per Triton program (each program loops over the views).
BLOCK_POINTS = 512
# Source points per block of the CPU reference (keeps its temporaries in cache).
CHUNK_POINTS = 1 << 16
# Target pixels per program of the gather / normalise kernels.
BLOCK_PIXELS = 512
# Empty z-buffer key: larger than every real key (real keys have a positive-float high word).
_EMPTY = torch.iinfo(torch.int64).max
# Empty z_front bits: above the bits of +inf, so any real depth replaces it under atomic min.
_EMPTY32 = torch.iinfo(torch.int32).max


class SplatResult(NamedTuple):
    color: Tensor  # (B, V, C, Ht, Wt) float32, 0 in holes
    depth: Tensor  # (B, V, Ht, Wt) float32 target z-depth, 0 in holes
    mask: Tensor  # (B, V, Ht, Wt) bool, True where something landed


def check_splat_inputs(
    color, depth, K_src, c2w_src, K_tgt, c2w_tgt, out_hw, mode: str = "nearest", edge_threshold: float | None = 0.1
) -> None:
    """Input checks shared by every path (shapes, dtypes, then the options); ValueError naming the bad field."""
    if not isinstance(color, Tensor) or color.ndim != 4:
        raise ValueError(f"color must be a (B, C, H, W) tensor, got {getattr(color, 'shape', type(color))}")
    B, _C, H, W = color.shape
    expect = {
        "depth": (depth, (B, H, W)),
        "K_src": (K_src, (B, 3, 3)),
        "c2w_src": (c2w_src, (B, 4, 4)),
    }
    for name, (t, shape) in expect.items():
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {getattr(t, 'shape', type(t))}")
    ok_k = isinstance(K_tgt, Tensor) and K_tgt.ndim == 4 and K_tgt.shape[0] == B and K_tgt.shape[2:] == (3, 3)
    if not ok_k:
        raise ValueError(f"K_tgt must have shape (B={B}, V, 3, 3), got {getattr(K_tgt, 'shape', None)}")
    V = K_tgt.shape[1]
    if not isinstance(c2w_tgt, Tensor) or tuple(c2w_tgt.shape) != (B, V, 4, 4):
        raise ValueError(f"c2w_tgt must have shape {(B, V, 4, 4)}, got {getattr(c2w_tgt, 'shape', None)}")
    if len(out_hw) != 2 or any(isinstance(s, bool) or int(s) != s or s <= 0 for s in out_hw):
        raise ValueError(f"out_hw must be two positive ints (Ht, Wt), got {out_hw!r}")
    if not color.is_floating_point() or not depth.is_floating_point():
        raise ValueError(f"color and depth must be floating, got {color.dtype} and {depth.dtype}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if edge_threshold is not None and not edge_threshold > 0:
        raise ValueError(f"edge_threshold must be > 0 or None, got {edge_threshold!r}")


def composite_projection(K_src: Tensor, c2w_src: Tensor, K_tgt: Tensor, c2w_tgt: Tensor) -> Tensor:
    """M = K_tgt · w2c_tgt · c2w_src · diag(K_src⁻¹, 1) for every (batch, view), composed in float64.

    Maps (u·z, v·z, z, 1) of a source pixel to homogeneous target pixels. Returns (B, V, 3, 4) float32.
    """
    Ks, Ps = K_src.double(), c2w_src.double()  # (B, 3, 3), (B, 4, 4)
    rel = invert_pose(c2w_tgt.double()) @ Ps[:, None]  # (B, V, 4, 4) source camera → target camera
    P = K_tgt.double() @ rel[..., :3, :]  # (B, V, 3, 4)
    M = torch.cat([P[..., :3] @ torch.linalg.inv(Ks)[:, None], P[..., 3:]], dim=-1)  # (B, V, 3, 4)
    return M.float().contiguous()


def source_validity(depth: Tensor, edge_threshold: float | None) -> Tensor:
    """Which source pixels are splatted: finite z > 0 and no 4-neighbour across a depth edge.

    depth: (B, H, W). Returns (B, H, W) bool (see the module docstring for the exact rule).
    """
    z = depth.float()
    ok = torch.isfinite(z) & (z > 0)
    if edge_threshold is None:
        return ok

    def edge(a: Tensor, b: Tensor, oa: Tensor, ob: Tensor) -> Tensor:
        return oa & ob & ((a - b).abs() > torch.minimum(a, b) * edge_threshold)

    horiz = edge(z[..., 1:], z[..., :-1], ok[..., 1:], ok[..., :-1])  # (B, H, W-1)
    vert = edge(z[:, 1:], z[:, :-1], ok[:, 1:], ok[:, :-1])  # (B, H-1, W)
    fly = torch.zeros_like(ok)
    fly[..., 1:] |= horiz
    fly[..., :-1] |= horiz
    fly[:, 1:] |= vert
    fly[:, :-1] |= vert
    return ok & ~fly


def _project_chunks(z: Tensor, M: Tensor):
    """Yield (view, rows, u_t, v_t, z_t) for every view and block of source rows, in the shared op order.

    z: (B, H, W) with NaN where a pixel is not splatted (NaN fails every later comparison, so no
    validity mask is carried); M: (B, V, 3, 4). Blocks of about `CHUNK_POINTS` points keep the ~30
    temporaries of the reference in cache and in place, which is several times faster on a CPU than
    whole-image tensors (allocation page faults and memory traffic dominate otherwise).
    """
    _B, H, W = z.shape
    uv = pixel_centres(H, W, torch.float32, z.device)  # (H, W, 2)
    u, v = uv[0, :, 0], uv[:, 0, 1]  # (W,), (H,)
    step = max(1, CHUNK_POINTS // W)
    for view in range(M.shape[1]):
        m = M[:, view]  # (B, 3, 4)
        cols = [m[:, r, 0, None] * u for r in range(3)]  # (B, W) each
        rows = [m[:, r, 1, None] * v + m[:, r, 2, None] for r in range(3)]  # (B, H) each
        for r0 in range(0, H, step):
            sl = slice(r0, min(H, r0 + step))
            p = [
                (cols[r][:, None, :] + rows[r][:, sl, None]).mul_(z[:, sl]).add_(m[:, r, 3, None, None])
                for r in range(3)
            ]  # (B, h, W) each: ((M0·u) + (M1·v + M2))·z + M3
            yield view, sl, p[0].div_(p[2]), p[1].div_(p[2]), p[2]


def _prepare(color, depth, K_src, c2w_src, K_tgt, c2w_tgt, edge_threshold):
    """Shared host set-up: float32 colour (B, C, N), NaN-masked depth (B, H, W) and M (B, V, 3, 4)."""
    B, C, H, W = color.shape
    z = depth.float()
    z = torch.where(source_validity(z, edge_threshold), z, torch.full_like(z, math.nan))  # (B, H, W)
    M = composite_projection(K_src, c2w_src, K_tgt, c2w_tgt)
    return color.float().reshape(B, C, H * W).contiguous(), z.contiguous(), M


def _nearest_keys(z: Tensor, M: Tensor, Ht: int, Wt: int) -> Tensor:
    """z-buffer keys (B, V, Ht·Wt) int64 by scatter_reduce_('amin'); a trailing slot takes misses."""
    B, H, W = z.shape
    index = torch.arange(H * W, device=z.device).view(1, H, W)  # source point index
    keys = torch.full((B, M.shape[1], Ht * Wt + 1), _EMPTY, dtype=torch.int64, device=z.device)
    for view, rows, ut, vt, zt in _project_chunks(z, M):
        hit = (zt > 0).logical_and_(ut >= 0).logical_and_(ut < Wt).logical_and_(vt >= 0).logical_and_(vt < Ht)
        # ut, vt ≥ 0 where hit, so truncation is the floor; other lanes are overwritten below
        slot = vt.to(torch.int64).mul_(Wt).add_(ut.to(torch.int64)).masked_fill_(~hit, Ht * Wt)
        key = zt.view(torch.int32).to(torch.int64).bitwise_left_shift_(32).bitwise_or_(index[:, rows])
        keys[:, view].scatter_reduce_(1, slot.view(B, -1), key.view(B, -1), "amin")
    return keys[..., :-1]


def _gather_winners(keys: Tensor, color: Tensor, Ht: int, Wt: int) -> SplatResult:
    """Colour and depth of each pixel's winning key. keys: (B, V, Ht·Wt); color: (B, C, N)."""
    B, V, _ = keys.shape
    C = color.shape[1]
    mask = keys != _EMPTY  # (B, V, Ht·Wt)
    src = torch.where(mask, keys & 0xFFFFFFFF, 0)  # (B, V, Ht·Wt) source index
    depth = (keys >> 32).to(torch.int32).view(torch.float32)
    depth = torch.where(mask, depth, 0.0)
    rgb = torch.gather(color, 2, src.view(B, 1, -1).expand(B, C, -1)).view(B, C, V, Ht * Wt)
    rgb = rgb.permute(0, 2, 1, 3) * mask[:, :, None]  # (B, V, C, Ht·Wt)
    return SplatResult(rgb.reshape(B, V, C, Ht, Wt).contiguous(), depth.view(B, V, Ht, Wt), mask.view(B, V, Ht, Wt))


def _soft_corners(ut: Tensor, vt: Tensor, zt: Tensor, Ht: int, Wt: int) -> tuple[Tensor, Tensor]:
    """Target pixel slot (Ht·Wt for misses) and bilinear weight of the 4 corners. Returns two (B, 4, n)."""
    B = ut.shape[0]
    us, vs = ut.reshape(B, -1) - 0.5, vt.reshape(B, -1) - 0.5  # (B, N) relative to pixel centres
    inside = (zt.reshape(B, -1) > 0) & (us >= -1) & (us < Wt) & (vs >= -1) & (vs < Ht)
    x0, y0 = torch.floor(us), torch.floor(vs)
    fx, fy = us - x0, vs - y0
    # x0, y0 ∈ [-1, W) where inside; elsewhere the int casts are garbage that `where` discards
    x0i, y0i = x0.to(torch.int64), y0.to(torch.int64)
    slots, weights = [], []
    for dy in (0, 1):
        for dx in (0, 1):
            x, y = x0i + dx, y0i + dy
            w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)  # same op order as the kernel
            ok = inside & (x >= 0) & (x < Wt) & (y >= 0) & (y < Ht) & (w > 0)
            slots.append(torch.where(ok, y * Wt + x, Ht * Wt))
            weights.append(torch.where(ok, w, 0.0))
    return torch.stack(slots, dim=1), torch.stack(weights, dim=1)


def _soft_reference(color: Tensor, z: Tensor, M: Tensor, Ht: int, Wt: int, k: float, eps: float):
    """Depth-aware bilinear splatting (module docstring): a z_front pass, then an accumulation pass."""
    B, C, _ = color.shape
    V = M.shape[1]
    P = Ht * Wt + 1  # one trailing slot per image soaks up misses
    front = torch.full((B, V, P), math.inf, device=z.device)  # z_front per target pixel
    for view, _rows, ut, vt, zt in _project_chunks(z, M):
        slot, _bil = _soft_corners(ut, vt, zt, Ht, Wt)  # (B, 4, n)
        front[:, view].scatter_reduce_(1, slot.view(B, -1), zt.reshape(B, 1, -1).expand_as(slot).reshape(B, -1), "amin")
    acc = torch.zeros(V, B, P, C + 2, device=z.device)  # weight, weight·z, weight·colour
    values = color.view(B, C, *z.shape[1:])  # (B, C, H, W)
    base = (torch.arange(B, device=z.device) * P)[:, None, None]  # (B, 1, 1) image offsets
    for view, rows, ut, vt, zt in _project_chunks(z, M):
        slot, bil = _soft_corners(ut, vt, zt, Ht, Wt)  # (B, 4, n)
        zt4 = zt.reshape(B, 1, -1)
        zf = torch.gather(front[:, view], 1, slot.view(B, -1)).view_as(slot)
        w = torch.where(bil > 0, bil * torch.exp(-k * ((zt4 - zf) / zf)), 0.0)  # (B, 4, n)
        vals = torch.cat([zt.reshape(B, 1, -1), values[:, :, rows].reshape(B, C, -1)], dim=1)  # (B, 1 + C, n)
        contrib = torch.cat([w[:, :, None], w[:, :, None] * vals[:, None]], dim=2)  # (B, 4, C + 2, n)
        acc[view].view(B * P, C + 2).index_add_(0, (slot + base).view(-1), contrib.transpose(2, 3).reshape(-1, C + 2))
    return _normalise(acc[:, :, :-1].transpose(0, 1), eps, Ht, Wt)


def _normalise(acc: Tensor, eps: float, Ht: int, Wt: int) -> SplatResult:
    """Weighted means from accumulated (B, V, Ht·Wt, C + 2) sums; mask where the weight > eps."""
    B, V, _, C2 = acc.shape
    wsum = acc[..., 0]
    mask = wsum > eps  # (B, V, Ht·Wt)
    mean = acc[..., 1:] / torch.where(mask, wsum, 1.0)[..., None]
    mean = torch.where(mask[..., None], mean, 0.0)  # (B, V, Ht·Wt, C + 1)
    color = mean[..., 1:].permute(0, 1, 3, 2).reshape(B, V, C2 - 2, Ht, Wt).contiguous()
    return SplatResult(color, mean[..., 0].reshape(B, V, Ht, Wt).contiguous(), mask.view(B, V, Ht, Wt))


def splat_reference(
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
    """Pure-torch forward splatting (module docstring). color (B, C, H, W), depth (B, H, W),
    K_src (B, 3, 3), c2w_src (B, 4, 4), K_tgt (B, V, 3, 3), c2w_tgt (B, V, 4, 4) → SplatResult."""
    check_splat_inputs(color, depth, K_src, c2w_src, K_tgt, c2w_tgt, out_hw, mode, edge_threshold)
    Ht, Wt = (int(s) for s in out_hw)
    rgb, z, M = _prepare(color, depth, K_src, c2w_src, K_tgt, c2w_tgt, edge_threshold)
    if mode == "nearest":
        res = _gather_winners(_nearest_keys(z, M, Ht, Wt), rgb, Ht, Wt)
    else:
        res = _soft_reference(rgb, z, M, Ht, Wt, soft_sharpness, soft_eps)
    if out is None:
        return res
    for dst, src in zip(out, res):
        dst.copy_(src)
    return out


if has_triton():
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    @triton.jit
    def _load_points(depth_ptr, offs, H, W, tau):
        """z (NaN where not splatted) and pixel centre (u, v) of source pixels `offs` of one image."""
        inb = offs < H * W
        i = offs // W
        j = offs - i * W
        z = tl.load(depth_ptr + offs, mask=inb, other=float("nan"))
        ok = (z > 0) & (z < float("inf"))
        fly = ok & (z != z)  # all False, shaped like z
        for d in tl.static_range(4):  # left, right, up, down neighbour
            di = (d // 2) * (2 * (d % 2) - 1)
            dj = (1 - d // 2) * (2 * (d % 2) - 1)
            nb = inb & (i + di >= 0) & (i + di < H) & (j + dj >= 0) & (j + dj < W)
            zq = tl.load(depth_ptr + offs + di * W + dj, mask=nb, other=float("nan"))
            okq = (zq > 0) & (zq < float("inf"))
            fly = fly | (okq & (tl.abs(z - zq) > tl.minimum(z, zq) * tau))
        z = tl.where(ok & ~fly, z, float("nan"))
        return z, j.to(tl.float32) + 0.5, i.to(tl.float32) + 0.5

    @triton.jit
    def _project(m_ptr, u, v, z):
        """(u_t, v_t, z_t) in the fixed op order of the module docstring (fusion off at launch)."""
        px = (tl.load(m_ptr + 0) * u + (tl.load(m_ptr + 1) * v + tl.load(m_ptr + 2))) * z + tl.load(m_ptr + 3)
        py = (tl.load(m_ptr + 4) * u + (tl.load(m_ptr + 5) * v + tl.load(m_ptr + 6))) * z + tl.load(m_ptr + 7)
        pw = (tl.load(m_ptr + 8) * u + (tl.load(m_ptr + 9) * v + tl.load(m_ptr + 10))) * z + tl.load(m_ptr + 11)
        return tl.math.div_rn(px, pw), tl.math.div_rn(py, pw), pw

    @triton.jit
    def _nearest_keys_kernel(depth_ptr, m_ptr, keys_ptr, H, W, Ht, Wt, V, tau, BLOCK: tl.constexpr):
        """One program = BLOCK source pixels of image program_id(1), scattered into every view."""
        b = tl.program_id(1).to(tl.int64)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        z, u, v = _load_points(depth_ptr + b * H * W, offs, H, W, tau)
        for view in range(V):
            bv = b * V + view
            ut, vt, zt = _project(m_ptr + bv * 12, u, v, z)
            hit = (zt > 0) & (ut >= 0) & (ut < Wt) & (vt >= 0) & (vt < Ht)
            pix = tl.floor(tl.where(hit, vt, 0.0)).to(tl.int32) * Wt + tl.floor(tl.where(hit, ut, 0.0)).to(tl.int32)
            key = (zt.to(tl.int32, bitcast=True).to(tl.int64) << 32) | offs.to(tl.int64)
            tl.atomic_min(keys_ptr + bv * Ht * Wt + pix, key, mask=hit)

    @triton.jit
    def _nearest_gather_kernel(
        keys_ptr, color_ptr, out_color, out_depth, out_mask, N, P, V, C: tl.constexpr, BLOCK: tl.constexpr
    ):
        """One program = BLOCK target pixels of (batch, view) program_id(1): write the winners."""
        bv = tl.program_id(1).to(tl.int64)
        b = bv // V
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inb = offs < P
        key = tl.load(keys_ptr + bv * P + offs, mask=inb, other=0)
        hi = key >> 32
        hit = inb & (hi != 0x7FFFFFFF)  # the empty key's high word; real ones are float bits
        src = tl.where(hit, key - (hi << 32), 0)
        depth = tl.where(hit, hi.to(tl.int32).to(tl.float32, bitcast=True), 0.0)
        tl.store(out_depth + bv * P + offs, depth, mask=inb)
        tl.store(out_mask + bv * P + offs, hit, mask=inb)
        for c in tl.static_range(C):
            col = tl.load(color_ptr + (b * C + c) * N + src, mask=hit, other=0.0)
            tl.store(out_color + (bv * C + c) * P + offs, col, mask=inb)

    @triton.jit
    def _corner(ut, vt, zt, Ht, Wt, DX: tl.constexpr, DY: tl.constexpr):
        """Target pixel, bilinear weight and validity of one of the 4 corners (reference op order)."""
        us = ut - 0.5
        vs = vt - 0.5
        inside = (zt > 0) & (us >= -1) & (us < Wt) & (vs >= -1) & (vs < Ht)
        x0 = tl.floor(tl.where(inside, us, 0.0))
        y0 = tl.floor(tl.where(inside, vs, 0.0))
        fx = us - x0
        fy = vs - y0
        wx = fx if DX else 1.0 - fx
        wy = fy if DY else 1.0 - fy
        w = wx * wy
        x = x0.to(tl.int32) + DX
        y = y0.to(tl.int32) + DY
        ok = inside & (x >= 0) & (x < Wt) & (y >= 0) & (y < Ht) & (w > 0)
        return tl.where(ok, y * Wt + x, 0), w, ok

    @triton.jit
    def _soft_front_kernel(depth_ptr, m_ptr, front_ptr, H, W, Ht, Wt, V, tau, BLOCK: tl.constexpr):
        """z_front: atomic min of the depth bits over every corner a point touches."""
        b = tl.program_id(1).to(tl.int64)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        z, u, v = _load_points(depth_ptr + b * H * W, offs, H, W, tau)
        for view in range(V):
            bv = b * V + view
            ut, vt, zt = _project(m_ptr + bv * 12, u, v, z)
            bits = zt.to(tl.int32, bitcast=True)
            for corner in tl.static_range(4):
                pix, _w, ok = _corner(ut, vt, zt, Ht, Wt, corner % 2, corner // 2)
                tl.atomic_min(front_ptr + bv * Ht * Wt + pix, bits, mask=ok)

    @triton.jit
    def _soft_accumulate_kernel(
        depth_ptr, color_ptr, m_ptr, front_ptr, acc_ptr, H, W, Ht, Wt, V, tau, k, C: tl.constexpr, BLOCK: tl.constexpr
    ):
        """Atomic sums of weight, weight·z and weight·colour; acc is (B·V, C + 2, Ht·Wt)."""
        b = tl.program_id(1).to(tl.int64)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        z, u, v = _load_points(depth_ptr + b * H * W, offs, H, W, tau)
        P = Ht * Wt
        for view in range(V):
            bv = b * V + view
            ut, vt, zt = _project(m_ptr + bv * 12, u, v, z)
            for corner in tl.static_range(4):
                pix, bil, ok = _corner(ut, vt, zt, Ht, Wt, corner % 2, corner // 2)
                zf = tl.load(front_ptr + bv * P + pix, mask=ok, other=0x3F800000).to(tl.float32, bitcast=True)  # 1.0f
                w = bil * tl.exp(-k * ((zt - zf) / zf))
                base = acc_ptr + bv * (C + 2) * P + pix
                tl.atomic_add(base, w, mask=ok)
                tl.atomic_add(base + P, w * zt, mask=ok)
                for c in tl.static_range(C):
                    col = tl.load(color_ptr + (b * C + c) * H * W + offs, mask=ok, other=0.0)
                    tl.atomic_add(base + (2 + c) * P, w * col, mask=ok)

    @triton.jit
    def _soft_normalise_kernel(acc_ptr, out_color, out_depth, out_mask, P, eps, C: tl.constexpr, BLOCK: tl.constexpr):
        """Weighted means per target pixel; mask where the summed weight exceeds eps."""
        bv = tl.program_id(1).to(tl.int64)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inb = offs < P
        base = acc_ptr + bv * (C + 2) * P + offs
        wsum = tl.load(base, mask=inb, other=0.0)
        hit = wsum > eps
        denom = tl.where(hit, wsum, 1.0)
        tl.store(out_mask + bv * P + offs, hit, mask=inb)
        tl.store(out_depth + bv * P + offs, tl.where(hit, tl.load(base + P, mask=inb) / denom, 0.0), mask=inb)
        for c in tl.static_range(C):
            val = tl.load(base + (2 + c) * P, mask=inb) / denom
            tl.store(out_color + (bv * C + c) * P + offs, tl.where(hit, val, 0.0), mask=inb)


# triton.jit picks interpreter or compiler when it decorates, i.e. at this module's import
_INTERPRETED = has_triton() and isinstance(_nearest_keys_kernel, InterpretedFunction)


def _launch(name: str, grid: tuple[int, ...], on_cuda: bool, *args, **meta) -> None:
    """Launch with FMA contraction off: the projection must round exactly like the torch reference."""
    kernel = globals()[name]
    if not on_cuda and not _INTERPRETED:
        # the kernels call @triton.jit helpers, which only the import-time interpreter mode can run
        raise RuntimeError("splat_triton on CPU tensors needs TRITON_INTERPRET=1 before kernels.splat is imported")
    kernel[grid](*args, **meta, enable_fp_fusion=False)


def _outputs(out: SplatResult | None, B: int, V: int, C: int, Ht: int, Wt: int, device) -> SplatResult:
    """Allocate the result buffers, or check the caller's (tests poison them before a run)."""
    shapes = ((B, V, C, Ht, Wt), (B, V, Ht, Wt), (B, V, Ht, Wt))
    dtypes = (torch.float32, torch.float32, torch.bool)
    if out is None:
        return SplatResult(*(torch.empty(s, dtype=d, device=device) for s, d in zip(shapes, dtypes)))
    for name, t, s, d in zip(SplatResult._fields, out, shapes, dtypes):
        if tuple(t.shape) != s or t.dtype != d or t.device != torch.device(device) or not t.is_contiguous():
            raise ValueError(f"out.{name} must be a contiguous {s} {d} tensor on {device}")
    return out


def splat_triton(
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
    """Host wrapper: the Triton kernels on CUDA tensors (or through the interpreter for CPU tensors).

    Same arguments and result as `splat_reference`; writes into `out` when given.
    """
    check_splat_inputs(color, depth, K_src, c2w_src, K_tgt, c2w_tgt, out_hw, mode, edge_threshold)
    if not has_triton():
        raise RuntimeError("splat_triton needs the triton package; use splat() instead")
    B, C, H, W = color.shape
    V = K_tgt.shape[1]
    Ht, Wt = (int(s) for s in out_hw)
    P = Ht * Wt
    res = _outputs(out, B, V, C, Ht, Wt, color.device)
    if B * V == 0:
        return res
    rgb = color.float().contiguous()  # (B, C, H, W)
    z = depth.float().contiguous()  # (B, H, W)
    M = composite_projection(K_src, c2w_src, K_tgt, c2w_tgt)  # (B, V, 3, 4)
    tau = math.inf if edge_threshold is None else float(edge_threshold)
    cuda = color.is_cuda
    points = (triton.cdiv(H * W, BLOCK_POINTS), B)
    pixels = (triton.cdiv(P, BLOCK_PIXELS), B * V)
    if mode == "nearest":
        keys = torch.full((B, V, P), _EMPTY, dtype=torch.int64, device=color.device)
        _launch("_nearest_keys_kernel", points, cuda, z, M, keys, H, W, Ht, Wt, V, tau, BLOCK=BLOCK_POINTS)
        _launch("_nearest_gather_kernel", pixels, cuda, keys, rgb, *res, H * W, P, V, C=C, BLOCK=BLOCK_PIXELS)
        return res
    front = torch.full((B, V, P), _EMPTY32, dtype=torch.int32, device=color.device)
    acc = torch.zeros((B, V, C + 2, P), dtype=torch.float32, device=color.device)
    _launch("_soft_front_kernel", points, cuda, z, M, front, H, W, Ht, Wt, V, tau, BLOCK=BLOCK_POINTS)
    _launch(
        "_soft_accumulate_kernel",
        points,
        cuda,
        z,
        rgb,
        M,
        front,
        acc,
        H,
        W,
        Ht,
        Wt,
        V,
        tau,
        float(soft_sharpness),
        C=C,
        BLOCK=BLOCK_POINTS,
    )
    _launch("_soft_normalise_kernel", pixels, cuda, acc, *res, P, float(soft_eps), C=C, BLOCK=BLOCK_PIXELS)
    return res


def splat(
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
) -> SplatResult:
    """Dispatcher, one call site for every device: Triton on CUDA tensors (kernels.dispatch.use_triton);
    on the CPU the native C kernels (kernels.splat_native) when they build here, else the fused torch
    passes of kernels.splat_cpu. Every path is bit-identical to the reference in nearest mode."""
    if use_triton(color, depth):
        fn = splat_triton
    else:  # these modules import this one: bound here, not at the top
        from kernels import splat_native

        on_cpu = all(t.device.type == "cpu" for t in (color, depth, K_src, c2w_src, K_tgt, c2w_tgt))
        if on_cpu and splat_native.available():
            fn = splat_native.splat_native
        else:
            from kernels.splat_cpu import splat_cpu as fn
    return fn(color, depth, K_src, c2w_src, K_tgt, c2w_tgt, out_hw, mode, edge_threshold, soft_sharpness, soft_eps)
