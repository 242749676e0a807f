"""The pipelines as server runners: `(arrays, params, progress) -> (result arrays, result params)`.

`parallax serve` loads one model bundle and builds one runner per job type from the table below. A
runner receives arrays and parameters already validated against `backend/server/specs.py` (every
parameter present, defaults filled in, names equal to the pipeline's keyword arguments), calls the
pipeline function, and returns its result's `arrays()` and `params()`. Each pipeline module is imported
inside its runner, so a module that fails to import breaks only its own job (the server reports it
as an `internal` error) and the others keep working.

This module must not import `backend.server` (imports point from the server to the pipelines, never
back); `RESULT_DTYPES` mirrors the protocol's array dtypes and a test keeps the two equal.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bundle import ModelBundle, load_bundle
from .engine import Progress

__all__ = ["JOBS", "RESULT_DTYPES", "JobAdapter", "Runner", "build_runners", "load_bundle", "make_runner"]

# (arrays, params, progress) -> (result arrays, result params): the shape backend.server.jobs expects.
Runner = Callable[[dict[str, np.ndarray], dict[str, Any], Progress], tuple[dict[str, np.ndarray], dict[str, Any]]]

# Array dtypes the wire protocol can carry (protocol.DTYPES); a result outside them is a backend bug.
RESULT_DTYPES = ("uint8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool")


@dataclass(frozen=True)
class JobAdapter:
    """How one job type maps onto its pipeline function."""

    module: str  # module under backend.pipelines
    function: str  # the pipeline function in it
    positional: tuple[str, ...]  # required input arrays, passed positionally in this order
    optional: tuple[str, ...] = ()  # optional input arrays, passed by keyword when present
    uses_bundle: bool = True  # False for model-free jobs (mesh fusion)


# One entry per job type of specs.JOB_SPECS; the signatures are the pipelines contract (issue 5).
JOBS: dict[str, JobAdapter] = {
    "nvs": JobAdapter("nvs", "novel_views", ("image", "K", "c2w"), ("depth",)),
    "interpolate": JobAdapter("interpolate", "interpolate", ("first", "last"), ("K", "c2w")),
    "cameras": JobAdapter("cameras", "recover_cameras", ("video",)),
    "depth": JobAdapter("depth", "estimate_depth", ("images",)),
    "edit": JobAdapter("edit", "propagate_edit", ("video", "edited"), ("mask",)),
    "mesh": JobAdapter("mesh", "fuse_mesh", ("images", "depth", "K", "c2w"), uses_bundle=False),
}


def make_runner(bundle: ModelBundle | None, adapter: JobAdapter) -> Runner:
    """A runner calling `adapter`'s pipeline with `bundle`; the module is imported on the first job."""

    def run(arrays: dict[str, np.ndarray], params: dict[str, Any],
            progress: Progress) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        fn = getattr(importlib.import_module(f"backend.pipelines.{adapter.module}"), adapter.function)
        args = [arrays[name] for name in adapter.positional]
        kwargs = {name: _input(name, arrays[name]) for name in adapter.optional if name in arrays}
        if adapter.uses_bundle:
            args.insert(0, bundle)
        result = fn(*args, **kwargs, **params, progress=progress)
        return _checked_result(adapter.module, result.arrays(), result.params())

    run.__name__ = f"run_{adapter.module}"
    return run


def build_runners(bundle: ModelBundle) -> dict[str, Runner]:
    """One runner per job type, all sharing `bundle` (the server's single worker runs one at a time)."""
    return {job: make_runner(bundle, adapter) for job, adapter in JOBS.items()}


def _input(name: str, array: np.ndarray) -> np.ndarray:
    # The wire allows an edit mask as uint8 (0/255 from an image) or bool; the pipeline takes bool.
    if name == "mask" and array.dtype != np.bool_:
        return array != 0
    return array


def _checked_result(job: str, arrays: dict[str, np.ndarray], params: dict[str, Any]
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Make sure a result can cross the wire before it is stored, so a pipeline bug fails its job
    (an `internal` error) instead of the server's event loop when the reply is encoded."""
    out = {}
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype.name not in RESULT_DTYPES:
            raise RuntimeError(f"{job} result {name!r} has dtype {array.dtype.name}, not one of {RESULT_DTYPES}")
        out[name] = array
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RuntimeError(f"{job} result params are not finite JSON: {exc}") from None
    return out, params
