"""DiT configuration and presets.

The model follows Wan2.1's diffusion transformer (Wan Team, "Wan: Open and Advanced Large-Scale Video
Generative Models", 2025): pre-norm blocks, qk-norm, 3D RoPE, per-token adaLN modulation. The
`wan-1.3b` preset reproduces the Wan2.1-T2V-1.3B DiT's parameter names and shapes for the RGB stream
so its published weights initialise ours (see checkpoint.load_wan_weights).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch

# dtype names accepted for `param_dtype` (kept as strings so the config serialises to JSON)
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def wan_rope_split(head_dim: int) -> tuple[int, int, int]:
    """Wan2.1's split of a head's dimensions over (frame, height, width): d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋.

    For d = 128 this is 44/42/42, the split of the released model.
    """
    k = head_dim // 6
    return (head_dim - 4 * k, 2 * k, 2 * k)


@dataclass(frozen=True)
class DiTConfig:
    dim: int = 256  # model width (residual stream size)
    depth: int = 6  # number of transformer blocks
    heads: int = 4  # attention heads; head_dim = dim // heads must be even (RoPE rotates pairs)
    mlp_dim: int = 1024  # hidden width of each block's feed-forward network
    freq_dim: int = 256  # size of the sinusoidal embedding of σ·1000 fed to `time_embedding`
    patch: tuple[int, int, int] = (1, 8, 8)  # (pt, ph, pw) spacetime patch of the tokenizer
    channels: tuple[int, int, int] = (3, 1, 6)  # input channels of rgb, depth, rays (tokenizer order)
    mot: bool = True  # mixture-of-transformers: per-modality q/k/v/o, qk-norm and FFN; shared attention
    text_dim: int | None = None  # width of text-encoder features for cross-attention; None = no text
    qk_norm: bool = True  # RMS-normalise queries and keys over the full width before RoPE (as Wan)
    cross_attn_norm: bool = True  # affine LayerNorm (`norm3`) before cross-attention (Wan T2V: True)
    eps: float = 1e-6  # epsilon of every LayerNorm / RMSNorm
    rope_split: tuple[int, int, int] | None = None  # head dims rotated by (f, h, w); None = Wan's rule
    rope_theta: float = 10000.0  # RoPE base wavelength
    param_dtype: str = "float32"  # storage dtype of the weights; residual stream and modulation stay fp32

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "heads", "mlp_dim", "freq_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"DiTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"DiTConfig.dim={self.dim} is not divisible by heads={self.heads}")
        if self.head_dim % 2:
            raise ValueError(f"DiTConfig head_dim={self.head_dim} (dim // heads) must be even for RoPE")
        if self.freq_dim % 2:
            raise ValueError(f"DiTConfig.freq_dim={self.freq_dim} must be even (cos and sin halves)")
        if len(self.patch) != 3 or min(self.patch) <= 0:
            raise ValueError(f"DiTConfig.patch must be three positive ints, got {self.patch}")
        if len(self.channels) != 3 or min(self.channels) <= 0:
            raise ValueError(f"DiTConfig.channels must be three positive ints, got {self.channels}")
        if self.text_dim is not None and self.text_dim <= 0:
            raise ValueError(f"DiTConfig.text_dim must be positive or None, got {self.text_dim}")
        split = self.rope_dims
        if len(split) != 3 or sum(split) != self.head_dim or any(d % 2 or d < 0 for d in split):
            raise ValueError(
                f"DiTConfig.rope_split={split} must be three even ints summing to head_dim={self.head_dim}"
            )
        if self.param_dtype not in _DTYPES:
            raise ValueError(f"DiTConfig.param_dtype must be one of {sorted(_DTYPES)}, got {self.param_dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Head dimensions rotated by frame, height and width position (sum = head_dim)."""
        return tuple(self.rope_split) if self.rope_split is not None else wan_rope_split(self.head_dim)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.param_dtype]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> DiTConfig:
        """Inverse of `to_dict` (JSON lists become tuples); unknown fields raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DiTConfig: unknown field(s) {unknown}")
        fixed = dict(data)
        for name in ("patch", "channels", "rope_split"):
            if fixed.get(name) is not None:
                fixed[name] = tuple(int(v) for v in fixed[name])
        return cls(**fixed)


PRESETS: dict[str, DiTConfig] = {
    # the shipped CPU default: ~14 M parameters (mot triples the block weights, not the FLOPs)
    "tiny": DiTConfig(dim=256, depth=6, heads=4, mlp_dim=1024, patch=(1, 8, 8), channels=(3, 1, 6), mot=True),
    # a GPU-sized model trained from scratch (~115 M parameters)
    "small": DiTConfig(dim=512, depth=12, heads=8, mlp_dim=2048, patch=(1, 8, 8), channels=(3, 1, 6), mot=True),
    # Wan2.1-T2V-1.3B on VAE latents (16 channels per modality), 4-stream-style MoT as the published system
    "wan-1.3b": DiTConfig(
        dim=1536,
        depth=30,
        heads=12,
        mlp_dim=8960,
        freq_dim=256,
        patch=(1, 2, 2),
        channels=(16, 16, 16),
        mot=True,
        text_dim=4096,
        qk_norm=True,
        cross_attn_norm=True,
        eps=1e-6,
    ),
}


def preset(name: str) -> DiTConfig:
    """The named preset (`tiny`, `small`, `wan-1.3b`)."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown name {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
