"""The worker thread: the only code that touches the ZeroMQ socket (no bpy here).

Requests go in through a queue (connect, submit, cancel, stop); events come out through another
(connected, submitted, progress, result, error, disconnected) and the timer pump (pump.py) applies
them to the scene. Every socket wait is bounded: a missing backend answers a request with an error
event after `timeout` seconds, and a job that goes silent is checked with a `status` request every
`heartbeat` seconds, so a backend that died mid-job surfaces as an error instead of a frozen job.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._vendor import client as vclient
from ._vendor import protocol as P

POLL_S = 0.05  # how long one loop iteration waits for a request or a socket event
# Replies may be far larger than the 1 GiB a request may carry (results of ~max_output_pixels frames
# with depth); the socket is loopback by default, so the worker accepts up to 64 GiB when decoding.
RESULT_LIMITS = P.Limits(max_message_bytes=1 << 36)


@dataclass
class Request:
    """One thing for the worker to do."""

    kind: str  # "connect" | "submit" | "cancel" | "stop"
    tag: str = ""  # the add-on's own job id (known before the server's)
    job_type: str = ""  # submit: key of specs.JOB_SPECS
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # submit: inputs
    params: dict[str, Any] = field(default_factory=dict)  # submit: parameters
    timeout: float | None = None  # submit: seconds to wait for the reply (None: the worker's timeout)


@dataclass
class Event:
    """One thing that happened, for the pump to apply to the scene."""

    kind: str  # "connected" | "disconnected" | "submitted" | "progress" | "result" | "error"
    tag: str = ""  # the add-on's job id ("" for connection events)
    job: str | None = None  # the server's job id
    message: str = ""  # human-readable text (errors say what to do)
    params: dict[str, Any] = field(default_factory=dict)  # hello info, progress fields or result params
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # result arrays
    code: str = ""  # protocol error code for errors ("unavailable" when the backend is gone)


UNAVAILABLE = "unavailable"


class Worker(threading.Thread):
    """Owns one vendored Client; run as a daemon thread so Blender can always quit."""

    def __init__(self, address: str, timeout: float = 5.0, heartbeat: float = 2.0):
        super().__init__(name="parallax-worker", daemon=True)
        self.address, self.timeout, self.heartbeat = address, float(timeout), float(heartbeat)
        self.requests: queue.Queue[Request] = queue.Queue()
        self.events: queue.Queue[Event] = queue.Queue()
        self._client: vclient.Client | None = None
        self._active: dict[str, str] = {}  # server job id -> tag
        self._heard: dict[str, float] = {}  # server job id -> monotonic time of its last event
        self._stopped = threading.Event()

    # ------------------------------------------------------------------ called from Blender's thread

    def put(self, request: Request) -> None:
        self.requests.put(request)

    def drain(self) -> list[Event]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def stop(self, join: float = 2.0) -> None:
        self._stopped.set()
        self.requests.put(Request("stop"))
        if self.is_alive() and threading.current_thread() is not self:
            self.join(join)

    @property
    def busy(self) -> bool:
        return bool(self._active) or not self.requests.empty()

    # ------------------------------------------------------------------ the thread

    def run(self) -> None:
        try:
            while not self._stopped.is_set():
                try:
                    req = self.requests.get(timeout=POLL_S if not self._active else 0.0)
                except queue.Empty:
                    req = None
                if req is not None and req.kind == "stop":
                    break
                try:
                    if req is not None:
                        self._handle(req)
                    if self._active:
                        self._pump_socket()
                except Exception as exc:  # last resort: the thread must outlive any bug, jobs must end
                    traceback.print_exc()
                    self._reset()
                    self._fail_all(f"Parallax worker error: {type(exc).__name__}: {exc}", "internal")
        finally:
            self._reset()

    def _client_or_new(self) -> vclient.Client:
        if self._client is None:
            self._client = vclient.Client(self.address, timeout=self.timeout, limits=RESULT_LIMITS)
        return self._client

    def _reset(self) -> None:
        """Drop the socket: a request that timed out may be answered late and would confuse the next."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _unavailable(self, what: str) -> str:
        return (f"No answer from the Parallax backend at {self.address} within {self.timeout:g} s ({what}). "
                "Start it (Backend ▸ Start Local Backend or `parallax serve`) or check the address.")

    def _handle(self, req: Request) -> None:
        try:
            client = self._client_or_new()
            if req.kind == "connect":
                timeout = req.params.get("timeout")  # a freshly started backend may need longer
                self.events.put(Event("connected", params=client.request(P.Message("hello"), timeout).params))
            elif req.kind == "submit":
                msg = P.Message("submit", params={"job_type": req.job_type, **req.params}, arrays=req.arrays)
                job = client.request(msg, req.timeout).job
                self._active[job], self._heard[job] = req.tag, time.monotonic()
                self.events.put(Event("submitted", tag=req.tag, job=job))
            elif req.kind == "cancel":
                job = next((j for j, t in self._active.items() if t == req.tag), None)
                if job is not None:
                    client.cancel(job)  # the server answers with the job's `cancelled` error event
        except vclient.BackendUnavailable:
            self._reset()
            kind = "disconnected" if req.kind == "connect" else "error"
            self.events.put(Event(kind, tag=req.tag, code=UNAVAILABLE, message=self._unavailable(req.kind)))
            if req.kind == "cancel":
                self._fail_all(self._unavailable("cancel"))
        except vclient.BackendError as exc:
            kind = "disconnected" if req.kind == "connect" else "error"
            self.events.put(Event(kind, tag=req.tag, code=exc.code, message=f"Backend refused: {exc.message}"))
        except Exception as exc:  # a bug here must not kill the thread silently
            self._reset()
            self.events.put(Event("error", tag=req.tag, code="internal", message=f"{type(exc).__name__}: {exc}"))

    def _pump_socket(self) -> None:
        """Forward every job event waiting on the socket; check silent jobs with a status request."""
        client = self._client_or_new()
        try:
            while True:
                try:
                    msg = client.next_event(None, timeout=POLL_S)
                except vclient.BackendUnavailable:
                    break  # nothing waiting: not an error by itself
                self._forward(msg)
            now = time.monotonic()
            for job in [j for j, t in self._heard.items() if now - t > self.heartbeat]:
                status = client.status(job)
                self._heard[job] = time.monotonic()
                if job in self._active and status.get("state") in ("done", "failed", "cancelled"):
                    self._recover(client, job, status)
        except vclient.BackendUnavailable:
            self._reset()
            self._fail_all(self._unavailable("during a job") + " Finished results stay in the backend's job "
                           "folder and can be fetched again by job id.")
        except vclient.BackendError as exc:
            self._fail_all(f"Backend refused a status request: {exc.message}")
        except Exception as exc:  # e.g. a reply that does not decode, a zmq error: drop the socket
            traceback.print_exc()
            self._reset()
            self._fail_all(f"Could not read the backend's reply ({type(exc).__name__}: {exc}). Finished "
                           "results stay in the backend's job folder and can be fetched again by job id.",
                           "internal")

    def _forward(self, msg) -> None:
        job = msg.job
        tag = self._active.get(job)
        if tag is None:
            return  # a late reply or another session's event
        self._heard[job] = time.monotonic()
        if msg.type == "progress":
            self.events.put(Event("progress", tag=tag, job=job, params=dict(msg.params),
                                  message=str(msg.params.get("message", ""))))
        elif msg.type == "result":
            self._finish(job)
            self.events.put(Event("result", tag=tag, job=job, params=dict(msg.params), arrays=dict(msg.arrays)))
        elif msg.type == "error":
            self._finish(job)
            code = msg.params.get("code", "?")
            self.events.put(Event("error", tag=tag, job=job, code=code,
                                  message=str(msg.params.get("message", "")) or code))

    def _recover(self, client: vclient.Client, job: str, status: dict) -> None:
        """A job ended but its event was lost (e.g. the socket was reset): fetch or report it."""
        tag = self._active[job]
        self._finish(job)
        if status["state"] == "done":
            arrays, params = client.fetch(job)
            self.events.put(Event("result", tag=tag, job=job, params=params, arrays=arrays))
        else:
            self.events.put(Event("error", tag=tag, job=job, code=status.get("error_code") or status["state"],
                                  message=status.get("message", "") or status["state"]))

    def _finish(self, job: str) -> None:
        self._active.pop(job, None)
        self._heard.pop(job, None)

    def _fail_all(self, message: str, code: str = UNAVAILABLE) -> None:
        for job, tag in list(self._active.items()):
            self._finish(job)
            self.events.put(Event("error", tag=tag, job=job, code=code, message=message))
