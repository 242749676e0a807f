"""Robustness: 1,200 malformed messages from a raw DEALER socket against a real `parallax serve`.

Each message is built from a seeded generator with exactly one thing wrong, so the error code it must
get is known by construction (the oracle is the case, not the server's validator): random bytes, bad
JSON, wrong versions, unknown or server-only types, bad descriptors, wrong dtypes, shape/buffer
mismatches, absurd shapes, NaN/inf cameras, oversized headers and messages, unknown jobs, unknown or
mistyped parameters. Every one must get an error reply with that code; a `hello` after every 100
proves the server keeps serving, and its resident memory must not grow past a bound.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq
from test_server_e2e import ServerProcess

from backend.server import protocol as P
from backend.server.specs import validate_job

MAX_FRAMES, MAX_PIXELS, MAX_MESSAGE_MB = 64, 256 * 256, 1  # small server limits: cheap to exceed
LIMITS = P.Limits(max_message_bytes=MAX_MESSAGE_MB << 20, max_frames=MAX_FRAMES, max_pixels=MAX_PIXELS)
MESSAGES = 1200
RSS_GROWTH_MB = 50

Case = tuple[list[bytes], str, str | None]  # (frames, expected code, id the reply must carry or None)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    extra = ["--max-frames", str(MAX_FRAMES), "--max-pixels", str(MAX_PIXELS), "--max-message-mb", str(MAX_MESSAGE_MB)]
    with ServerProcess(tmp_path_factory.mktemp("fuzz") / "jobs", *extra) as srv:
        yield srv


@pytest.fixture
def dealer(server):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    yield sock
    sock.close(0)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def header(type: str = "submit", **fields) -> dict:
    h = {"v": 1, "type": type, "id": uuid.uuid4().hex, "job": None, "arrays": [], "params": {}}
    h.update(fields)
    return h


def message(h: dict, arrays: dict[str, np.ndarray], **json_kw) -> list[bytes]:
    """Frames of a submit whose descriptors are taken from `arrays` (already set ones are kept)."""
    if not h["arrays"]:
        h["arrays"] = [{"name": n, "dtype": a.dtype.name, "shape": list(a.shape)} for n, a in arrays.items()]
    return [json.dumps(h, **json_kw).encode(), *(a.tobytes() for a in arrays.values())]


def valid_depth(rng: np.random.Generator) -> tuple[dict, dict[str, np.ndarray]]:
    F, H, W = (int(n) for n in rng.integers(1, 12, 3))
    return header(params={"job_type": "depth", "steps": 2}), {"images": rng.integers(0, 256, (F, H, W, 3), np.uint8)}


def valid_nvs(rng: np.random.Generator) -> tuple[dict, dict[str, np.ndarray]]:
    F, H, W = (int(n) for n in rng.integers(1, 12, 3))
    K = np.tile(np.array([[W, 0, W / 2], [0, W, H / 2], [0, 0, 1]], np.float64), (F, 1, 1))
    arrays = {"image": rng.integers(0, 256, (H, W, 3), np.uint8), "K": K, "c2w": np.tile(np.eye(4), (F, 1, 1))}
    return header(params={"job_type": "nvs", "steps": 2, "sampler": "euler"}), arrays


def valid_submit(rng: np.random.Generator) -> tuple[dict, dict[str, np.ndarray]]:
    """A request that passes validation (checked below); each case breaks exactly one thing of it."""
    return valid_depth(rng) if rng.random() < 0.5 else valid_nvs(rng)


# ---------------------------------------------------------------------------------------------------
# cases: each returns (frames, expected code, expected reply id)


def random_bytes(rng) -> Case:
    n = int(rng.choice([0, 1, 7, 100, 5000]))
    frames = [rng.integers(0, 256, n, np.uint8).tobytes()]
    frames += [rng.integers(0, 256, int(rng.integers(0, 64)), np.uint8).tobytes() for _ in range(rng.integers(0, 3))]
    return frames, P.BAD_MESSAGE, None


def bad_json(rng) -> Case:
    text = json.dumps(header("status")).encode()
    bad = [text[: int(rng.integers(0, len(text)))], text.replace(b'"v"', b"v", 1), text + b"}",
           b'{"v": 1, "type": "status", "params": {"x": NaN}}', b'{"v": 1, "type": "status", "id": Infinity}',
           b"[" * 20_000 + b"]" * 20_000, b"{'v': 1}", b'{"v": 1, "type": "\xed\xa0\x80"}',
           text.replace(b"status", b"st\xffus")]
    return [bad[int(rng.integers(len(bad)))]], P.BAD_MESSAGE, None


def not_an_object(rng) -> Case:
    value = [[1, 2], 3, "hello", None, True, 2.5][int(rng.integers(6))]
    return [json.dumps(value).encode()], P.BAD_MESSAGE, None


def wrong_version(rng) -> Case:
    h = header("hello", v=[0, 2, 99, -1, "1", None, 1.5, [1], {"v": 1}][int(rng.integers(9))])
    if rng.random() < 0.2:
        del h["v"]
    return [json.dumps(h).encode()], P.BAD_VERSION, None


def bad_type(rng) -> Case:
    h = header([None, 5, "explode", "HELLO", "", ["hello"]][int(rng.integers(6))])
    return [json.dumps(h).encode()], P.BAD_MESSAGE, None


def server_only_type(rng) -> Case:
    h = header(["progress", "result", "error"][int(rng.integers(3))])
    return [json.dumps(h).encode()], P.BAD_MESSAGE, h["id"]


def bad_header_fields(rng) -> Case:
    which = int(rng.integers(5))
    h = header("status")
    if which == 0:
        h["id"] = [5, 1.5, ["x"], {"a": 1}, True][int(rng.integers(5))]
    elif which == 1:
        h["job"] = [7, ["x"], {}][int(rng.integers(3))]
    elif which == 2:
        h["params"] = [[1], "x", 3][int(rng.integers(3))]
    elif which == 3:
        h["arrays"] = [{"name": "a"}, "a", 5][int(rng.integers(3))]
    else:
        h["arrays"] = [{"name": f"a{i}", "dtype": "uint8", "shape": [1]} for i in range(P.MAX_ARRAYS + 1)]
        return [json.dumps(h).encode(), *[b"x"] * (P.MAX_ARRAYS + 1)], P.BAD_MESSAGE, None
    return [json.dumps(h).encode()], P.BAD_MESSAGE, None


def descriptor_mismatch(rng) -> Case:
    h, arrays = valid_submit(rng)
    frames = message(h, arrays)
    which = int(rng.integers(4))
    if which == 0:  # a buffer missing
        return frames[:-1], P.BAD_MESSAGE, None
    if which == 1:  # an extra buffer
        return [*frames, b"extra"], P.BAD_MESSAGE, None
    if which == 2:  # descriptor without a name
        h["arrays"][0]["name"] = [None, 3, ["x"]][int(rng.integers(3))]
    else:  # the same name twice
        h["arrays"][-1]["name"] = h["arrays"][0]["name"]
        if len(h["arrays"]) == 1:
            h["arrays"].append(dict(h["arrays"][0]))
            frames.append(frames[1])
    return [json.dumps(h).encode(), *frames[1:]], P.BAD_MESSAGE, None


def bad_dtype(rng) -> Case:
    h, arrays = valid_submit(rng)
    frames = message(h, arrays)
    h["arrays"][0]["dtype"] = ["object", "float128", "complex64", "<f4", "U8", 3, None, "int8"][int(rng.integers(8))]
    return [json.dumps(h).encode(), *frames[1:]], P.INVALID_INPUT, None


def wrong_dtype_for_job(rng) -> Case:
    h, arrays = valid_submit(rng)
    name = next(iter(arrays))  # images / image must be uint8; give it a float or a wider int
    arrays[name] = arrays[name].astype([np.float32, np.uint16, np.int64, np.bool_][int(rng.integers(4))])
    return message(h, arrays), P.INVALID_INPUT, h["id"]


def shape_buffer_mismatch(rng) -> Case:
    h, arrays = valid_submit(rng)
    frames = message(h, arrays)
    i = int(rng.integers(1, len(frames)))
    cut = int(rng.integers(1, 9))
    frames[i] = frames[i][:-cut] if rng.random() < 0.5 and len(frames[i]) >= cut else frames[i] + b"\0" * cut
    return frames, P.INVALID_INPUT, None


def absurd_shape(rng) -> Case:
    h, arrays = valid_submit(rng)
    frames = message(h, arrays)
    shape = [[2**40, 2**40], [10**30], [2**63, 2**63, 2**63], [-1, 3], [1.5, 2], [True], "abc", None,
             [1, 1, 1, 1, 1, 1], [0, 2**62], [2**64]][int(rng.integers(11))]
    h["arrays"][int(rng.integers(len(h["arrays"])))]["shape"] = shape
    return [json.dumps(h).encode(), *frames[1:]], P.INVALID_INPUT, None


def non_finite_cameras(rng) -> Case:
    h, arrays = valid_nvs(rng)
    name = ["K", "c2w"][int(rng.integers(2))]
    bad = arrays[name].copy()
    bad.reshape(-1)[int(rng.integers(bad.size))] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
    arrays[name] = bad
    return message(h, arrays), P.INVALID_INPUT, h["id"]


def inconsistent_arrays(rng) -> Case:
    h, arrays = valid_submit(rng)
    which = int(rng.integers(3))
    if which == 0:  # an array the job does not take
        arrays["bogus"] = np.zeros(3, np.float32)
    elif which == 1:  # a required array missing
        arrays.pop(next(iter(arrays)))
    else:  # symbolic dims disagree (F of K vs c2w, or a wrong fixed axis)
        arrays = {"image": np.zeros((4, 4, 3), np.uint8), "K": np.tile(np.eye(3), (2, 1, 1)),
                  "c2w": np.tile(np.eye(4), (3, 1, 1))}
        h["params"]["job_type"] = "nvs"
        if rng.random() < 0.5:
            arrays["image"] = np.zeros((4, 4, 4), np.uint8)
    return message(h, arrays), P.INVALID_INPUT, h["id"]


def bad_params(rng) -> Case:
    h, arrays = valid_submit(rng)
    job = h["params"]["job_type"]
    mutations: list[tuple[str, object]] = [
        ("bogus", 1), ("Steps", 2), ("steps", "2"), ("steps", 2.5), ("steps", True), ("steps", None),
        ("steps", 0), ("steps", 501), ("steps", -3), ("steps", 10**30), ("seed", -1), ("seed", 2**63),
        ("sampler", "multistep"), ("sampler", 3), ("sampler", ["heun"]), ("job_type", "explode"),
        ("job_type", None), ("job_type", 3),
    ]
    if job == "nvs":
        mutations += [("mesh", 1), ("mesh", "yes"), ("depth_scale", 0.0), ("depth_scale", "1"), ("width", -1),
                      ("width", 9000), ("samples", 17), ("height", 1.0), ("frames", 4)]
    key, value = mutations[int(rng.integers(len(mutations)))]
    h["params"][key] = value
    if key == "job_type" and rng.random() < 0.3:
        del h["params"]["job_type"]
    return message(h, arrays), P.INVALID_INPUT, h["id"]


def too_large(rng) -> Case:
    which = int(rng.integers(4))
    if which == 0:  # oversized header
        h = header("hello", params={"pad": "x" * (P.MAX_HEADER_BYTES + int(rng.integers(1, 1000)))})
        return [json.dumps(h).encode()], P.TOO_LARGE, None
    if which == 1:  # more frames than the server allows
        h = header(params={"job_type": "depth"})
        return message(h, {"images": np.zeros((MAX_FRAMES + 1, 1, 1, 3), np.uint8)}), P.TOO_LARGE, h["id"]
    if which == 2:  # more pixels per frame than allowed
        h = header(params={"job_type": "depth"})
        return message(h, {"images": np.zeros((1, 1, MAX_PIXELS + 1, 3), np.uint8)}), P.TOO_LARGE, h["id"]
    # more bytes in all buffers than the message limit (each frame alone under the socket's limit)
    half = (MAX_MESSAGE_MB << 20) // 2 + 1
    h = header(params={"job_type": "depth"}, arrays=[{"name": n, "dtype": "uint8", "shape": [half]} for n in "ab"])
    return [json.dumps(h).encode(), b"\0" * half, b"\0" * half], P.TOO_LARGE, None


def zero_frames(rng) -> Case:
    h = header(params={"job_type": "depth"})
    return message(h, {"images": np.zeros((0, 4, 4, 3), np.uint8)}), P.TOO_LARGE, h["id"]


def unknown_job(rng) -> Case:
    job = [uuid.uuid4().hex, None, "", "../../etc/passwd", "0" * 32, "g" * 32, "x" * 5000, uuid.uuid4().hex.upper()]
    h = header(["status", "cancel", "fetch"][int(rng.integers(3))], job=job[int(rng.integers(len(job)))])
    if h["type"] == "status" and h["job"] in (None, ""):
        h["job"] = uuid.uuid4().hex  # status without a job is the server's own status, which is fine
    return [json.dumps(h).encode()], P.UNKNOWN_JOB, h["id"]


CASES: list[tuple[Callable[[np.random.Generator], Case], int]] = [  # (case, relative weight)
    (random_bytes, 10), (bad_json, 8), (not_an_object, 3), (wrong_version, 6), (bad_type, 4),
    (server_only_type, 4), (bad_header_fields, 6), (descriptor_mismatch, 6), (bad_dtype, 6),
    (wrong_dtype_for_job, 6), (shape_buffer_mismatch, 8), (absurd_shape, 8), (non_finite_cameras, 8),
    (inconsistent_arrays, 6), (bad_params, 12), (too_large, 2), (zero_frames, 1), (unknown_job, 8),
]


def generate(rng: np.random.Generator, n: int) -> list[tuple[str, Case]]:
    weights = np.array([w for _, w in CASES], float)
    picks = rng.choice(len(CASES), size=n, p=weights / weights.sum())
    return [(CASES[i][0].__name__, CASES[i][0](rng)) for i in picks]


def exchange(sock: zmq.Socket, frames: list[bytes], timeout_ms: int = 10_000) -> P.Message:
    sock.send_multipart(frames)
    assert sock.poll(timeout_ms), "no reply: the server stopped answering"
    return P.decode(sock.recv_multipart())


def test_valid_base_requests_pass_validation():
    """The cases mutate requests that are valid, so their single mutation is what the server must reject."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, arrays = valid_submit(rng)
        validate_job(P.Message(type="submit", params=h["params"], arrays=arrays), LIMITS)


