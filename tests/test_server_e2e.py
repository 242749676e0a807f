"""Every job end to end through a real `parallax serve` process and the Client over real sockets.

The server is started exactly as a user would (`python -m backend.cli serve --device cpu`) on an
ephemeral loopback port; the inputs are the Blender-rendered clip of tests/conftest.py. Jobs whose
pipeline module is not there yet are skipped with the reason (they are written concurrently).
`ServerProcess` is also used by test_server_fuzz.py and test_server_jobs.py.
"""

from __future__ import annotations

import importlib.util
import inspect
import selectors
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backend.pipelines.runners import JOBS, RESULT_DTYPES
from backend.server import protocol as P
from backend.server.client import BackendError, Client
from backend.server.specs import JOB_SPECS

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """A real `parallax serve` subprocess; `stop()` (or leaving the `with`) always ends it."""

    def __init__(self, jobs: Path, *extra: str, bind: str = "tcp://127.0.0.1:*", startup: float = 60.0):
        cmd = [sys.executable, "-m", "backend.cli", "serve", "--bind", bind, "--jobs", str(jobs),
               "--device", "cpu", *extra]
        self.log = Path(jobs).parent / f"serve-{time.monotonic_ns()}.log"  # stderr, shown on failure
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True)
        self.endpoint = self._wait_listening(startup)

    def _wait_listening(self, timeout: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(max(deadline - time.monotonic(), 0.0)):
                line = self.proc.stdout.readline()
                if "listening on" in line:  # "parallax serve: listening on tcp://127.0.0.1:PORT (...)"
                    return line.split("listening on ", 1)[1].split()[0]
                if not line:  # EOF: the server died before listening
                    break
        self.stop()
        raise RuntimeError(f"server did not start: rc={self.proc.returncode}\n{self.log.read_text()}")

    @property
    def address(self) -> str:
        """Where a client connects (a wildcard bind is reached through loopback)."""
        return self.endpoint.replace("0.0.0.0", "127.0.0.1")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, timeout: float = 10.0, **kwargs) -> Client:
        return Client(self.address, timeout=timeout, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("serve") / "jobs") as srv:
        yield srv


def run_job(server: ServerProcess, job: str, arrays: dict, **params) -> tuple[dict, dict]:
    """Submit, collect progress, receive the result event; check it against fetch and the job status."""
    seen: list[float] = []
    with server.client(timeout=30.0) as client:
        job_id = client.submit(job, arrays, **params)
        result, result_params = client.wait(job_id, on_progress=lambda f, _m: seen.append(f), idle_timeout=120.0)
        fetched, fetched_params = client.fetch(job_id)
        status = client.status(job_id)
    assert status["state"] == "done" and status["job_type"] == job
    assert seen and all(0.0 <= f <= 1.0 for f in seen), "the job reported no progress"
    assert fetched_params == result_params and set(fetched) == set(result)
    for name, array in result.items():
        assert array.dtype.name in RESULT_DTYPES
        assert fetched[name].dtype == array.dtype and np.array_equal(fetched[name], array, equal_nan=True)
    return result, result_params


def check(result: dict, expected: dict[str, tuple[tuple, str]]) -> None:
    """Each expected array is present with its shape (None = any length) and dtype."""
    for name, (shape, dtype) in expected.items():
        assert name in result, f"result lacks {name!r}: {sorted(result)}"
        got = result[name]
        assert got.dtype == np.dtype(dtype), f"{name}: {got.dtype} != {dtype}"
        assert len(got.shape) == len(shape) and all(w is None or w == g for w, g in zip(shape, got.shape)), \
            f"{name}: shape {got.shape} != {shape}"
        if got.dtype.kind == "f":
            assert np.isfinite(got).all(), f"{name} has NaN/inf"


def test_runner_table_matches_specs_and_protocol():
    assert RESULT_DTYPES == P.DTYPES
    assert set(JOBS) == set(JOB_SPECS)
    for job, adapter in JOBS.items():
        spec = JOB_SPECS[job]
        assert set(adapter.positional) == {n for n, a in spec.arrays.items() if a.required}, job
        assert set(adapter.optional) == {n for n, a in spec.arrays.items() if not a.required}, job


@pytest.mark.parametrize("job", sorted(JOBS))
def test_pipeline_signature_takes_every_param(job):
    """The runner passes arrays and validated params by name: the pipeline must accept all of them."""
    adapter = JOBS[job]
    module = importlib.import_module(f"backend.pipelines.{adapter.module}")
    sig = inspect.signature(getattr(module, adapter.function))
    names = list(sig.parameters)
    lead = (["bundle"] if adapter.uses_bundle else []) + list(adapter.positional)
    assert len(names) >= len(lead), names
    for name in [*adapter.optional, *JOB_SPECS[job].params, "progress"]:
        assert name in sig.parameters and sig.parameters[name].kind != inspect.Parameter.POSITIONAL_ONLY, name


def test_hello_reports_jobs_and_model(server):
    with server.client() as client:
        hello = client.hello()
    assert hello["protocol"] == P.PROTOCOL_VERSION and hello["jobs"] == sorted(JOB_SPECS)
    assert hello["device"] == "cpu" and hello["model"] and hello["parameters"] > 0


def test_depth(server, clip):
    F, H, W = clip.images.shape[:3]
    result, params = run_job(server, "depth", {"images": clip.images}, steps=2)
    check(result, {"depth": ((F, H, W), "float32")})
    d0 = result["depth"][0]
    assert np.median(d0[d0 > 0]) == pytest.approx(1.0, rel=1e-5), "scale convention: median of frame 0 is 1"
    assert (params["frames"], params["width"], params["height"]) == (F, W, H)


