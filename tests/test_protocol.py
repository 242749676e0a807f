"""Wire protocol: frames round trip without copies; every malformed input is a coded ProtocolError."""

import json

import numpy as np
import pytest

from backend.server import protocol as P
from backend.server.specs import JOB_SPECS, validate_job


def _frames(msg: P.Message) -> list[bytes]:
    return [bytes(f) for f in P.encode(msg)]


def test_round_trip_arrays_and_params():
    arrays = {"image": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
              "K": np.eye(3)[None].repeat(4, 0), "empty": np.zeros((0, 3), np.float32)}
    msg = P.Message(type="submit", id="m1", job=None, params={"job_type": "depth", "steps": 3}, arrays=arrays)
    back = P.decode(_frames(msg))
    assert (back.type, back.id, back.params) == ("submit", "m1", {"job_type": "depth", "steps": 3})
    for name, array in arrays.items():
        assert back.arrays[name].dtype == array.dtype and np.array_equal(back.arrays[name], array)


def test_encode_does_not_copy_contiguous_arrays():
    a = np.ones((64, 64), np.float32)
    frames = P.encode(P.Message(type="result", arrays={"a": a}))
    assert isinstance(frames[1], memoryview) and np.shares_memory(np.frombuffer(frames[1], np.float32), a)


def _header(**overrides) -> bytes:
    header = {"v": 1, "type": "status", "id": None, "job": None, "arrays": [], "params": {}}
    header.update(overrides)
    return json.dumps(header).encode()


@pytest.mark.parametrize(("frames", "code"), [
    ([], P.BAD_MESSAGE),
    ([b"\xff\xfe"], P.BAD_MESSAGE),
    ([b"[1, 2]"], P.BAD_MESSAGE),
    ([b'{"v": 1, "type": "status", "params": {"x": NaN}}'], P.BAD_MESSAGE),
    ([_header(v=2)], P.BAD_VERSION),
    ([_header(type="explode")], P.BAD_MESSAGE),
    ([_header(id=5)], P.BAD_MESSAGE),
    ([_header(params=[1])], P.BAD_MESSAGE),
    ([_header(arrays=[{"name": "a", "dtype": "uint8", "shape": [2]}])], P.BAD_MESSAGE),
    ([_header(arrays=[{"name": "a", "dtype": "object", "shape": [1]}]), b"x"], P.INVALID_INPUT),
    ([_header(arrays=[{"name": "a", "dtype": "uint8", "shape": [-1]}]), b"x"], P.INVALID_INPUT),
    ([_header(arrays=[{"name": "a", "dtype": "uint8", "shape": [True]}]), b"x"], P.INVALID_INPUT),
    ([_header(arrays=[{"name": "a", "dtype": "float32", "shape": [3]}]), b"abc"], P.INVALID_INPUT),
    ([_header(arrays=[{"name": "a", "dtype": "uint8", "shape": [1]}] * 2), b"x", b"y"], P.BAD_MESSAGE),
    ([b" " * (P.MAX_HEADER_BYTES + 1)], P.TOO_LARGE),
])
def test_malformed_frames_get_codes(frames, code):
    with pytest.raises(P.ProtocolError) as err:
        P.decode(frames)
    assert err.value.code == code


def test_message_size_limit():
    msg = P.Message(type="submit", arrays={"a": np.zeros(1000, np.uint8)})
    with pytest.raises(P.ProtocolError) as err:
        P.decode(_frames(msg), P.Limits(max_message_bytes=999))
    assert err.value.code == P.TOO_LARGE


def _nvs(**arrays_over) -> P.Message:
    F = 3
    arrays = {"image": np.zeros((8, 10, 3), np.uint8), "K": np.eye(3)[None].repeat(F, 0),
              "c2w": np.eye(4)[None].repeat(F, 0)}
    arrays.update(arrays_over)
    return P.Message(type="submit", params={"job_type": "nvs", "steps": 4}, arrays=arrays)


def test_validate_fills_defaults():
    job, arrays, params = validate_job(_nvs())
    assert job == "nvs" and set(arrays) == {"image", "K", "c2w"}
    assert params["steps"] == 4 and params["depth_scale"] == JOB_SPECS["nvs"].params["depth_scale"].default


@pytest.mark.parametrize(("change", "needle"), [
    ({"K": np.full((3, 3, 3), np.nan)}, "nvs.K: contains NaN"),
    ({"c2w": np.eye(4)[None].repeat(2, 0)}, "nvs.c2w: F=2 disagrees"),
    ({"image": np.zeros((8, 10, 4), np.uint8)}, "nvs.image: axis 2 is 4"),
    ({"image": np.zeros((8, 10, 3), np.float32)}, "nvs.image: dtype float32"),
    ({"depth": np.zeros((9, 10), np.float32)}, "nvs.depth: H=9 disagrees"),
    ({"bogus": np.zeros(1)}, "unknown arrays ['bogus']"),
])
def test_validate_rejects_bad_arrays(change, needle):
    with pytest.raises(P.ProtocolError) as err:
        validate_job(_nvs(**change))
    assert err.value.code == P.INVALID_INPUT and needle in str(err.value)


@pytest.mark.parametrize(("params", "needle"), [
    ({"job_type": "fly"}, "job_type must be one of"),
    ({"job_type": "nvs", "steps": 0}, "nvs.steps: 0 below minimum"),
    ({"job_type": "nvs", "steps": 2.5}, "nvs.steps: expected int"),
    ({"job_type": "nvs", "mesh": 1}, "nvs.mesh: expected bool"),
    ({"job_type": "nvs", "sampler": "magic"}, "nvs.sampler: 'magic' not one of"),
    ({"job_type": "nvs", "colour": 1}, "unknown parameters ['colour']"),
])
def test_validate_rejects_bad_params(params, needle):
    msg = _nvs()
    msg.params = params
    with pytest.raises(P.ProtocolError) as err:
        validate_job(msg)
    assert needle in str(err.value)


def test_validate_frame_and_pixel_limits():
    msg = P.Message(type="submit", params={"job_type": "depth"},
                    arrays={"images": np.zeros((5, 4, 4, 3), np.uint8)})
    with pytest.raises(P.ProtocolError) as err:
        validate_job(msg, P.Limits(max_frames=4))
    assert err.value.code == P.TOO_LARGE
    with pytest.raises(P.ProtocolError):
        validate_job(msg, P.Limits(max_pixels=15))


def test_errors_after_the_header_carry_the_request_id():
    header = json.dumps({"v": 1, "type": "submit", "id": "req-7", "arrays": [
        {"name": "a", "dtype": "float32", "shape": [3]}]}).encode()
    with pytest.raises(P.ProtocolError) as err:
        P.decode([header, b"abc"])
    assert err.value.code == P.INVALID_INPUT and err.value.id == "req-7"


@pytest.mark.parametrize("version", [True, 1.0, "1"])
def test_version_must_be_the_integer(version):
    with pytest.raises(P.ProtocolError) as err:
        P.decode([_header(v=version)])
    assert err.value.code == P.BAD_VERSION


def test_encode_refuses_non_finite_params():
    with pytest.raises(P.ProtocolError) as err:
        P.encode(P.Message(type="result", params={"x": float("nan")}))
    assert err.value.code == P.INVALID_INPUT
