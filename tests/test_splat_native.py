"""The native C splat (kernels/csrc/splat.c) against the torch reference, and its build cache.

Nearest mode must equal the reference bit for bit, soft mode within float tolerance, on odd sizes, in
both threading layouts (whole planes per thread; bands of one plane's pixels), into poisoned outputs.
"""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_splat import _odd_scene

from kernels import native, splat_native
from kernels.splat import SplatResult, source_validity, splat, splat_reference

REPO = Path(__file__).resolve().parents[1]


def _require_native() -> None:
    """Skip only where no C compiler exists; with one, a failed build is a test failure."""
    if native.compiler() is None or not native.enabled():
        pytest.skip("no C compiler (or PARALLAX_NO_NATIVE=1): the torch paths serve this machine")
    assert splat_native.available(), f"native splat did not build: {native.build_error('splat')}"


def _poisoned_like(ref: SplatResult) -> SplatResult:
    """Outputs that fail the comparison wherever the kernel leaves a pixel unwritten."""
    return SplatResult(
        torch.full_like(ref.color, math.nan), torch.full_like(ref.depth, math.nan), (~ref.mask).contiguous()
    )


@pytest.fixture
def threads():
    """Set torch's (and so the kernel's) thread count for one test, then restore it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


# (batch, views, threads): planes >= threads takes whole planes per thread; fewer planes, pixel bands
LAYOUTS = [(2, 3, 1), (2, 3, 2), (1, 1, 2), (1, 2, 3), (1, 1, 1)]


@pytest.mark.parametrize(("b", "v", "n_threads"), LAYOUTS)
@pytest.mark.parametrize("edge_threshold", [0.1, None])
def test_native_nearest_is_bit_identical_to_reference(b, v, n_threads, edge_threshold, threads):
    _require_native()
    threads(n_threads)
    seed = secrets.randbits(31)
    args, hw = _odd_scene(seed, b=b, v=v)
    ref = splat_reference(*args, hw, edge_threshold=edge_threshold)
    assert 0.05 < ref.mask.float().mean().item() < 1.0, f"seed {seed}: degenerate scene"
    poisoned = _poisoned_like(ref)
    got = splat_native.splat_native(*args, hw, edge_threshold=edge_threshold, out=poisoned)
    assert got.color.data_ptr() == poisoned.color.data_ptr()
    assert torch.equal(got.mask, ref.mask), f"seed {seed}"
    assert torch.equal(got.depth, ref.depth), f"seed {seed}"
    assert torch.equal(got.color, ref.color), f"seed {seed}"


@pytest.mark.parametrize(("b", "v", "n_threads"), LAYOUTS)
def test_native_soft_matches_reference(b, v, n_threads, threads):
    _require_native()
    threads(n_threads)
    seed = secrets.randbits(31)
    args, hw = _odd_scene(seed, b=b, v=v)
    ref = splat_reference(*args, hw, mode="soft")
    got = splat_native.splat_native(*args, hw, mode="soft", out=_poisoned_like(ref))
    # another summation order: a weight sum within rounding of soft_eps may flip; allow one such pixel
    assert (got.mask != ref.mask).sum() <= 1, f"seed {seed}"
    both = (got.mask & ref.mask)[:, :, None].expand_as(ref.color)
    got = SplatResult(torch.where(both, got.color, 0), torch.where(both[:, :, 0], got.depth, 0), got.mask)
    ref = SplatResult(torch.where(both, ref.color, 0), torch.where(both[:, :, 0], ref.depth, 0), ref.mask)
    # expf from libm against torch's vectorised exp, and another summation order
    torch.testing.assert_close(got.depth, ref.depth, rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {seed}: {m}")
    torch.testing.assert_close(got.color, ref.color, rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {seed}: {m}")


def test_native_larger_warp_many_views(threads):
    """A bigger image than a row buffer's worth of SIMD lanes, more views than threads."""
    _require_native()
    threads(2)
    args, hw = _odd_scene(secrets.randbits(31), b=1, v=5, h=61, w=97)
    ref = splat_reference(*args, hw)
    got = splat_native.splat_native(*args, hw)
    assert torch.equal(got.color, ref.color) and torch.equal(got.depth, ref.depth)


def test_native_masked_depth_is_source_validity(threads):
    _require_native()
    threads(2)
    depth = _odd_scene(secrets.randbits(31), b=2, v=1)[0][1]
    for tau in (0.1, 0.02, None):
        z = splat_native.masked_depth(depth, tau)
        ok = source_validity(depth, tau)
        assert torch.equal(~torch.isnan(z), ok), tau
        assert torch.equal(z[ok], depth[ok])


def test_native_runs_threads_in_parallel_where_openmp_exists():
    """On Linux the build must have OpenMP (gcc and clang both have it): one thread only would pass every
    equality test above while losing the speed the kernels exist for."""
    _require_native()
    if sys.platform != "linux":
        pytest.skip("OpenMP is only required on Linux builds")
    assert splat_native.has_openmp()


