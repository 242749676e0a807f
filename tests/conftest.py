"""Shared test set-up: deterministic seeds, Blender kept away from the user's own config."""

from __future__ import annotations

import dataclasses
import glob
import os
import tempfile

# bpy reads its user resources at import: point it at a throw-away folder before any test imports it.
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="parallax-bpy-"))
os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
# One intra-op thread in the tests and in every subprocess they start (servers, CLI runs): the tests
# are many small ops, and two processes each spinning two threads on a 2-core machine thrash.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Without a GPU, Triton kernels run through the CPU interpreter; it must be set before triton imports.
if not glob.glob("/dev/nvidia[0-9]*") and "TRITON_INTERPRET" not in os.environ:
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


@pytest.fixture(scope="session")
def rendered_clip(tmp_path_factory) -> str:
    """One small clip rendered by Blender Cycles through the real `parallax data synth` command.

    8 frames at 64×48 with RGB, depth and cameras: the data the job tests run on. Rendered once per
    test session, in a subprocess so bpy state never leaks into the tests.
    """
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("rendered")
    cmd = [sys.executable, "-m", "backend.cli", "data", "synth", "--out", str(out), "--clips", "1",
           "--frames", "8", "--width", "64", "--height", "48", "--samples", "4", "--workers", "1",
           "--seed", "1234", "--quiet"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    clips = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(clips) == 1, clips
    return str(clips[0])


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one intra-op thread for a module: on the shared 2-core machine a 2-thread pool is many times
    slower. Opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`; module scope, so the module's
    own fixtures (models, fused meshes) that ask for it run on one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip(rendered_clip):
    """The rendered clip read back (images, depth, cameras), once per module."""
    from backend.data.clips import read_clip

    return read_clip(rendered_clip)


@pytest.fixture(scope="module")
def bundle(request):
    """A random `tiny` model on the CPU at the test module's own small working size.

    Its zero-initialised output heads are filled with small random weights: an untrained DiT predicts
    exactly 0 whatever its input, and tests of what conditioning does need a model that listens. The
    module's globals `AREA` (working pixels) and `WINDOW` (frames per window) override the model's
    defaults when present: a small size keeps it cheap on a CPU.
    """
    from backend.pipelines.bundle import random_bundle

    sizes = {name.lower(): getattr(request.module, name) for name in ("AREA", "WINDOW")
             if hasattr(request.module, name)}
    bundle = random_bundle("tiny", "cpu", seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in bundle.model.named_parameters():
            if name.startswith("head.head"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return dataclasses.replace(bundle, **sizes)


@pytest.fixture
def bundle_checkpoint(bundle, tmp_path):
    """`bundle` saved as a checkpoint file (with its area and window) for the command-line tests."""
    from backend.model.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path / "tiny.safetensors", bundle.model, bundle.cfg,
                           extra_meta={"area": bundle.area, "window": bundle.window})
