"""JobQueue mechanics: snapshots per event, immediate cancel of queued jobs, failures kept apart."""

import queue
import threading

import numpy as np

from backend.server.jobs import JobQueue, JobStore


def _gate_runner(gate: threading.Event, ran: list):
    """A runner that waits for `gate`, reporting progress, then returns the mean of its input."""

    def run(arrays, params, progress):
        ran.append(params["name"])
        while not gate.wait(0.01):
            progress(0.5, "waiting")
        return {"mean": np.array([arrays["x"].mean()])}, {"name": params["name"]}

    return run


def _drain(events: queue.Queue, job: str, state: str, timeout: float = 5.0):
    while True:
        status = events.get(timeout=timeout)
        if status.id == job and status.state == state:
            return status


def test_queued_job_is_cancelled_at_once_and_never_runs(tmp_path):
    events: queue.Queue = queue.Queue()
    gate, ran = threading.Event(), []
    jobs = JobQueue(JobStore(tmp_path), {"depth": _gate_runner(gate, ran)}, events.put)
    a = jobs.submit("depth", {"x": np.ones(3)}, {"name": "a"})
    b = jobs.submit("depth", {"x": np.ones(3)}, {"name": "b"})
    _drain(events, a.id, "running")
    assert jobs.cancel(b.id)
    cancelled = _drain(events, b.id, "cancelled")  # before job a ends
    assert cancelled.error_code == "cancelled" and jobs.store.status(b.id).state == "cancelled"
    gate.set()
    done = _drain(events, a.id, "done")
    jobs.close()
    assert ran == ["a"] and done.progress == 1.0
    assert jobs.store.read_result(a.id)[0]["mean"][0] == 1.0 and jobs.store.read_result(b.id) is None
    assert not jobs.cancel(a.id)  # finished jobs are not active


def test_events_are_snapshots_not_the_live_status(tmp_path):
    events: queue.Queue = queue.Queue()
    gate, ran = threading.Event(), []
    gate.set()
    jobs = JobQueue(JobStore(tmp_path), {"depth": _gate_runner(gate, ran)}, events.put)
    job = jobs.submit("depth", {"x": np.zeros(2)}, {"name": "c"})
    first = events.get(timeout=5)
    _drain(events, job.id, "done")
    jobs.close()
    assert first.state == "running" and first.progress == 0.0  # not mutated by the later "done"


def test_a_failing_runner_fails_only_its_job(tmp_path):
    events: queue.Queue = queue.Queue()

    def broken(arrays, params, progress):
        raise ValueError("depth: no valid pixels")

    jobs = JobQueue(JobStore(tmp_path), {"depth": broken}, events.put)
    job = jobs.submit("depth", {}, {})
    failed = _drain(events, job.id, "failed")
    jobs.close()
    assert failed.error_code == "invalid_input" and "no valid pixels" in failed.message
