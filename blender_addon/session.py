"""Process-wide add-on state (no bpy): the worker thread, a local backend process, jobs in flight.

Operators create jobs here and hand requests to the worker; the pump drains the worker's events and
looks up each job's context (what to do with its result) by tag.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .worker import Request, Worker


@dataclass
class JobContext:
    """What the pump needs to apply one job's result to the scene."""

    tag: str  # the add-on's job id
    job_type: str  # key of specs.JOB_SPECS
    scene: str  # name of the scene the job was started from
    out_dir: Path  # where its files go (never the extension's folder)
    frame_start: int = 1  # first scene frame of the result
    options: dict[str, Any] = field(default_factory=dict)  # per-job extras (camera name, sizes, flags)
    done: bool = False  # set by the pump once a result or error was applied


@dataclass
class LocalBackend:
    """A `parallax serve` child process started from the preferences."""

    process: subprocess.Popen  # the child
    log_path: Path  # its stdout+stderr
    address: str  # what it binds

    def exit_message(self) -> str | None:
        """None while running, else why it stopped with the tail of its log."""
        code = self.process.poll()
        if code is None:
            return None
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        return f"local backend exited with code {code}" + (": " + " | ".join(tail) if tail else "")


class Session:
    """The one session per Blender process (module singleton `SESSION`)."""

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.backend: LocalBackend | None = None
        self.jobs: dict[str, JobContext] = {}
        self.server_limits: dict[str, int] = {}  # protocol.Limits fields from the server's hello ({} until then)

    def ensure_worker(self, address: str, timeout: float, heartbeat: float = 2.0) -> Worker:
        """The running worker for `address`, (re)started when the address or timeout changed."""
        w = self.worker
        if w is None or not w.is_alive() or w.address != address or w.timeout != float(timeout):
            if w is not None:
                w.stop()
            w = self.worker = Worker(address, timeout, heartbeat)
            w.start()
        return w

    def submit(self, ctx: JobContext, arrays: dict, params: dict, address: str, timeout: float,
               submit_timeout: float | None = None) -> None:
        """Queue a job; `submit_timeout` bounds the wait for the submit reply (big inputs take longer)."""
        self.jobs[ctx.tag] = ctx
        self.ensure_worker(address, timeout).put(Request("submit", tag=ctx.tag, job_type=ctx.job_type,
                                                         arrays=arrays, params=params, timeout=submit_timeout))

    def cancel(self, tag: str) -> None:
        if self.worker is not None:
            self.worker.put(Request("cancel", tag=tag))

    def start_backend(self, command: list[str], address: str, log_path: Path) -> LocalBackend:
        """Start `command --bind address` with its output in `log_path`; one local backend at a time."""
        self.stop_backend()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*command, "--bind", address], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, **_own_group())
        self.backend = LocalBackend(proc, log_path, address)
        return self.backend

    def stop_backend(self, timeout: float = 5.0) -> None:
        b, self.backend = self.backend, None
        if b is None or b.process.poll() is not None:
            return
        _signal_group(b.process, kill=False)
        try:
            b.process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(b.process, kill=True)
            b.process.wait(timeout)

    def shutdown(self) -> None:
        """On unregister: stop the thread and our child; jobs already sent keep their results server-side."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.stop_backend()
        self.jobs.clear()


def _own_group() -> dict[str, Any]:
    """Popen options that give the backend its own process group (so stopping it stops its children too,
    and Ctrl+C in Blender's terminal does not reach it) and, on Windows, no console window."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def _signal_group(process: subprocess.Popen, kill: bool) -> None:
    """SIGTERM (or SIGKILL) the backend's whole process group on POSIX; terminate/kill it on Windows."""
    if os.name == "nt":
        if kill:
            process.kill()
        else:
            process.terminate()
        return
    with contextlib.suppress(ProcessLookupError):  # pgid == pid: the child leads its own session
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


def backend_command(python: str, command: str) -> list[str]:
    """The argv that starts a backend: the preference's own command, else `<python> -m backend.cli serve`
    with the interpreter of the environment where parallax is installed, else `parallax serve` from PATH.

    Never Blender's own interpreter: the backend needs torch, which is never imported inside Blender.
    """
    if command.strip():
        return shlex.split(command, posix=os.name != "nt")  # keep Windows backslashes in paths
    if python.strip():
        return [python.strip(), "-m", "backend.cli", "serve"]
    return ["parallax", "serve"]


SESSION = Session()
