"""When to take the Triton path: one rule for every kernel's dispatcher.

Triton runs on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1, which tests use); everything
else takes the pure-torch reference. `PARALLAX_NO_TRITON=1` forces the reference everywhere.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def has_triton() -> bool:
    """True when the triton package imports (it is optional: macOS/Windows users may lack it)."""
    try:
        import triton  # noqa: F401
    except Exception:  # missing, or installed but broken (e.g. a driver/ABI mismatch): use the reference
        return False
    return True


def interpret_mode() -> bool:
    """True when Triton kernels are executed by the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Dispatch rule: Triton for CUDA tensors when triton imports, unless disabled by the environment."""
    if os.environ.get("PARALLAX_NO_TRITON", "0") == "1" or not has_triton():
        return False
    return all(t.is_cuda for t in tensors)
