"""A small client for the Parallax server: numpy + pyzmq only (the Blender add-on vendors it).

One DEALER socket. Replies to requests carry the request's id; job events (progress, result, error)
carry the job id and are kept in arrival order until `next_event`/`wait` reads them, so a request
made while a job runs never loses that job's events. Not thread-safe: use it from one thread (the
add-on's worker thread).
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from . import protocol as P


class BackendError(RuntimeError):
    """The server answered with an error reply."""

    def __init__(self, code: str, message: str, job: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.job = code, message, job


class BackendUnavailable(ConnectionError):
    """No answer from the server within the timeout (not running, wrong address, or busy dying)."""


class Client:
    """Talk to a Parallax server at `address`; every call waits at most `timeout` seconds.

    `limits` bounds what replies may carry when decoded (default: protocol.Limits()).
    """

    def __init__(self, address: str = "tcp://127.0.0.1:5555", timeout: float = 10.0,
                 curve: tuple[bytes, bytes, bytes] | None = None, limits: P.Limits | None = None):
        self.address, self.timeout = address, timeout
        self.limits = limits or P.Limits()  # what a reply may carry (results can be larger than a request)
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:  # (client public, client secret, server public)
            self._sock.curve_publickey, self._sock.curve_secretkey, self._sock.curve_serverkey = curve
        self._sock.connect(address)
        self._events: collections.deque[P.Message] = collections.deque()

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _recv(self, timeout: float) -> P.Message:
        if not self._sock.poll(int(timeout * 1000)):
            raise BackendUnavailable(f"no answer from the Parallax backend at {self.address} within {timeout:.1f} s")
        return P.decode(self._sock.recv_multipart(copy=True), self.limits)

    def request(self, msg: P.Message, timeout: float | None = None) -> P.Message:
        """Send `msg` and return its reply; job events arriving meanwhile are queued, not lost."""
        msg.id = msg.id or uuid.uuid4().hex
        self._sock.send_multipart(P.encode(msg), copy=False)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._recv(max(deadline - time.monotonic(), 0.0))
            if reply.id == msg.id:
                if reply.type == "error":
                    raise BackendError(reply.params.get("code", "?"), reply.params.get("message", ""), reply.job)
                return reply
            self._events.append(reply)

    def hello(self) -> dict[str, Any]:
        return self.request(P.Message(type="hello")).params

    def status(self, job: str | None = None) -> dict[str, Any]:
        return self.request(P.Message(type="status", job=job)).params

    def list_jobs(self) -> list[dict[str, Any]]:
        return self.request(P.Message(type="list")).params["jobs"]

    def submit(self, job_type: str, arrays: dict[str, np.ndarray], **params: Any) -> str:
        """Queue a job; returns its id. Inputs are validated by the server before it is queued."""
        reply = self.request(P.Message(type="submit", params={"job_type": job_type, **params}, arrays=arrays))
        return reply.job

    def cancel(self, job: str) -> dict[str, Any]:
        return self.request(P.Message(type="cancel", job=job)).params

    def fetch(self, job: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        reply = self.request(P.Message(type="fetch", job=job))
        return reply.arrays, reply.params

    def next_event(self, job: str | None = None, timeout: float | None = None) -> P.Message:
        """The next event (progress, result or error) of `job` (any job if None), waiting at most `timeout` s."""
        for i, event in enumerate(self._events):
            if job is None or event.job == job:
                del self._events[i]
                return event
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            event = self._recv(max(deadline - time.monotonic(), 0.0))
            if job is None or event.job == job:
                return event
            self._events.append(event)  # another job's event: keep it for its own reader

    def wait(self, job: str, on_progress: Callable[[float, str], None] | None = None,
             idle_timeout: float = 600.0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Block until `job` ends: its result arrays and params, or BackendError for its error/cancel.

        `idle_timeout` bounds the silence between two events (the server reports progress often).
        """
        while True:
            event = self.next_event(job, idle_timeout)
            if event.type == "progress" and on_progress is not None:
                on_progress(event.params.get("progress", 0.0), event.params.get("message", ""))
            elif event.type == "result":
                return event.arrays, event.params
            elif event.type == "error":
                raise BackendError(event.params.get("code", "?"), event.params.get("message", ""), job)