def test_native_rejects_tensors_off_the_cpu():
    _require_native()
    args, hw = _odd_scene(0, b=1, v=2)
    meta = list(args)
    meta[4] = meta[4].to("meta")
    with pytest.raises(ValueError, match="K_tgt is on meta"):
        splat_native.splat_native(*meta, hw)


def test_dispatcher_takes_native_on_cpu(monkeypatch):
    _require_native()
    args, hw = _odd_scene(secrets.randbits(31), b=1, v=2)
    calls = []
    real = splat_native.splat_native
    monkeypatch.setattr(splat_native, "splat_native", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = splat(*args, hw)
    assert calls, "splat() on CPU tensors did not take the native path"
    assert torch.equal(got.color, splat_reference(*args, hw).color)


def test_native_rejects_bad_input():
    _require_native()
    args, hw = _odd_scene(0, b=1, v=1)
    with pytest.raises(ValueError, match="depth"):
        splat_native.splat_native(args[0], args[1][:, :-1], *args[2:], hw)
    with pytest.raises(ValueError, match="mode"):
        splat_native.splat_native(*args, hw, mode="cubic")
    with pytest.raises(ValueError, match=r"out\.color"):
        bad = SplatResult(torch.empty(1), torch.empty(1), torch.empty(1, dtype=torch.bool))
        splat_native.splat_native(*args, hw, out=bad)


def _build_in_subprocess(env: dict, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (the library cache is per process) with `env` added."""
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full, capture_output=True, text=True, timeout=300)


def test_build_is_cached_and_keyed_by_source(tmp_path):
    _require_native()
    code = "from kernels import native; lib = native.load('splat'); print(lib._name if lib else native.build_error(''))"
    first = _build_in_subprocess({"PARALLAX_CACHE": str(tmp_path)}, code)
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    assert path.exists() and path.parent == tmp_path / "native"
    mtime = path.stat().st_mtime_ns
    second = _build_in_subprocess({"PARALLAX_CACHE": str(tmp_path)}, code)
    assert Path(second.stdout.strip()) == path and path.stat().st_mtime_ns == mtime  # loaded, not rebuilt
    assert [p.name for p in (tmp_path / "native").iterdir()] == [path.name]  # no temporary files left


def test_without_compiler_the_torch_path_serves(tmp_path):
    """A broken compiler: no library, a reason, and splat() still answers (the fused torch passes)."""
    code = (
        "import torch; from kernels import native, splat_native; from kernels.splat import splat\n"
        "assert not splat_native.available(); print(native.build_error('splat').splitlines()[0])\n"
        "import sys; sys.path.insert(0, 'tests'); from test_splat import _odd_scene\n"
        "args, hw = _odd_scene(0, b=1, v=2); r = splat(*args, hw); assert r.mask.any()\n"
    )
    done = _build_in_subprocess({"PARALLAX_CACHE": str(tmp_path), "CC": "false"}, code)  # every compile fails
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("false -O3"), done.stdout  # the failed command, for the log
    assert not list((tmp_path / "native").iterdir())  # no library, no temporaries
    none = _build_in_subprocess({"PARALLAX_CACHE": str(tmp_path), "CC": "", "PATH": "/nonexistent"}, code)
    assert none.returncode == 0, none.stderr
    assert "no C compiler" in none.stdout
    off = _build_in_subprocess({"PARALLAX_NO_NATIVE": "1"}, code)
    assert off.returncode == 0, off.stderr
    assert "PARALLAX_NO_NATIVE" in off.stdout


def test_bench_kernels_quick_reports_every_cpu_path(threads):
    """`parallax bench kernels --quick` on the CPU: a row per path and size, finite positive ratios."""
    import argparse

    from kernels.bench import QUICK_SIZES, run_suite

    rows = run_suite(argparse.Namespace(quick=True, device="cpu", threads=1))  # `threads` restores the count
    splat_rows = [r for r in rows if r["kernel"].startswith("splat-")]
    paths = {r["path"] for r in splat_rows}
    expected = {"reference", "fused-eager"} | ({"native", "native out="} if splat_native.available() else set())
    assert paths == expected
    assert len(splat_rows) == len(QUICK_SIZES) * 2 * len(expected)  # sizes x modes x paths
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 and r["vs"] == "scatter_reduce_" for r in splat_rows)
    assert any(r["kernel"] == "rays" for r in rows)


def test_forked_child_does_not_hang():
    """A child forked after the parent ran torch and the kernels multi-threaded (DataLoader workers,
    multiprocessing) must still splat: OpenMP's pool does not survive fork(), so it runs on one thread."""
    _require_native()
    code = (
        "import os, sys, torch; sys.path.insert(0, 'tests')\n"
        "from test_splat import _odd_scene; from kernels.splat import splat, splat_reference\n"
        "torch.set_num_threads(2); x = torch.rand(1500, 1500); (x @ x).sum()\n"
        "args, hw = _odd_scene(1, b=1, v=4); splat(*args, hw)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    ok = torch.equal(splat(*args, hw).color, splat_reference(*args, hw).color); os._exit(0 if ok else 3)\n"
        "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child hung in the native splat")
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stdout + done.stderr