def test_cameras(server, clip):
    F, H, W = clip.images.shape[:3]
    result, _ = run_job(server, "cameras", {"video": clip.images}, steps=2)
    check(result, {"K": ((F, 3, 3), "float64"), "c2w": ((F, 4, 4), "float64"), "depth": ((F, H, W), "float32"),
                   "points": ((None, 3), "float32"), "colors": ((None, 3), "uint8")})
    assert np.allclose(result["c2w"][0], np.eye(4), atol=1e-6), "frame 0 must be the identity"
    assert len(result["points"]) == len(result["colors"])


def test_nvs(server, clip):
    F, H, W = clip.images.shape[:3]
    cams = clip.cameras
    arrays = {"image": clip.images[0], "depth": clip.depth[0], "K": cams.K, "c2w": cams.c2w}
    result, _ = run_job(server, "nvs", arrays, steps=2, depth_scale=float(np.median(clip.depth[0])))
    check(result, {"images": ((F, H, W, 3), "uint8"), "depth": ((F, H, W), "float32"),
                   "K": ((F, 3, 3), "float64"), "c2w": ((F, 4, 4), "float64")})
    assert np.allclose(result["c2w"], cams.c2w) and np.allclose(result["K"], cams.K)


@pytest.mark.slow
def test_nvs_smaller_output_with_mesh(server, clip):
    cams = clip.cameras
    K = cams.K.copy()
    K[:, :2] /= 2  # the same cameras at half resolution (continuous pixels: a pure scale)
    arrays = {"image": clip.images[0], "K": K[:3], "c2w": cams.c2w[:3]}
    H, W = clip.images.shape[1] // 2, clip.images.shape[2] // 2
    result, _ = run_job(server, "nvs", arrays, steps=2, width=W, height=H, mesh=True)
    check(result, {"images": ((3, H, W, 3), "uint8"), "depth": ((3, H, W), "float32"),
                   "vertices": ((None, 3), "float32"), "faces": ((None, 3), "int32"), "colors": ((None, 3), "uint8")})


def test_interpolate(server, clip):
    H, W = clip.images.shape[1:3]
    arrays = {"first": clip.images[0], "last": clip.images[-1]}
    result, _ = run_job(server, "interpolate", arrays, frames=4, steps=2)
    check(result, {"images": ((4, H, W, 3), "uint8"), "depth": ((4, H, W), "float32")})


def test_edit_keeps_pixels_outside_the_mask(server, clip):
    video = clip.images[:4]
    F, H, W = video.shape[:3]
    edited = video[0].copy()
    edited[8:24, 16:40] = (255, 0, 0)  # paint a red box on frame 0
    mask = np.zeros((H, W), np.uint8)
    mask[8:24, 16:40] = 255  # uint8 on the wire; the runner hands the pipeline a bool mask
    arrays = {"video": video, "edited": edited, "mask": mask}
    result, _ = run_job(server, "edit", arrays, steps=2, dilate=2)
    check(result, {"images": ((F, H, W, 3), "uint8"), "masks": ((F, H, W), "bool")})
    outside = ~result["masks"]
    assert outside.any() and result["masks"][0][mask > 0].all()
    assert np.array_equal(result["images"][outside], video[outside]), "pixels outside the edit changed"


def test_mesh_equals_the_direct_call(server, clip):
    """Model-free and deterministic: the served mesh is bit-identical to calling the pipeline here."""
    from backend.pipelines.mesh import fuse_mesh

    cams = clip.cameras[:4]
    images, depth = clip.images[:4], clip.depth[:4]
    voxel = float(np.median(depth[depth > 0])) / 16  # coarse: TSDF at the auto voxel takes half a minute here
    arrays = {"images": images, "depth": depth, "K": cams.K, "c2w": cams.c2w}
    result, params = run_job(server, "mesh", arrays, voxel=voxel)
    check(result, {"vertices": ((None, 3), "float32"), "faces": ((None, 3), "int32"), "colors": ((None, 3), "uint8")})
    direct = fuse_mesh(images, depth, cams.K, cams.c2w, voxel=voxel).arrays()
    assert len(result["faces"]) > 0 and params["faces"] == len(result["faces"])
    for name in ("vertices", "faces", "colors"):
        assert np.array_equal(result[name], direct[name]), name


def test_failing_job_reports_invalid_input_and_server_keeps_serving(server, clip):
    """A request that passes the wire spec but that the pipeline rejects (fx = 0) fails only its job."""
    cams = clip.cameras
    K = cams.K.copy()
    K[:, 0, 0] = 0.0
    arrays = {"images": clip.images, "depth": clip.depth, "K": K, "c2w": cams.c2w}
    with server.client(timeout=30.0) as client:
        job_id = client.submit("mesh", arrays)
        with pytest.raises(BackendError) as err:
            client.wait(job_id, idle_timeout=60.0)
        assert err.value.code == P.INVALID_INPUT and err.value.job == job_id, err.value
        assert client.status(job_id)["state"] == "failed"
        assert client.hello()["server"] == "parallax"


@pytest.mark.slow
def test_bench_protocol_quick_rows_add_up():
    """`parallax bench protocol --quick`: the overhead row is the sum of the two round trips, each a
    fraction of the whole job measured in the same run."""
    import argparse

    from backend.server.bench_protocol import run_suite

    rows = run_suite(argparse.Namespace(quick=True, device="cpu"))
    by_stage = {r["stage"].split(":")[0].split(" (")[0].strip(): r for r in rows}
    job = by_stage["whole job"]
    assert job["% of job"] == 100 and job["ms"] > 0
    total = by_stage["submit round trip"]["ms"] + by_stage["result round trip"]["ms"]
    assert by_stage["transport + validation"]["ms"] == pytest.approx(total)
    for r in rows:
        assert r["% of job"] == pytest.approx(100 * r["ms"] / job["ms"])
