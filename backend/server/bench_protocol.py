"""`parallax bench protocol`: transport and validation time as a fraction of job time.

One real server (the ROUTER loop of server.py, the real runners, a job folder) runs in this process
on an ephemeral loopback TCP port; a real Client submits a 16-frame 512×512 depth job and waits for
its result. Measured in the same run:

- submit: the client's `submit` round trip — encode, send, server decode + `specs.validate_job` +
  copy + job folder creation, reply, client decode — for the job's own input arrays (median of the
  job's own submit and two more of the same arrays, cancelled at once);
- result: a `fetch` round trip of the finished job's result (read from its folder, encode, send,
  decode), the same bytes the result event carried at the end of the job;
- validate / encode+decode: the parts without sockets, for the breakdown;
- job: from just before `submit` until `wait` returned the result.

The overhead fraction is (submit + result) / job; the goal (issue 5) is at most 2 %. Sampling steps
are kept small, which makes the job shorter and the fraction larger: a conservative reading.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import protocol as P
from .client import BackendError, Client
from .server import Server, ServerConfig
from .specs import validate_job

FULL = (16, 512, 512, 4)  # frames, height, width, sampling steps of the measured job
QUICK = (4, 128, 128, 2)  # --quick: a smoke-test size
GOAL = 0.02  # the bound on (transport + validation) / job time
REPEATS = 5  # socket-free parts: median of this many runs


def configure(parser: argparse.ArgumentParser) -> None:
    """No options of its own: `--quick` and `--device` come from `parallax bench`."""


def synthetic_frames(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(F, H, W, 3) uint8: smooth moving gradients plus noise (incompressible, like real footage)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 200  # (H, W, 3)
    shift = np.arange(frames, dtype=np.float32)[:, None, None, None] * 3  # (F, 1, 1, 1)
    noise = rng.integers(0, 40, (frames, height, width, 3))
    return ((base[None] + shift + noise) % 256).astype(np.uint8)


def _median_seconds(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _codec_seconds(msg: P.Message) -> float:
    """Encode + decode without a socket (bytes() stands in for the copy the kernel makes)."""
    return _median_seconds(lambda: P.decode([bytes(f) for f in P.encode(msg)]))


def start_server(bundle, root: Path) -> tuple[Server, threading.Thread]:
    """The real server with the real runners, serving from a thread on a loopback port."""
    from backend.pipelines.runners import build_runners

    server = Server(ServerConfig(bind="tcp://127.0.0.1:0", job_root=root, info=bundle.info()),
                    build_runners(bundle))
    thread = threading.Thread(target=server.serve_forever, name="bench-server", daemon=True)
    thread.start()
    return server, thread


def _submit_seconds(client: Client, images: np.ndarray, steps: int) -> float:
    """One more real submit of the same arrays, cancelled at once (it only costs its round trip)."""
    start = time.perf_counter()
    job = client.submit("depth", {"images": images}, steps=steps)
    seconds = time.perf_counter() - start
    client.cancel(job)
    try:
        client.wait(job, idle_timeout=600.0)
    except BackendError as exc:
        if exc.code != P.CANCELLED:
            raise
    return seconds


def measure(client: Client, images: np.ndarray, steps: int) -> dict[str, float]:
    """Seconds of each stage for one depth job on `images` (round trips: median of a few)."""
    start = time.perf_counter()
    job = client.submit("depth", {"images": images}, steps=steps)
    submitted = time.perf_counter()
    client.wait(job, idle_timeout=3600.0)
    done = time.perf_counter()
    submits = [submitted - start, *(_submit_seconds(client, images, steps) for _ in range(REPEATS // 2))]
    result = _median_seconds(lambda: client.fetch(job), repeats=3)
    arrays, params = client.fetch(job)
    request = P.Message(type="submit", params={"job_type": "depth", "steps": steps}, arrays={"images": images})
    return {"job": done - start, "submit": statistics.median(submits), "result": result,
            "validate": _median_seconds(lambda: validate_job(request)),
            "codec_in": _codec_seconds(request),
            "codec_out": _codec_seconds(P.Message(type="result", job=job, params=params, arrays=arrays))}


def rows(t: dict[str, float], label: str) -> list[dict]:
    job = t["job"]

    def row(stage: str, seconds: float) -> dict:
        return {"job": label, "stage": stage, "ms": seconds * 1e3, "% of job": 100 * seconds / job}

    overhead = t["submit"] + t["result"]
    return [row("submit round trip (encode, socket, decode, validate, queue)", t["submit"]),
            row("  of which validate_job", t["validate"]),
            row("  of which encode+decode, no socket", t["codec_in"]),
            row("result round trip (fetch: read, encode, socket, decode)", t["result"]),
            row("  of which encode+decode, no socket", t["codec_out"]),
            row(f"transport + validation: {'OK' if overhead <= GOAL * job else 'OVER'} (goal <= {GOAL:.0%})",
                overhead),
            row("whole job (submit to result received)", job)]


def run_suite(args: argparse.Namespace) -> list[dict]:
    """Rows of the protocol table: each stage's time beside the job time measured in the same run."""
    from backend.pipelines.runners import load_bundle

    frames, height, width, steps = QUICK if getattr(args, "quick", False) else FULL
    bundle = load_bundle(None, getattr(args, "device", "auto"))
    images = synthetic_frames(frames, height, width)
    with tempfile.TemporaryDirectory(prefix="parallax-bench-") as tmp:
        server, thread = start_server(bundle, Path(tmp))
        try:
            with Client(server.endpoint, timeout=120.0) as client:
                client.wait(client.submit("depth", {"images": images[:2, :64, :64]}, steps=1))  # warm-up
                t = measure(client, images, steps)
        finally:
            server.stop()
            thread.join(30)
    return rows(t, f"depth {frames}x{height}x{width} steps={steps} on {bundle.device}")
