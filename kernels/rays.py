"""Plücker ray maps: a Triton kernel beside its pure-torch reference and a dispatcher.

For every pixel centre of every camera the map holds the Plücker coordinates of the viewing ray
(Plücker 1865; used as a dense camera encoding by RayDiffusion, Zhang et al. 2024, and SEVA):
channels 0..2 the unit world direction d̂ = R·K⁻¹[u v 1]ᵀ / ‖·‖, channels 3..5 the moment m = o × d̂
with o the camera centre (translation of camera-to-world). Pixel centres follow the backend's
continuous convention (u, v) = (j + 0.5, i + 0.5), see backend/geometry/projection.py.

Layout follows Liger-Kernel / the Triton tutorials: `@triton.jit` kernel, host wrapper
`plucker_rays_triton`, dispatcher `plucker_rays`, reference `plucker_rays_reference`.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from backend.geometry.projection import camera_directions
from kernels.dispatch import has_triton, use_triton

# Pixels per program: one program covers a contiguous run of BLOCK pixels of one camera.
BLOCK_PIXELS = 256
# dtypes the kernel computes in natively; others (fp16/bf16) go through float32 and are cast back.
_NATIVE = (torch.float32, torch.float64)


def _check_inputs(K: Tensor, c2w: Tensor, height: int, width: int) -> None:
    """Shape/dtype checks shared by every path; raises ValueError naming the bad field."""
    if not isinstance(K, Tensor) or K.ndim != 3 or K.shape[-2:] != (3, 3):
        raise ValueError(f"K must be a (B, 3, 3) tensor, got {getattr(K, 'shape', type(K))}")
    if not isinstance(c2w, Tensor) or c2w.ndim != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must be a (B, 4, 4) tensor, got {getattr(c2w, 'shape', type(c2w))}")
    if K.shape[0] != c2w.shape[0]:
        raise ValueError(f"K and c2w batch sizes differ: {K.shape[0]} vs {c2w.shape[0]}")
    if not K.is_floating_point() or K.dtype != c2w.dtype:
        raise ValueError(f"K and c2w must share one floating dtype, got {K.dtype} and {c2w.dtype}")
    if K.device != c2w.device:
        raise ValueError(f"K and c2w must be on one device, got {K.device} and {c2w.device}")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def plucker_rays_reference(K: Tensor, c2w: Tensor, height: int, width: int) -> Tensor:
    """Pure-torch Plücker ray map. K: (B, 3, 3); c2w: (B, 4, 4). Returns (B, 6, H, W), input dtype."""
    _check_inputs(K, c2w, height, width)
    cam = camera_directions(K, height, width)  # (B, H, W, 3), z = 1
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]  # (B, 3, 3), (B, 3)
    d = torch.einsum("bij,bhwj->bhwi", R, cam)  # (B, H, W, 3)
    d = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    m = torch.linalg.cross(t[:, None, None, :].expand_as(d), d, dim=-1)  # (B, H, W, 3)
    return torch.cat([d, m], dim=-1).permute(0, 3, 1, 2).contiguous()  # (B, 6, H, W)


if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _plucker_kernel(k_ptr, c2w_ptr, out_ptr, height, width, BLOCK: tl.constexpr):
        """One program = BLOCK consecutive pixels (row-major) of camera program_id(1)."""
        pid = tl.program_id(0)
        cam = tl.program_id(1).to(tl.int64)  # int64: B·6·H·W may pass 2³¹ for long clips
        hw = height * width
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        valid = offs < hw
        row = offs // width
        col = offs - row * width
        kb = k_ptr + cam * 9
        fx = tl.load(kb + 0)
        skew = tl.load(kb + 1)
        cx = tl.load(kb + 2)
        fy = tl.load(kb + 4)
        cy = tl.load(kb + 5)
        pb = c2w_ptr + cam * 16
        r00, r01, r02 = tl.load(pb + 0), tl.load(pb + 1), tl.load(pb + 2)
        r10, r11, r12 = tl.load(pb + 4), tl.load(pb + 5), tl.load(pb + 6)
        r20, r21, r22 = tl.load(pb + 8), tl.load(pb + 9), tl.load(pb + 10)
        tx, ty, tz = tl.load(pb + 3), tl.load(pb + 7), tl.load(pb + 11)
        # Continuous pixel centres; K⁻¹ of an upper-triangular K by back substitution.
        u = col.to(fx.dtype) + 0.5
        v = row.to(fx.dtype) + 0.5
        y = (v - cy) / fy
        x = (u - cx - skew * y) / fx
        dx = r00 * x + r01 * y + r02
        dy = r10 * x + r11 * y + r12
        dz = r20 * x + r21 * y + r22
        inv = 1.0 / tl.sqrt(dx * dx + dy * dy + dz * dz)
        dx, dy, dz = dx * inv, dy * inv, dz * inv
        ob = out_ptr + cam * 6 * hw + offs
        tl.store(ob, dx, mask=valid)
        tl.store(ob + hw, dy, mask=valid)
        tl.store(ob + 2 * hw, dz, mask=valid)
        tl.store(ob + 3 * hw, ty * dz - tz * dy, mask=valid)  # m = o × d̂
        tl.store(ob + 4 * hw, tz * dx - tx * dz, mask=valid)
        tl.store(ob + 5 * hw, tx * dy - ty * dx, mask=valid)


@functools.cache
def _interpreted_kernel():
    """The kernel run by Triton's CPU interpreter, whatever TRITON_INTERPRET said at import.

    `triton.jit` reads TRITON_INTERPRET when it decorates (at this module's import), not at launch:
    if the variable came too late we still reach the interpreter for CPU tensors by wrapping the
    plain Python function ourselves.
    """
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(_plucker_kernel, InterpretedFunction):
        return _plucker_kernel
    return InterpretedFunction(_plucker_kernel.fn)


def _check_out(out: Tensor, shape: tuple[int, ...], like: Tensor) -> None:
    if out.shape != shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"out must be {tuple(shape)} {like.dtype} on {like.device}, got "
            f"{tuple(out.shape)} {out.dtype} on {out.device}"
        )
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")


def plucker_rays_triton(K: Tensor, c2w: Tensor, height: int, width: int, out: Tensor | None = None) -> Tensor:
    """Host wrapper: launch the Triton kernel (CUDA, or the interpreter for CPU tensors).

    K: (B, 3, 3); c2w: (B, 4, 4). Writes into `out` (B, 6, H, W) when given, else allocates.
    """
    _check_inputs(K, c2w, height, width)
    if not has_triton():
        raise RuntimeError("plucker_rays_triton needs the triton package; use plucker_rays instead")
    B = K.shape[0]
    shape = (B, 6, height, width)
    if out is not None:
        _check_out(out, shape, K)
    if K.dtype not in _NATIVE:  # half types: compute in float32, hand back the caller's dtype
        res = plucker_rays_triton(K.float(), c2w.float(), height, width)
        return res.to(K.dtype) if out is None else out.copy_(res)
    target = out if out is not None else torch.empty(shape, dtype=K.dtype, device=K.device)
    if B == 0:
        return target
    kernel = _plucker_kernel if K.is_cuda else _interpreted_kernel()
    grid = (triton.cdiv(height * width, BLOCK_PIXELS), B)
    kernel[grid](K.contiguous(), c2w.contiguous(), target, height, width, BLOCK=BLOCK_PIXELS)
    return target


def plucker_rays(K: Tensor, c2w: Tensor, height: int, width: int) -> Tensor:
    """Dispatcher: Triton on CUDA tensors (kernels.dispatch.use_triton), the torch reference elsewhere.

    K: (B, 3, 3); c2w: (B, 4, 4). Returns (B, 6, H, W) in the input dtype.
    """
    if use_triton(K, c2w):
        return plucker_rays_triton(K, c2w, height, width)
    return plucker_rays_reference(K, c2w, height, width)
