"""The Parallax wire protocol: every message type, in one place.

A message is a list of ZeroMQ frames: one UTF-8 JSON header, then one raw buffer per array, in the
order the header lists them (vLLM-style `(dtype, shape, buffer)` frames; never pickle). The header:

    {"v": 1, "type": "submit", "id": "<client message id>", "job": "<job id or null>",
     "arrays": [{"name": "image", "dtype": "uint8", "shape": [480, 640, 3]}, ...],
     "params": {...}}

Types: hello, status, submit, progress, result, error, cancel, list, fetch (DESIGN.md, Server and
protocol). Every job's inputs are checked against `JOB_SPECS` before any work: dtype, shape, sizes,
finite numbers, known parameters. This module imports only numpy and the stdlib so that the Blender
add-on can vendor it unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
MESSAGE_TYPES = ("hello", "status", "submit", "progress", "result", "error", "cancel", "list", "fetch")
# Client → server requests (the others only travel server → client).
REQUEST_TYPES = ("hello", "status", "submit", "cancel", "list", "fetch")
DTYPES = ("uint8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool")
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAYS = 16
MAX_NDIM = 5

# Error codes: a client can switch on these; the message says the detail.
BAD_MESSAGE = "bad_message"  # not parseable: frames, JSON, header fields
BAD_VERSION = "bad_version"  # protocol version mismatch
INVALID_INPUT = "invalid_input"  # parseable but wrong: shapes, dtypes, NaN cameras, parameters
TOO_LARGE = "too_large"  # over a configured limit
UNKNOWN_JOB = "unknown_job"  # no such job id
CANCELLED = "cancelled"  # the job was cancelled
BUSY = "busy"  # the queue is full
INTERNAL = "internal"  # the job failed inside the backend


class ProtocolError(ValueError):
    """A message or job request that must be answered with an error reply."""

    def __init__(self, code: str, message: str, id: str | None = None):
        super().__init__(message)
        self.code = code
        self.id = id  # the request's id when its header parsed, so the reply can be matched


@dataclass
class Limits:
    """Server-side limits enforced before any work (a client may ask for them through `hello`)."""

    max_message_bytes: int = 1 << 30  # total bytes of all array buffers in one message
    max_frames: int = 512  # frames per job
    max_pixels: int = 4096 * 4096  # pixels per frame
    max_points: int = 50_000_000  # points in a point-cloud input
    max_output_pixels: int = 1 << 28  # frames × pixels a job may produce (~2 GB of RGB + depth)


@dataclass
class Message:
    """A decoded message: header fields plus numpy arrays by name."""

    type: str
    id: str | None = None
    job: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def encode(msg: Message) -> list[bytes | memoryview]:
    """Frames for `msg`: the JSON header, then each array's buffer (no copy for contiguous arrays)."""
    if msg.type not in MESSAGE_TYPES:
        raise ProtocolError(BAD_MESSAGE, f"unknown message type {msg.type!r}")
    descriptors, buffers = [], []
    for name, array in msg.arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype.name not in DTYPES:
            raise ProtocolError(INVALID_INPUT, f"array {name!r}: dtype {array.dtype.name} not allowed")
        descriptors.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape)})
        buffers.append(memoryview(array).cast("B") if array.size else b"")
    header = {"v": PROTOCOL_VERSION, "type": msg.type, "id": msg.id, "job": msg.job,
              "arrays": descriptors, "params": msg.params}
    try:
        text = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as exc:  # NaN/inf or a non-JSON object in params
        raise ProtocolError(INVALID_INPUT, f"params are not finite JSON: {exc}") from None
    return [text.encode(), *buffers]


def decode(frames: list[bytes], limits: Limits | None = None) -> Message:
    """Parse and check frames into a Message; raises ProtocolError with a code for anything wrong."""
    limits = limits or Limits()
    if not frames:
        raise ProtocolError(BAD_MESSAGE, "empty message")
    header = _parse_header(frames[0])
    try:
        return _decode_body(header, frames, limits)
    except ProtocolError as exc:
        exc.id = header.get("id")
        raise