def test_every_case_kind_appears():
    names = {name for name, _ in generate(np.random.default_rng(0), MESSAGES)}
    assert names == {fn.__name__ for fn, _ in CASES}


def test_malformed_messages_get_coded_errors_and_memory_stays_bounded(server, dealer):
    cases = generate(np.random.default_rng(0), MESSAGES)
    assert exchange(dealer, [json.dumps(header("hello")).encode()]).type == "hello"
    before = rss_mb(server.pid)
    for i, (name, (frames, code, reply_id)) in enumerate(cases):
        reply = exchange(dealer, frames)
        assert reply.type == "error" and reply.params["code"] == code, (i, name, reply.params)
        assert isinstance(reply.params["message"], str) and reply.params["message"], (i, name)
        if reply_id is not None:  # parsed far enough to know the id: the reply must carry it
            assert reply.id == reply_id, (i, name)
        if i % 100 == 99:
            hello = exchange(dealer, [json.dumps(header("hello")).encode()])
            assert hello.type == "hello" and hello.params["server"] == "parallax", i
    growth = rss_mb(server.pid) - before
    assert growth < RSS_GROWTH_MB, f"server RSS grew {growth:.1f} MB over {MESSAGES} bad messages"
    with server.client() as client:  # nothing was queued by any of them, and a real client still works
        assert client.status()["queued"] == 0 and client.list_jobs() == []
    assert server.proc.poll() is None


def test_frame_over_the_socket_limit_drops_only_that_peer(server, dealer):
    """ZeroMQ's MAXMSGSIZE disconnects a peer sending one frame over the limit (no reply is possible);
    the server itself must go on serving, that peer included once it reconnects."""
    big = b"\0" * ((MAX_MESSAGE_MB << 20) + P.MAX_HEADER_BYTES + 1)
    h = header(params={"job_type": "depth"}, arrays=[{"name": "images", "dtype": "uint8", "shape": [len(big)]}])
    dealer.send_multipart([json.dumps(h).encode(), big])
    assert not dealer.poll(500)
    with server.client() as client:
        assert client.hello()["server"] == "parallax"
    for _ in range(20):  # the dropped DEALER reconnects on its own
        dealer.send_multipart([json.dumps(header("hello")).encode()])
        if dealer.poll(500):
            assert P.decode(dealer.recv_multipart()).type == "hello"
            break
    else:
        pytest.fail("the dropped peer could not talk to the server again")
