"""What each job takes over the wire, checked before any work is queued.

Part of the protocol (see protocol.py): numpy and the stdlib only, so the Blender add-on can vendor it
and check a request before sending it. Shapes use symbolic dimensions (F frames, H, W source size)
that must agree across the arrays of one request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .protocol import INVALID_INPUT, TOO_LARGE, Limits, Message, ProtocolError

IMAGE = ("uint8",)
FLOAT = ("float32", "float64")


@dataclass(frozen=True)
class ArraySpec:
    """One input array: allowed dtypes, a shape of symbolic (str) or fixed (int) dims."""

    dtypes: tuple[str, ...]  # allowed numpy dtype names
    shape: tuple[str | int, ...]  # "F", "H", "W" bind across arrays; ints must match exactly
    required: bool = True  # absent optional arrays are simply not passed on
    finite: bool = False  # reject NaN/inf (cameras, depth)


@dataclass(frozen=True)
class ParamSpec:
    """One scalar parameter with its type, default and allowed range or choices."""

    kind: type  # int, float, bool or str
    default: Any  # used when the client leaves it out
    lo: float | None = None  # inclusive lower bound for numbers
    hi: float | None = None  # inclusive upper bound for numbers
    choices: tuple[str, ...] | None = None  # allowed strings


SAMPLING = {
    "steps": ParamSpec(int, 20, 1, 500),
    "seed": ParamSpec(int, 0, 0, 2**63 - 1),
    "sampler": ParamSpec(str, "heun", choices=("euler", "heun", "dpmpp_2m")),
}


@dataclass(frozen=True)
class JobSpec:
    """The arrays and parameters of one job type."""

    arrays: dict[str, ArraySpec]
    params: dict[str, ParamSpec] = field(default_factory=dict)


CAMERAS = {"K": ArraySpec(FLOAT, ("F", 3, 3), finite=True), "c2w": ArraySpec(FLOAT, ("F", 4, 4), finite=True)}
OPTIONAL_CAMERAS = {k: ArraySpec(v.dtypes, v.shape, required=False, finite=True) for k, v in CAMERAS.items()}

JOB_SPECS: dict[str, JobSpec] = {
    "nvs": JobSpec(
        arrays={"image": ArraySpec(IMAGE, ("H", "W", 3)),
                "depth": ArraySpec(FLOAT, ("H", "W"), required=False, finite=True), **CAMERAS},
        params={"width": ParamSpec(int, 0, 0, 8192), "height": ParamSpec(int, 0, 0, 8192),
                "depth_scale": ParamSpec(float, 1.0, 1e-6, 1e6), "samples": ParamSpec(int, 1, 1, 16),
                "mesh": ParamSpec(bool, False), **SAMPLING}),
    "interpolate": JobSpec(
        arrays={"first": ArraySpec(IMAGE, ("H", "W", 3)), "last": ArraySpec(IMAGE, ("H", "W", 3)),
                **OPTIONAL_CAMERAS},
        params={"frames": ParamSpec(int, 16, 2, 512), **SAMPLING}),
    "cameras": JobSpec(
        arrays={"video": ArraySpec(IMAGE, ("F", "H", "W", 3))},
        params={"points": ParamSpec(bool, True), **SAMPLING}),
    "depth": JobSpec(arrays={"images": ArraySpec(IMAGE, ("F", "H", "W", 3))}, params=dict(SAMPLING)),
    "edit": JobSpec(
        arrays={"video": ArraySpec(IMAGE, ("F", "H", "W", 3)), "edited": ArraySpec(IMAGE, ("H", "W", 3)),
                "mask": ArraySpec(("uint8", "bool"), ("H", "W"), required=False)},
        params={"dilate": ParamSpec(int, 8, 0, 256), "threshold": ParamSpec(int, 12, 0, 255), **SAMPLING}),
    "mesh": JobSpec(
        arrays={"images": ArraySpec(IMAGE, ("F", "H", "W", 3)),
                "depth": ArraySpec(FLOAT, ("F", "H", "W"), finite=True), **CAMERAS},
        params={"voxel": ParamSpec(float, 0.0, 0.0, 1e6)}),
}


def validate_job(msg: Message, limits: Limits | None = None) -> tuple[str, dict[str, np.ndarray], dict]:
    """Check a submit message against its job's spec. Returns (job type, arrays, params with defaults).

    Raises ProtocolError(INVALID_INPUT | TOO_LARGE) naming the array or parameter at fault.
    """
    limits = limits or Limits()
    params = dict(msg.params)
    job_type = params.pop("job_type", None)
    if job_type not in JOB_SPECS:
        raise ProtocolError(INVALID_INPUT, f"params.job_type must be one of {sorted(JOB_SPECS)}, "
                            f"got {job_type!r}")
    spec = JOB_SPECS[job_type]
    arrays = _check_arrays(job_type, spec, msg.arrays, limits)
    params = _check_params(job_type, spec, params)
    _check_outputs(job_type, arrays, params, limits)
    return job_type, arrays, params


MAX_ASPECT = 32  # longest side / shortest side of any frame, in or out


def _check_outputs(job: str, arrays: dict[str, np.ndarray], params: dict, limits: Limits) -> None:
    """Bound what a job will produce (before it is queued), not only what it receives."""
    frames, (h, w) = _output_shape(job, arrays, params)
    if job == "interpolate" and "K" in arrays and params["frames"] != len(arrays["K"]):
        raise ProtocolError(INVALID_INPUT, f"interpolate.frames={params['frames']} but {len(arrays['K'])} "
                            "cameras were given")
    if h * w > limits.max_pixels:
        raise ProtocolError(TOO_LARGE, f"{job}: output frame {w}x{h} over {limits.max_pixels} pixels")
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise ProtocolError(INVALID_INPUT, f"{job}: frame {w}x{h} has an aspect ratio over {MAX_ASPECT}:1")
    if frames * h * w > limits.max_output_pixels:
        raise ProtocolError(TOO_LARGE, f"{job}: {frames} frames of {w}x{h} exceed the output budget of "
                            f"{limits.max_output_pixels} pixels")


def _output_shape(job: str, arrays: dict[str, np.ndarray], params: dict) -> tuple[int, tuple[int, int]]:
    if job == "nvs":
        H, W = arrays["image"].shape[:2]
        return len(arrays["K"]), (params["height"] or H, params["width"] or W)
    if job == "interpolate":
        return params["frames"], arrays["first"].shape[:2]
    key = "video" if "video" in arrays else "images"
    return arrays[key].shape[0], arrays[key].shape[1:3]


def _check_arrays(job: str, spec: JobSpec, given: dict[str, np.ndarray], limits: Limits) -> dict:
    unknown = sorted(set(given) - set(spec.arrays))
    if unknown:
        raise ProtocolError(INVALID_INPUT, f"{job}: unknown arrays {unknown}; expected {sorted(spec.arrays)}")
    dims: dict[str, int] = {}
    out = {}
    for name, aspec in spec.arrays.items():
        if name not in given:
            if aspec.required:
                raise ProtocolError(INVALID_INPUT, f"{job}: missing array {name!r}")
            continue
        out[name] = _check_array(f"{job}.{name}", aspec, given[name], dims)
    if dims.get("F", 1) > limits.max_frames or dims.get("F", 1) < 1:
        raise ProtocolError(TOO_LARGE, f"{job}: {dims.get('F')} frames; allowed 1..{limits.max_frames}")
    if dims.get("H", 1) * dims.get("W", 1) > limits.max_pixels or min(dims.get("H", 1), dims.get("W", 1)) < 1:
        raise ProtocolError(TOO_LARGE, f"{job}: frame {dims.get('W')}x{dims.get('H')} outside 1.."
                            f"{limits.max_pixels} pixels")
    return out


def _check_array(label: str, spec: ArraySpec, array: np.ndarray, dims: dict[str, int]) -> np.ndarray:
    if array.dtype.name not in spec.dtypes:
        raise ProtocolError(INVALID_INPUT, f"{label}: dtype {array.dtype.name}, expected one of {spec.dtypes}")
    if array.ndim != len(spec.shape):
        raise ProtocolError(INVALID_INPUT, f"{label}: shape {list(array.shape)}, expected {list(spec.shape)}")
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise ProtocolError(INVALID_INPUT, f"{label}: axis {axis} is {got}, expected {want}")
        if isinstance(want, str) and dims.setdefault(want, got) != got:
            raise ProtocolError(INVALID_INPUT, f"{label}: {want}={got} disagrees with {want}={dims[want]} "
                                "of an earlier array")
    if spec.finite and not np.isfinite(array).all():
        raise ProtocolError(INVALID_INPUT, f"{label}: contains NaN or infinite values")
    return array


def _check_params(job: str, spec: JobSpec, given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(spec.params))
    if unknown:
        raise ProtocolError(INVALID_INPUT, f"{job}: unknown parameters {unknown}; known {sorted(spec.params)}")
    out = {}
    for name, pspec in spec.params.items():
        value = given.get(name, pspec.default)
        out[name] = _check_param(f"{job}.{name}", pspec, value)
    return out


def _check_param(label: str, spec: ParamSpec, value: Any) -> Any:
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not spec.kind:
        raise ProtocolError(INVALID_INPUT, f"{label}: expected {spec.kind.__name__}, got {type(value).__name__}")
    if spec.choices is not None and value not in spec.choices:
        raise ProtocolError(INVALID_INPUT, f"{label}: {value!r} not one of {spec.choices}")
    if spec.lo is not None and not value >= spec.lo:
        raise ProtocolError(INVALID_INPUT, f"{label}: {value} below minimum {spec.lo}")
    if spec.hi is not None and not value <= spec.hi:
        raise ProtocolError(INVALID_INPUT, f"{label}: {value} above maximum {spec.hi}")
    return value
