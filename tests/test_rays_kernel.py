"""Plücker ray-map kernel: Triton (interpreter on CPU, CUDA when present) against the torch reference.

Outputs are poisoned with NaN before each launch so a pixel the kernel forgets to write fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from kernels.rays import (
    BLOCK_PIXELS,
    plucker_rays,
    plucker_rays_reference,
    plucker_rays_triton,
)

REPO = Path(__file__).resolve().parents[1]


def _cameras(B: int, height: int, width: int, dtype: torch.dtype, device: str = "cpu"):
    """Random proper rotations, centres, non-square focals, off-centre principal points, some skew."""
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(B, 3, 3, generator=g, dtype=torch.float64))
    R = q * torch.sign(torch.linalg.det(q))[:, None, None]
    c2w = torch.eye(4, dtype=torch.float64).repeat(B, 1, 1)
    c2w[:, :3, :3] = R
    c2w[:, :3, 3] = 3 * torch.randn(B, 3, generator=g, dtype=torch.float64)
    K = torch.zeros(B, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = width * (0.5 + torch.rand(B, generator=g, dtype=torch.float64))
    K[:, 1, 1] = K[:, 0, 0] * (0.8 + 0.4 * torch.rand(B, generator=g, dtype=torch.float64))
    K[:, 0, 1] = 0.5 * torch.randn(B, generator=g, dtype=torch.float64)
    K[:, 0, 2] = width / 2 + 3 * torch.randn(B, generator=g, dtype=torch.float64)
    K[:, 1, 2] = height / 2 + 3 * torch.randn(B, generator=g, dtype=torch.float64)
    K[:, 2, 2] = 1
    return K.to(device=device, dtype=dtype), c2w.to(device=device, dtype=dtype)


def _poisoned(B: int, height: int, width: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    return torch.full((B, 6, height, width), float("nan"), dtype=dtype, device=device)


@pytest.mark.parametrize(
    ("height", "width", "dtype", "atol"),
    [
        (17, 23, torch.float32, 2e-6),  # 391 pixels: two programs per camera, the second one partial
        (1, 7, torch.float32, 2e-6),  # a single row, one partial block
        (5, 3, torch.float64, 1e-13),
    ],
)
def test_triton_matches_reference_cpu(height: int, width: int, dtype: torch.dtype, atol: float) -> None:
    K, c2w = _cameras(3, height, width, dtype)
    out = _poisoned(3, height, width, dtype)
    res = plucker_rays_triton(K, c2w, height, width, out=out)
    assert res.data_ptr() == out.data_ptr()
    assert torch.isfinite(out).all(), "kernel left pixels unwritten"
    ref = plucker_rays_reference(K, c2w, height, width)
    # moments scale with |o| ≈ 3–6: tolerance relative to that
    torch.testing.assert_close(out, ref, atol=atol * 8, rtol=atol)


def test_block_boundary_exact_multiple() -> None:
    """H·W an exact multiple of the block: no spill into the next camera's slab."""
    width = BLOCK_PIXELS // 8
    K, c2w = _cameras(2, 8, width, torch.float32)
    out = _poisoned(2, 8, width, torch.float32)
    plucker_rays_triton(K, c2w, 8, width, out=out)
    torch.testing.assert_close(out, plucker_rays_reference(K, c2w, 8, width), atol=2e-5, rtol=2e-6)


def test_half_precision_inputs_keep_dtype() -> None:
    K, c2w = _cameras(2, 6, 9, torch.float32)
    res = plucker_rays_triton(K.bfloat16(), c2w.bfloat16(), 6, 9)
    assert res.dtype == torch.bfloat16
    ref = plucker_rays_reference(K.bfloat16().float(), c2w.bfloat16().float(), 6, 9)
    torch.testing.assert_close(res.float(), ref, atol=5e-2, rtol=1e-2)


def test_wrapper_rejects_bad_out() -> None:
    K, c2w = _cameras(2, 4, 5, torch.float32)
    with pytest.raises(ValueError, match="out"):
        plucker_rays_triton(K, c2w, 4, 5, out=torch.empty(2, 6, 5, 4))
    with pytest.raises(ValueError, match="out"):
        plucker_rays_triton(K, c2w, 4, 5, out=torch.empty(2, 6, 4, 5, dtype=torch.float64))


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((torch.eye(3), torch.eye(4)[None], 4, 4), "K"),
        ((torch.eye(3)[None], torch.eye(3)[None], 4, 4), "c2w"),
        ((torch.eye(3)[None].repeat(2, 1, 1), torch.eye(4)[None], 4, 4), "batch"),
        ((torch.eye(3)[None], torch.eye(4)[None], 0, 4), "height"),
        ((torch.eye(3)[None], torch.eye(4)[None], 4, 2.5), "width"),
        ((torch.eye(3, dtype=torch.int64)[None], torch.eye(4, dtype=torch.int64)[None], 4, 4), "dtype"),
    ],
)
def test_bad_inputs_raise(args, field: str) -> None:
    for fn in (plucker_rays_reference, plucker_rays_triton):
        with pytest.raises(ValueError, match=field):
            fn(*args)


def test_dispatcher_takes_reference_on_cpu() -> None:
    K, c2w = _cameras(2, 5, 7, torch.float32)
    assert torch.equal(plucker_rays(K, c2w, 5, 7), plucker_rays_reference(K, c2w, 5, 7))


def test_interpreter_reached_without_env_at_import() -> None:
    """triton.jit reads TRITON_INTERPRET when it decorates; the wrapper must still run on CPU tensors
    when the variable was unset at import (a user calling the wrapper outside pytest)."""
    code = (
        "import torch, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_rays_kernel import _cameras\n"
        "from kernels.rays import plucker_rays_triton, plucker_rays_reference\n"
        "K, c2w = _cameras(2, 5, 6, torch.float32)\n"
        "out = torch.full((2, 6, 5, 6), float('nan'))\n"
        "plucker_rays_triton(K, c2w, 5, 6, out=out)\n"
        "err = (out - plucker_rays_reference(K, c2w, 5, 6)).abs().max().item()\n"
        "print(err); assert err < 1e-4, err\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.parametrize(("height", "width"), [(17, 23), (240, 320)])
def test_triton_matches_reference_cuda(height: int, width: int) -> None:
    K, c2w = _cameras(3, height, width, torch.float32, device="cuda")
    out = _poisoned(3, height, width, torch.float32, device="cuda")
    plucker_rays_triton(K, c2w, height, width, out=out)
    assert torch.isfinite(out).all()
    ref = plucker_rays_reference(K.double(), c2w.double(), height, width).float()
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-6)
    torch.testing.assert_close(plucker_rays(K, c2w, height, width), ref, atol=2e-5, rtol=2e-6)
