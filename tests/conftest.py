"""Shared test set-up: deterministic seeds, Blender kept away from the user's own config."""

from __future__ import annotations

import os
import tempfile

# bpy reads its user resources at import: point it at a throw-away folder before any test imports it.
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="parallax-bpy-"))
os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
# Without a GPU, Triton kernels run through the CPU interpreter; it must be set before triton imports.
if not os.path.exists("/dev/nvidia0") and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np
import pytest
import torch


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh numpy generator per test (fixed seed: failures reproduce)."""
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _torch_seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
