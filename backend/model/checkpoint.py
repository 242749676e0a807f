"""Checkpoint I/O in safetensors only (never pickle): our own format and Wan2.1 DiT weights.

Our format: one .safetensors file holding the DiT state dict; its string metadata carries
`format = parallax-dit`, `format_version`, the `config` as JSON and `extra` (JSON of the caller's
metadata, e.g. step, EMA flag). Files are written to a temporary name in the same folder and renamed,
so a crash never leaves a half-written checkpoint under the real name.

Wan2.1 weights (`load_wan_weights`): the original release's DiT names fill the RGB stream of the
`wan-1.3b` preset; the depth and ray streams (patch embedding, q/k/v/o, qk-norm, FFN, head) start as
copies of the RGB ones, as the published 4D system initialises its new streams.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from backend.model.config import _DTYPES, DiTConfig
from backend.model.dit import DiT

FORMAT = "parallax-dit"
FORMAT_VERSION = 1
# suffixes of pickle-based files; loading them could run arbitrary code, so they are refused outright
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
_STREAM_SUFFIX = re.compile(r"_(depth|rays)$")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: DiTConfig, extra_meta: dict | None = None,
                    storage_dtype: str | None = None) -> Path:
    """Write model's state dict and config to `path` (.safetensors) atomically; returns the path.

    storage_dtype ("bfloat16", "float16", "float32" or None = as the model holds them) casts the
    floating tensors in the file only, e.g. to ship a checkpoint at half the size; it is recorded in
    the metadata and load_checkpoint casts back to the config's `param_dtype`.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_checkpoint: path must end in .safetensors, got {path.name!r}")
    if storage_dtype is not None and storage_dtype not in _DTYPES:
        raise ValueError(f"save_checkpoint: storage_dtype must be one of {sorted(_DTYPES)}, got {storage_dtype!r}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if storage_dtype is not None:
        store = _DTYPES[storage_dtype]
        state = {k: v.to(store) if v.is_floating_point() else v for k, v in state.items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": cfg.to_json(),
        "extra": json.dumps(extra_meta or {}, sort_keys=True),
    }
    if storage_dtype is not None:
        meta["storage_dtype"] = storage_dtype
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(state, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DiT, DiTConfig, dict]:
    """Read a checkpoint written by save_checkpoint -> (model on `device`, config, metadata).

    metadata = {"format_version": int, "extra": dict}.
    """
    path = _refuse_pickle(Path(path))
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        raw = f.metadata() or {}
        if raw.get("format") != FORMAT:
            raise ValueError(
                f"load_checkpoint: {path.name} is not a {FORMAT} checkpoint (format={raw.get('format')!r})"
            )
        version = int(raw.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise ValueError(f"load_checkpoint: format_version {version} is newer than supported {FORMAT_VERSION}")
        cfg = DiTConfig.from_dict(json.loads(raw["config"]))
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    stored = raw.get("storage_dtype")
    if stored is not None:  # stored in a smaller dtype than the model's: cast back, then check strictly
        if stored not in _DTYPES or any(v.is_floating_point() and v.dtype != _DTYPES[stored] for v in state.values()):
            raise ValueError(f"load_checkpoint: {path.name} storage_dtype {stored!r} does not match its tensors")
        state = {k: v.to(cfg.torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        model = DiT(cfg)  # no memory until the loaded tensors are assigned
    load_state_dict_strict(model, state)
    return model, cfg, {"format_version": version, "extra": json.loads(raw.get("extra", "{}"))}


def load_state_dict_strict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load `state` into `model` after checking names, shapes and dtypes; ValueError lists every problem."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = []
    for k in sorted(expected.keys() & state.keys()):
        want, got = expected[k], state[k]
        if tuple(want.shape) != tuple(got.shape):
            mismatched.append(f"{k}: shape {tuple(got.shape)} != model {tuple(want.shape)}")
        if want.dtype != got.dtype:
            mismatched.append(f"{k}: dtype {got.dtype} != model {want.dtype}")
    problems = _list_problems(missing=missing, unexpected=unexpected, mismatched=mismatched)
    if problems:
        raise ValueError("state dict does not match the model:\n" + problems)
    model.load_state_dict(state, strict=True, assign=_on_meta(model))


@dataclass
class WanLoadReport:
    loaded: list[str] = field(default_factory=list)  # Wan names loaded as they are
    copied: dict[str, str] = field(default_factory=dict)  # stream parameter -> RGB parameter it copies
    initialised: list[str] = field(default_factory=list)  # parameters Wan has no counterpart for
    cast: list[str] = field(default_factory=list)  # Wan tensors converted to the model's dtype
    ignored: list[str] = field(default_factory=list)  # Wan tensors the model has no place for

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} Wan tensors, copied {len(self.copied)} into depth/ray streams, "
                f"kept {len(self.initialised)} initialised, cast {len(self.cast)}, ignored {len(self.ignored)}")


def stream_source(name: str) -> str | None:
    """The RGB parameter a depth/ray-stream parameter is copied from (`q_depth` -> `q`), else None."""
    parts = name.split(".")
    stripped = [_STREAM_SUFFIX.sub("", p) for p in parts]
    return None if stripped == parts else ".".join(stripped)


def is_wan_key(name: str) -> bool:
    """True for parameters with a Wan2.1 counterpart (everything but the streams and modality embedding)."""
    return stream_source(name) is None and not name.startswith("modality_embedding")


def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of a .safetensors file, or of every *.safetensors shard in a folder (on CPU)."""
    path = _refuse_pickle(Path(path))
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"no .safetensors files in {path}")
    state: dict[str, Tensor] = {}
    for file in files:
        _refuse_pickle(file)
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for k in f.keys():  # noqa: SIM118 (safe_open has no iterator)
                if k in state:
                    raise ValueError(f"tensor {k!r} appears in more than one shard ({file.name})")
                state[k] = f.get_tensor(k)
    return state


def load_wan_weights(model: DiT, path_or_state: str | os.PathLike | dict[str, Tensor],
                     strict: bool = True) -> WanLoadReport:
    """Initialise a DiT (the wan-1.3b preset or a reduced one named alike) from a Wan2.1 DiT state dict.

    Shapes must match exactly and every Wan name must be present; with `strict`, tensors the model has
    no place for are an error too (otherwise listed in `report.ignored`). Stream parameters copy their
    RGB source; parameters without one keep their initialisation (zeros on a meta-device model).
    """
    state = path_or_state if isinstance(path_or_state, dict) else read_safetensors(path_or_state)
    target = model.state_dict()
    wan_keys = [k for k in target if is_wan_key(k)]
    missing = sorted(set(wan_keys) - state.keys())
    unexpected = sorted(state.keys() - set(wan_keys))
    mismatched = [f"{k}: shape {tuple(state[k].shape)} != model {tuple(target[k].shape)}"
                  for k in wan_keys if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    problems = _list_problems(missing=missing, mismatched=mismatched, unexpected=unexpected if strict else [])
    if problems:
        raise ValueError("Wan state dict does not fit the model:\n" + problems)
    report = WanLoadReport(ignored=unexpected)
    new: dict[str, Tensor] = {}
    for k in wan_keys:
        t = state[k]
        if not torch.is_floating_point(t):
            raise ValueError(f"Wan tensor {k!r} has non-float dtype {t.dtype}")
        if t.dtype != target[k].dtype:
            report.cast.append(k)
        new[k] = t.to(target[k].dtype)
        report.loaded.append(k)
    for k in target:
        if k in new:
            continue
        src = stream_source(k)
        if src is not None and src in new and new[src].shape == target[k].shape:
            new[k] = new[src].clone()  # own storage: the streams train apart from here on
            report.copied[k] = src
        else:
            cur = target[k]
            new[k] = torch.zeros(cur.shape, dtype=cur.dtype) if cur.is_meta else cur.clone()
            report.initialised.append(k)
    model.load_state_dict(new, strict=True, assign=_on_meta(model))
    return report


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in model.state_dict().values())


def _refuse_pickle(path: Path) -> Path:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path.name}: pickle-based checkpoints ({', '.join(PICKLE_SUFFIXES)}) are refused because loading "
            "them can run arbitrary code; convert to .safetensors first"
        )
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    return path


def _list_problems(**groups: list[str]) -> str:
    lines = []
    for name, items in groups.items():
        if items:
            lines.append(f"  {name} ({len(items)}): " + ", ".join(items))
    return "\n".join(lines)
