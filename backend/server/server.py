"""The ZeroMQ backend server: one ROUTER socket, one job queue, one worker on the device.

Only the main thread touches the socket. The worker reports through a thread-safe queue that the
main loop drains between polls, so progress, results and errors reach the client that submitted the
job; if that client is gone, ROUTER drops the message and the result stays in its job folder.
Every request is decoded and validated (protocol.decode, specs.validate_job) before any work, and
any bad request gets an error reply while the loop keeps serving.
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zmq

from . import protocol as P
from .jobs import JobQueue, JobStatus, JobStore, Runner
from .specs import JOB_SPECS, validate_job

NOT_READY = "not_ready"  # fetch of a job that has no result (yet)


@dataclass
class ServerConfig:
    """How the server listens and what it allows."""

    bind: str = "tcp://127.0.0.1:5555"  # ZeroMQ endpoint; non-loopback needs CURVE keys
    job_root: Path = Path("parallax-jobs")  # one folder per job; results survive disconnects
    limits: P.Limits = field(default_factory=P.Limits)  # sizes checked before any work
    max_queued: int = 32  # submits beyond this get a `busy` error
    curve_secret: Path | None = None  # server key file (zmq.auth format) for CURVE
    curve_clients: Path | None = None  # folder of allowed client public keys
    info: dict[str, Any] = field(default_factory=dict)  # model, device, memory: sent in hello


def is_loopback(endpoint: str) -> bool:
    """True for tcp endpoints on 127.0.0.0/8, ::1 or localhost, and for ipc/inproc endpoints."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*' or an interface name: reachable from outside


