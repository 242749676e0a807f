"""Building blocks of the DiT: norms, timestep embedding, 3D RoPE, routed (per-modality) linears, attention.

Parameter names follow Wan2.1 (`q, k, v, o, norm_q, norm_k`, `ffn.0/2`) for the RGB stream; with
mixture-of-transformers (Liang et al., "Mixture-of-Transformers", 2024) every other modality gets its
own copy named with a `_<modality>` suffix (`q_depth`, `ffn_rays`, ...), and attention stays shared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backend.model.tokenizer import MODALITIES


def stream_name(base: str, modality: str) -> str:
    """Parameter-module name of `base` for a modality: Wan's own name for rgb, `base_<modality>` else."""
    return base if modality == "rgb" else f"{base}_{modality}"


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear that casts the input to the weight dtype unless autocast already picks the dtype."""
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        x = x.to(weight.dtype)
    return F.linear(x, weight, bias)


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """RMSNorm (Zhang & Sennrich 2019) computed in fp32, as Wan's qk-norm, over the last dim."""
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else y * weight.to(x.dtype)


def layer_norm(x: Tensor, eps: float, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """LayerNorm in fp32 (the residual stream and the modulation are fp32)."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps)


class RMSNorm(nn.Module):
    """Learned-scale RMSNorm; its only parameter is `weight` [dim] (Wan's `norm_q`/`norm_k`)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Transformer sinusoidal embedding of a real position t (Vaswani et al. 2017), Wan's order [cos | sin].

    t: (...,) -> (..., dim) fp32 with frequencies 10000^(−k/(dim/2)), k = 0 … dim/2 − 1.
    """
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.double()[..., None] * freqs  # (..., half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


def rope_tables(positions: Tensor, dims: tuple[int, ...], theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables of multi-axis rotary embedding (Su et al., RoFormer 2021; 3D as in Wan2.1).

    positions: (L, A) integer index per axis; dims[a]: head dims rotated by axis a (even).
    Returns cos, sin: (L, sum(dims)/2) fp32; pair k of a head rotates by pos_a·θ^(−2k/dims[a]).
    """
    angles = []
    for a, d in enumerate(dims):
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=positions.device) / d)
        angles.append(positions[:, a].double()[:, None] * inv)  # (L, d/2)
    ang = torch.cat(angles, dim=-1)  # (L, head_dim/2)
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (x[2k], x[2k+1]) of x (B, L, H, D) by the angles of cos/sin (L, D/2).

    Adjacent pairing is what Wan's complex-number implementation does, so its q/k weights fit.
    Computed as x·c + swap(x)·s with c = (cos, cos) and s = (−sin, sin) per pair: three passes.
    Returns fp32 (attention on the CPU is faster in fp32; cast by the caller where wanted).
    """
    c = cos.repeat_interleave(2, dim=-1)[:, None, :]  # (L, 1, D)
    s = torch.stack([-sin, sin], dim=-1).flatten(-2)[:, None, :]  # (L, 1, D)
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # pairs (x[2k+1], x[2k])
    return torch.addcmul(xf * c, swapped, s)


def routed(x: Tensor, slices: list[slice] | None, fn) -> Tensor:
    """Apply fn(segment, i) to each modality's contiguous token slice of x (B, L, ·) and re-join along L.

    With `slices=None` (no mixture-of-transformers) fn(x, 0) runs once on the whole sequence.
    """
    if slices is None:
        return fn(x, 0)
    return torch.cat([fn(x[:, s], i) for i, s in enumerate(slices)], dim=1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with qk RMS-norm over the full width and 3D RoPE (Wan2.1).

    With `mot`, every modality has its own q/k/v/o and qk-norm weights; all tokens attend jointly.
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool, eps: float, mot: bool) -> None:
        super().__init__()
        self.dim, self.heads, self.eps, self.qk_norm = dim, heads, eps, qk_norm
        self.streams = MODALITIES if mot else MODALITIES[:1]
        for m in self.streams:
            for base in ("q", "k", "v", "o"):
                self.add_module(stream_name(base, m), nn.Linear(dim, dim))
            if qk_norm:
                self.add_module(stream_name("norm_q", m), RMSNorm(dim, eps))
                self.add_module(stream_name("norm_k", m), RMSNorm(dim, eps))

    def _get(self, base: str, i: int) -> nn.Module:
        return getattr(self, stream_name(base, self.streams[i]))

    def _qkv(self, x: Tensor, i: int) -> Tensor:
        """Fused q/k/v projection (one GEMM instead of three) plus qk-norm: (B, n, dim) -> (B, n, 3·dim)."""
        q, k, v = (self._get(b, i) for b in ("q", "k", "v"))
        w = torch.cat([q.weight, k.weight, v.weight], dim=0)  # (3·dim, dim)
        b = torch.cat([q.bias, k.bias, v.bias], dim=0)
        qkv = linear(x, w, b)  # (B, n, 3·dim)
        if not self.qk_norm:
            return qkv
        qq, kk, vv = qkv.split(self.dim, dim=-1)
        qq = rms_norm(qq, self._get("norm_q", i).weight, self.eps)
        kk = rms_norm(kk, self._get("norm_k", i).weight, self.eps)
        return torch.cat([qq, kk, vv], dim=-1)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, slices: list[slice] | None) -> Tensor:
        """x (B, L, dim) -> (B, L, dim); cos/sin (L, head_dim/2) from rope_tables."""
        B, L, _ = x.shape
        qkv = routed(x, slices, self._qkv)  # (B, L, 3·dim)
        q, k, v = qkv.view(B, L, 3, self.heads, -1).unbind(2)  # each (B, L, H, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # fp32
        # the CPU flash kernel is slower in bf16 than in fp32; elsewhere attend in the compute dtype
        v = v.float() if x.device.type == "cpu" else v
        q, k = (q, k) if x.device.type == "cpu" else (q.to(v.dtype), k.to(v.dtype))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        y = y.transpose(1, 2).reshape(B, L, self.dim)  # (B, L, dim)
        return routed(y, slices, lambda t, i: linear(t, self._get("o", i).weight, self._get("o", i).bias))


class CrossAttention(nn.Module):
    """Text cross-attention (Wan T2V): queries from all tokens, keys/values from the text, no RoPE."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x (B, L, dim), context (B, Lc, dim) -> (B, L, dim)."""
        B, L, _ = x.shape
        q = self.norm_q(linear(x, self.q.weight, self.q.bias)).view(B, L, self.heads, -1)
        k = self.norm_k(linear(context, self.k.weight, self.k.bias)).view(B, -1, self.heads, q.shape[-1])
        v = linear(context, self.v.weight, self.v.bias).view(B, -1, self.heads, q.shape[-1])
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return linear(y.transpose(1, 2).reshape(B, L, self.dim), self.o.weight, self.o.bias)


def feed_forward(x: Tensor, ffn: nn.Sequential) -> Tensor:
    """Wan's FFN: Linear -> GELU(tanh) -> Linear, for an `nn.Sequential` named like Wan's `ffn.{0,2}`."""
    h = F.gelu(linear(x, ffn[0].weight, ffn[0].bias), approximate="tanh")
    return linear(h, ffn[2].weight, ffn[2].bias)


def make_ffn(dim: int, mlp_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_dim, dim))


def xavier_linears(module: nn.Module) -> None:
    """Wan's initialisation of every Linear: Xavier-uniform weight, zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