def _decode_body(header: dict, frames: list[bytes], limits: Limits) -> Message:
    descriptors = header.get("arrays", [])
    if not isinstance(descriptors, list) or len(descriptors) > MAX_ARRAYS:
        raise ProtocolError(BAD_MESSAGE, f"'arrays' must be a list of at most {MAX_ARRAYS} descriptors")
    if len(descriptors) != len(frames) - 1:
        raise ProtocolError(BAD_MESSAGE, f"header lists {len(descriptors)} arrays but {len(frames) - 1} "
                            "buffers follow")
    total = sum(len(f) for f in frames[1:])
    if total > limits.max_message_bytes:
        raise ProtocolError(TOO_LARGE, f"message carries {total} bytes; limit {limits.max_message_bytes}")
    arrays = {}
    for desc, buf in zip(descriptors, frames[1:]):
        name, array = _parse_array(desc, buf)
        if name in arrays:
            raise ProtocolError(BAD_MESSAGE, f"array {name!r} listed twice")
        arrays[name] = array
    return Message(type=header["type"], id=header.get("id"), job=header.get("job"),
                   params=header.get("params") or {}, arrays=arrays)


def _parse_header(raw: bytes) -> dict:
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(TOO_LARGE, f"header is {len(raw)} bytes; limit {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(BAD_MESSAGE, f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(BAD_MESSAGE, "header must be a JSON object")
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
        raise ProtocolError(BAD_VERSION, f"protocol version {version!r}; this side speaks "
                            f"{PROTOCOL_VERSION}")
    if header.get("type") not in MESSAGE_TYPES:
        raise ProtocolError(BAD_MESSAGE, f"unknown message type {header.get('type')!r}")
    for key in ("id", "job"):
        if header.get(key) is not None and not isinstance(header[key], str):
            raise ProtocolError(BAD_MESSAGE, f"'{key}' must be a string or null")
    if header.get("params") is not None and not isinstance(header["params"], dict):
        raise ProtocolError(BAD_MESSAGE, "'params' must be a JSON object")
    return header


def _reject_constant(name: str) -> None:
    raise ProtocolError(BAD_MESSAGE, f"header contains {name}; numbers must be finite")


def _parse_array(desc: Any, buf: bytes) -> tuple[str, np.ndarray]:
    if not isinstance(desc, dict) or not isinstance(desc.get("name"), str):
        raise ProtocolError(BAD_MESSAGE, "array descriptor needs a string 'name'")
    name, dtype, shape = desc["name"], desc.get("dtype"), desc.get("shape")
    if dtype not in DTYPES:
        raise ProtocolError(INVALID_INPUT, f"array {name!r}: dtype {dtype!r} not one of {DTYPES}")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ProtocolError(INVALID_INPUT, f"array {name!r}: shape must be a list of at most {MAX_NDIM} "
                            "non-negative integers")
    itemsize = np.dtype(dtype).itemsize
    expected = math.prod(shape) * itemsize
    if expected != len(buf):
        raise ProtocolError(INVALID_INPUT, f"array {name!r}: shape {shape} × {dtype} needs {expected} "
                            f"bytes, buffer has {len(buf)}")
    try:
        return name, np.frombuffer(buf, dtype=dtype).reshape(shape)
    except ValueError as exc:  # e.g. [0, 10**30]: zero bytes, but numpy refuses the dimension
        raise ProtocolError(INVALID_INPUT, f"array {name!r}: shape {shape} is not representable: {exc}") from None


def error_message(code: str, text: str, id: str | None = None, job: str | None = None) -> Message:
    """An error reply: `params` carries the code and a human-readable message."""
    return Message(type="error", id=id, job=job, params={"code": code, "message": text})