class Server:
    """Serve jobs on `config.bind` with the given runners until `stop()` is called."""

    def __init__(self, config: ServerConfig, runners: dict[str, Runner]):
        self.config = config
        self.store = JobStore(config.job_root)
        self._events: queue.Queue[JobStatus] = queue.Queue()
        self.jobs = JobQueue(self.store, runners, self._events.put, config.max_queued)
        self._owners: dict[str, bytes] = {}  # job id -> ROUTER identity of the submitter
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._auth = None
        try:
            self.socket = self._bind()
        except BaseException:  # no half-started server: stop the worker, the authenticator, the context
            self.jobs.close()
            if self._auth is not None:
                self._auth.stop()
            self._ctx.destroy(linger=0)
            raise

    def _bind(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.limits.max_message_bytes + P.MAX_HEADER_BYTES)
        if not is_loopback(self.config.bind):
            self._enable_curve(sock)
        sock.bind(self.config.bind)
        return sock

    def _enable_curve(self, sock: zmq.Socket) -> None:
        from zmq.auth import load_certificate
        from zmq.auth.thread import ThreadAuthenticator

        if self.config.curve_secret is None or self.config.curve_clients is None:
            raise ValueError(f"binding {self.config.bind} (not loopback) requires CURVE keys: "
                             "--curve-secret and --curve-clients (see `parallax keys`)")
        public, secret = load_certificate(str(self.config.curve_secret))
        if secret is None:
            raise ValueError(f"{self.config.curve_secret}: not a secret key file")
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(self.config.curve_clients))
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True

    @property
    def endpoint(self) -> str:
        """The bound endpoint (with the real port when binding to port 0 or '*')."""
        return self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def stop(self) -> None:
        self._stop.set()

    def serve_forever(self, poll_ms: int = 20) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(poll_ms):
                    self._handle(self.socket.recv_multipart(copy=False))
                self._flush_events()
        finally:
            self.jobs.close()
            self._flush_events()
            self.socket.close(0)
            if self._auth is not None:
                self._auth.stop()
            self._ctx.term()

    def _send(self, identity: bytes, msg: P.Message) -> None:
        try:
            frames = P.encode(msg)
        except P.ProtocolError as exc:  # a result the wire cannot carry becomes an error reply
            frames = P.encode(P.error_message(P.INTERNAL, f"cannot send {msg.type}: {exc}", id=msg.id, job=msg.job))
        # A vanished peer is not an error: results stay on disk for a later fetch.
        with contextlib.suppress(zmq.ZMQError):
            self.socket.send_multipart([identity, *frames], copy=False)

    def _handle(self, frames: list) -> None:
        identity, body = frames[0].bytes, [f.buffer for f in frames[1:]]
        msg_id = None
        try:
            msg = P.decode(body, self.config.limits)
            msg_id = msg.id
            if msg.type not in P.REQUEST_TYPES:
                raise P.ProtocolError(P.BAD_MESSAGE, f"{msg.type!r} is not a request")
            reply = getattr(self, f"_on_{msg.type}")(identity, msg)
        except P.ProtocolError as exc:
            reply = P.error_message(exc.code, str(exc), id=msg_id or exc.id)
        except Exception as exc:  # never let one request kill the loop
            reply = P.error_message(P.INTERNAL, f"{type(exc).__name__}: {exc}", id=msg_id)
        self._send(identity, reply)

    def _on_hello(self, identity: bytes, msg: P.Message) -> P.Message:
        params = {"server": "parallax", "protocol": P.PROTOCOL_VERSION, "jobs": sorted(JOB_SPECS),
                  "limits": asdict(self.config.limits), **self.config.info}
        return P.Message(type="hello", id=msg.id, params=params)

    def _on_status(self, identity: bytes, msg: P.Message) -> P.Message:
        if msg.job is None:
            return P.Message(type="status", id=msg.id, params={"queued": self.jobs.pending(), **self.config.info})
        return P.Message(type="status", id=msg.id, job=msg.job, params=asdict(self._known(msg.job)))

    def _on_submit(self, identity: bytes, msg: P.Message) -> P.Message:
        job_type, arrays, params = validate_job(msg, self.config.limits)
        try:
            status = self.jobs.submit(job_type, {k: v.copy() for k, v in arrays.items()}, params)
        except queue.Full:
            raise P.ProtocolError(P.BUSY, f"{self.config.max_queued} jobs already queued") from None
        self._owners[status.id] = identity
        return P.Message(type="status", id=msg.id, job=status.id, params=asdict(status))

    def _on_cancel(self, identity: bytes, msg: P.Message) -> P.Message:
        status = self._known(msg.job)
        self.jobs.cancel(status.id)
        return P.Message(type="status", id=msg.id, job=status.id, params=asdict(status))

    def _on_list(self, identity: bytes, msg: P.Message) -> P.Message:
        return P.Message(type="list", id=msg.id, params={"jobs": [asdict(s) for s in self.store.list()]})

    def _on_fetch(self, identity: bytes, msg: P.Message) -> P.Message:
        status = self._known(msg.job)
        result = self.store.read_result(status.id)
        if result is None:
            raise P.ProtocolError(NOT_READY, f"job {status.id} is {status.state}: no result to fetch")
        arrays, params = result
        return P.Message(type="result", id=msg.id, job=status.id, params=params, arrays=arrays)

    def _known(self, job_id: str | None) -> JobStatus:
        status = self.store.status(job_id) if job_id else None
        if status is None:
            raise P.ProtocolError(P.UNKNOWN_JOB, f"no job {job_id!r}")
        return status

    def _flush_events(self) -> None:
        while True:
            try:
                status = self._events.get_nowait()
            except queue.Empty:
                return
            identity = self._owners.get(status.id)
            if status.state in ("done", "failed", "cancelled"):
                self._owners.pop(status.id, None)
            if identity is None:
                continue
            try:
                event = self._event_message(status)
            except Exception as exc:  # e.g. the result vanished from disk: tell the client, keep serving
                event = P.error_message(P.INTERNAL, f"cannot read the result: {type(exc).__name__}: {exc}",
                                        job=status.id)
            self._send(identity, event)

    def _event_message(self, status: JobStatus) -> P.Message:
        if status.state == "done":
            result = self.store.read_result(status.id)
            arrays, params = result if result is not None else ({}, {})
            return P.Message(type="result", job=status.id, params=params, arrays=arrays)
        if status.state in ("failed", "cancelled"):
            return P.error_message(status.error_code or P.INTERNAL, status.message, job=status.id)
        return P.Message(type="progress", job=status.id, params=asdict(status))
