"""The model a backend serves: DiT + flow config + the window and resolution it was trained for.

`load_bundle()` with no checkpoint loads the embedded default (`backend/assets/parallax-tiny.safetensors`);
until that file exists it builds a randomly initialised `tiny` model with a fixed seed and says so in
`info()` — the jobs run end to end, their outputs are just not meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from backend.diffusion.flow import FlowConfig
from backend.model.checkpoint import load_checkpoint
from backend.model.config import DiTConfig, preset
from backend.model.dit import DiT

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "parallax-tiny.safetensors"


@dataclass
class ModelBundle:
    """Everything a pipeline needs to run the model."""

    model: DiT  # in eval mode, on `device`
    cfg: DiTConfig  # its architecture
    flow: FlowConfig = field(default_factory=FlowConfig)  # prediction target and schedule shift
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where it runs
    name: str = "tiny"  # checkpoint file name or preset
    trained: bool = False  # False for a randomly initialised model
    window: int = 8  # frames per model window (clips longer than this run in overlapping windows)
    area: int = 64 * 64  # working-resolution pixel count the model was trained at
    meta: dict = field(default_factory=dict)  # the checkpoint's extra metadata

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bf16 autocast on CUDA; fp32 on the CPU (small models gain little there)."""
        return torch.bfloat16 if self.device.type == "cuda" else None

    def info(self) -> dict:
        """What `hello`/`status` report: model, device, memory."""
        memory = {}
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            memory = {"gpu_free_mb": free >> 20, "gpu_total_mb": total >> 20}
        params = sum(p.numel() for p in self.model.parameters())
        return {"model": self.name, "trained": self.trained, "device": str(self.device), "parameters": params,
                "window": self.window, "memory": memory}

    def describe(self) -> str:
        state = "trained" if self.trained else "UNTRAINED random weights"
        return f"model {self.name} ({state}) on {self.device}"


def flow_from_meta(data: dict | None) -> FlowConfig:
    """The FlowConfig a checkpoint was trained with (stored as a dict in its metadata)."""
    if not data:
        return FlowConfig()
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return FlowConfig(**fields)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def load_bundle(checkpoint: str | Path | None = None, device: str = "auto", preset_name: str = "tiny",
                seed: int = 0) -> ModelBundle:
    """Load `checkpoint` (default: the embedded model if present, else a seeded random `preset_name`)."""
    dev = resolve_device(device)
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if checkpoint is not None and not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.is_file():
        model, cfg, meta = load_checkpoint(path, device=dev)
        extra = meta["extra"]
        flow = flow_from_meta(extra.get("flow"))
        bundle = ModelBundle(model=model, cfg=cfg, flow=flow, device=dev, name=path.name, trained=True,
                             window=int(extra.get("window", 8)), area=int(extra.get("area", 64 * 64)), meta=extra)
    else:
        bundle = random_bundle(preset_name, dev, seed)
    bundle.model.eval().requires_grad_(False)
    return bundle


def random_bundle(preset_name: str = "tiny", device: torch.device | str = "cpu", seed: int = 0) -> ModelBundle:
    """An untrained model of `preset_name`, seeded (the stand-in until a checkpoint exists, and for tests)."""
    cfg = preset(preset_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DiT(cfg)
    model.eval().requires_grad_(False)
    return ModelBundle(model=model.to(device), cfg=cfg, device=torch.device(device), name=preset_name, trained=False)
