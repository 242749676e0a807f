"""Jobs on disk and the one worker that runs them.

Every job lives in its own folder under the server's job root:

    <root>/<job id>/status.json          state, progress, error — replaced atomically on every change
    <root>/<job id>/result/arrays.json   result params and array descriptors
    <root>/<job id>/result/<name>.npy    one file per result array

The result folder is written under a temporary name and renamed into place, so a result either
exists whole or not at all; a client that disconnected mid-job can fetch it later by job id.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

# A runner: (arrays, params, progress) -> (result arrays, result params). `progress(fraction, text)`
# raises JobCancelled when the job has been cancelled, so runners stop at their next report.
Runner = Callable[[dict[str, np.ndarray], dict[str, Any], Callable[[float, str], None]],
                  tuple[dict[str, np.ndarray], dict[str, Any]]]

STATES = ("queued", "running", "done", "failed", "cancelled")


class JobCancelled(Exception):
    """Raised inside a runner (through its progress callback) when its job was cancelled."""


@dataclass
class JobStatus:
    """What status.json holds for one job."""

    id: str  # job id (hex)
    job_type: str  # key of specs.JOB_SPECS
    state: str = "queued"  # one of STATES
    progress: float = 0.0  # fraction done in [0, 1]
    message: str = ""  # last progress text or the error message
    error_code: str | None = None  # protocol error code when state == "failed"
    created: float = field(default_factory=time.time)  # unix time
    finished: float | None = None  # unix time when done/failed/cancelled


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class JobStore:
    """Job folders under `root`: status, and results written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def create(self, job_type: str) -> JobStatus:
        status = JobStatus(id=uuid.uuid4().hex, job_type=job_type)
        (self.root / status.id).mkdir()
        self.write_status(status)
        return status

    def write_status(self, status: JobStatus) -> None:
        _atomic_write_text(self.root / status.id / "status.json", json.dumps(asdict(status)))

    def status(self, job_id: str) -> JobStatus | None:
        if not _is_job_id(job_id):
            return None
        path = self.root / job_id / "status.json"
        try:
            return JobStatus(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    def list(self) -> list[JobStatus]:
        found = (self.status(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted((s for s in found if s is not None), key=lambda s: s.created)

    def write_result(self, job_id: str, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> None:
        final = self.root / job_id / "result"
        tmp = self.root / job_id / f".result.{uuid.uuid4().hex}.tmp"
        tmp.mkdir()
        try:
            descriptors = []
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
                descriptors.append(name)
            _atomic_write_text(tmp / "arrays.json", json.dumps({"arrays": descriptors, "params": params}))
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def read_result(self, job_id: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        folder = self.root / job_id / "result"
        if not _is_job_id(job_id) or not folder.is_dir():
            return None
        index = json.loads((folder / "arrays.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in index["arrays"]}
        return arrays, index["params"]


def _is_job_id(job_id: str) -> bool:
    return isinstance(job_id, str) and len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


@dataclass
class _Work:
    status: JobStatus
    arrays: dict[str, np.ndarray]
    params: dict[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    started: bool = False  # set by the worker under the queue's lock when it takes the job


class JobQueue:
    """A bounded FIFO of jobs run one at a time by a single worker thread (one device, one model).

    Events (progress, result, error) are handed to `notify(status)`; the server forwards them to the
    submitting client. The worker never touches sockets.
    """

    def __init__(self, store: JobStore, runners: dict[str, Runner], notify: Callable[[JobStatus], None],
                 max_queued: int = 32):
        self.store, self.runners, self.notify = store, runners, notify
        self._queue: queue.Queue[_Work | None] = queue.Queue(maxsize=max_queued)
        self._work: dict[str, _Work] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="parallax-worker", daemon=True)
        self._thread.start()

    def submit(self, job_type: str, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> JobStatus:
        """Queue a validated job; raises queue.Full when the queue is at its limit."""
        if self._queue.full():
            raise queue.Full
        status = self.store.create(job_type)
        work = _Work(status, arrays, params)
        with self._lock:
            self._work[status.id] = work
        self._queue.put_nowait(work)
        return status

    def cancel(self, job_id: str) -> bool:
        """Stop a job: a queued one is cancelled at once, a running one at its next progress report.

        Returns False when the job is not active (unknown, or already finished).
        """
        with self._lock:
            work = self._work.get(job_id)
            if work is None:
                return False
            work.cancel.set()
            if not work.started:  # nobody else touches its status until the worker skips it
                self._finish(work.status, "cancelled", "cancelled", "cancelled")
        return True

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the worker."""
        with self._lock:
            for work in self._work.values():
                work.cancel.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _finish(self, status: JobStatus, state: str, message: str, code: str | None) -> None:
        status.state, status.message, status.error_code, status.finished = state, message, code, time.time()
        self._publish(status)

    def _publish(self, status: JobStatus) -> None:
        """Write status.json, then hand the server a snapshot (the worker goes on mutating `status`)."""
        self.store.write_status(status)
        self.notify(replace(status))

    def _loop(self) -> None:
        while (work := self._queue.get()) is not None:
            with self._lock:
                work.started = not work.cancel.is_set()
            if not work.started:  # cancelled while queued: already reported
                with self._lock:
                    self._work.pop(work.status.id, None)
                continue
            try:
                self._run(work)
            finally:
                with self._lock:
                    self._work.pop(work.status.id, None)

    def _run(self, work: _Work) -> None:
        status = work.status

        def progress(fraction: float, text: str = "") -> None:
            if work.cancel.is_set():
                raise JobCancelled
            status.progress, status.message = float(min(max(fraction, 0.0), 1.0)), text
            self._publish(status)

        try:
            status.state = "running"
            progress(0.0, "started")
            arrays, params = self.runners[status.job_type](work.arrays, work.params, progress)
            self.store.write_result(status.id, arrays, params)
            status.progress = 1.0
            self._finish(status, "done", "done", None)
        except JobCancelled:
            self._finish(status, "cancelled", "cancelled", "cancelled")
        except (ValueError, FileNotFoundError) as exc:
            self._finish(status, "failed", str(exc), "invalid_input")
        except Exception as exc:  # a failing job must never take the server down
            traceback.print_exc()
            self._finish(status, "failed", f"{type(exc).__name__}: {exc}", "internal")
