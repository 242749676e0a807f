"""The Parallax diffusion transformer: one sequence of RGB, depth and ray tokens, Wan2.1-style blocks.

Per token, its own noise level σ is embedded (sinusoid of σ·1000 -> `time_embedding` MLP), projected
once by the shared `time_projection` to 6·dim, and each block adds its learned `modulation` table to
get shift/scale/gate triples for attention and FFN (adaLN as in DiT, Peebles & Xie 2023; per-token as
in Wan2.2), all in fp32. Block update (Wan2.1):

    x += SA(norm1(x)(1 + e1) + e0) · e2
    x += CA(norm3(x), text)
    x += FFN(norm2(x)(1 + e4) + e3) · e5

The output head is zero-initialised (DiT's adaLN-Zero idea), so an untrained model predicts 0.
The prediction is returned raw: the diffusion code decides whether it is a velocity or x0.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from backend.model.config import DiTConfig
from backend.model.layers import (
    CrossAttention,
    SelfAttention,
    feed_forward,
    layer_norm,
    linear,
    make_ffn,
    rope_tables,
    sinusoidal_embedding,
    stream_name,
    xavier_linears,
)
from backend.model.tokenizer import MODALITIES, TokenLayout


class Block(nn.Module):
    """One pre-norm transformer block with per-token adaLN modulation (Wan2.1 WanAttentionBlock)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps, self.mot = cfg.eps, cfg.mot
        self.self_attn = SelfAttention(cfg.dim, cfg.heads, cfg.qk_norm, cfg.eps, cfg.mot)
        self.has_text = cfg.text_dim is not None
        if self.has_text:
            # affine LayerNorm before cross-attention; Wan's names `norm3`, `cross_attn`
            self.norm3 = nn.LayerNorm(cfg.dim, cfg.eps) if cfg.cross_attn_norm else nn.Identity()
            self.cross_attn = CrossAttention(cfg.dim, cfg.heads, cfg.qk_norm, cfg.eps)
        self.streams = MODALITIES if cfg.mot else MODALITIES[:1]
        for m in self.streams:
            self.add_module(stream_name("ffn", m), make_ffn(cfg.dim, cfg.mlp_dim))
        # learned per-block offsets of the six modulation vectors (Wan: randn / sqrt(dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: Tensor, e0: Tensor, cos: Tensor, sin: Tensor, slices: list[slice],
                context: Tensor | None) -> Tensor:
        """x (B, L, dim) fp32; e0 (B, L, 6, dim) fp32 shared time projection with 1 added to the two
        scale slots (so norm(x)·(1 + scale) is one addcmul); returns (B, L, dim) fp32."""
        route = slices if self.mot else None
        # shift1, 1+scale1, gate1, shift2, 1+scale2, gate2 (the "1 +" is already folded into e0)
        e = (e0 + self.modulation.float()).unbind(2)  # six (B, L, dim)
        h = torch.addcmul(e[0], layer_norm(x, self.eps), e[1])
        x = torch.addcmul(x, self.self_attn(h, cos, sin, route), e[2])  # promotes to fp32
        if self.has_text and context is not None:
            n3 = self.norm3
            h = layer_norm(x, self.eps, n3.weight, n3.bias) if isinstance(n3, nn.LayerNorm) else x
            x = x + self.cross_attn(h, context)
        h = torch.addcmul(e[3], layer_norm(x, self.eps), e[4])
        if route is None:
            y = feed_forward(h, self.ffn)
        else:
            y = torch.cat([feed_forward(h[:, s], getattr(self, stream_name("ffn", m)))
                           for m, s in zip(self.streams, route)], dim=1)  # (B, L, dim)
        return torch.addcmul(x, y, e[5])


class Head(nn.Module):
    """Output head (Wan2.1 Head): modulated LayerNorm, then a Linear per modality to its patch values."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps, self.patch = cfg.eps, cfg.patch
        vol = math.prod(cfg.patch)
        for m, c in zip(MODALITIES, cfg.channels):
            self.add_module(stream_name("head", m), nn.Linear(cfg.dim, vol * c))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: Tensor, e: Tensor, layout: TokenLayout) -> Tensor:
        """x (B, L, dim), e (B, L, dim) time embedding -> (B, L, P) with zero padded slots."""
        mod = self.modulation.float()[None] + e[:, :, None]  # (B, L, 2, dim)
        h = layer_norm(x, self.eps) * (1 + mod[:, :, 1]) + mod[:, :, 0]
        pt, ph, pw = self.patch
        parts = []
        for m, c in zip(MODALITIES, layout.channels):
            lin = getattr(self, stream_name("head", m))
            y = linear(h[:, layout.modality_slice(m)], lin.weight, lin.bias)  # (B, N, pt·ph·pw·c)
            # Wan orders a head output (pt, ph, pw, c); the tokenizer is channel-major (c, pt, ph, pw)
            y = y.unflatten(-1, (pt, ph, pw, c)).permute(0, 1, 5, 2, 3, 4).flatten(2)
            parts.append(F.pad(y, (0, layout.patch_dim - y.shape[-1])))
        return torch.cat(parts, dim=1)  # (B, L, P)


class DiT(nn.Module):
    """Masked-diffusion transformer over [rgb | depth | rays] tokens; see the module docstring."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        for m, c in zip(MODALITIES, cfg.channels):
            # Conv3d with kernel = stride = patch, applied as the equivalent Linear on flattened patches
            self.add_module(stream_name("patch_embedding", m), nn.Conv3d(c, cfg.dim, cfg.patch, cfg.patch))
        if cfg.text_dim is not None:
            self.text_embedding = nn.Sequential(
                nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
            )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.head = Head(cfg)
        # tells rgb / depth / ray tokens apart (they share positions and, without mot, weights)
        self.modality_embedding = nn.Parameter(torch.zeros(len(MODALITIES), cfg.dim))
        self.grad_checkpointing = False  # recompute blocks in backward (trainer switch, not config)
        self._rope_cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.reset_parameters()
        self.to(cfg.torch_dtype)

    def reset_parameters(self) -> None:
        """Wan2.1's init: Xavier Linears and patch embeddings, N(0, 0.02) embeddings, zero output head."""
        xavier_linears(self)
        for m in MODALITIES:
            conv = getattr(self, stream_name("patch_embedding", m))
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            nn.init.zeros_(conv.bias)
        embeds = [self.time_embedding]
        if self.cfg.text_dim is not None:
            embeds.append(self.text_embedding)
        for seq in embeds:
            for mod in seq.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.normal_(mod.weight, std=0.02)
        nn.init.normal_(self.modality_embedding, std=0.02)
        for m in MODALITIES:
            lin = getattr(self.head, stream_name("head", m))
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def token_layout(self, frames: int, height: int, width: int) -> TokenLayout:
        """The TokenLayout that matches this model's patch and channels."""
        return TokenLayout(frames, height, width, patch=self.cfg.patch, channels=self.cfg.channels)

    def forward(self, x: Tensor, sigma: Tensor, layout: TokenLayout, context: Tensor | None = None) -> Tensor:
        """x (B, L, P) noisy tokens, sigma (B, L) per-token noise level in [0, 1] -> (B, L, P) prediction."""
        self._check(x, sigma, layout, context)
        slices = [layout.modality_slice(m) for m in MODALITIES]
        h = self._embed(x, layout)  # (B, L, dim) fp32
        e, e0 = self._time(sigma)  # (B, L, dim), (B, L, 6, dim) fp32, scale slots + 1
        cos, sin = self._rope(layout, x.device)
        ctx = None
        if context is not None:
            t = self.text_embedding
            ctx = linear(F.gelu(linear(context, t[0].weight, t[0].bias), approximate="tanh"), t[2].weight, t[2].bias)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                h = checkpoint(block, h, e0, cos, sin, slices, ctx, use_reentrant=False)
            else:
                h = block(h, e0, cos, sin, slices, ctx)
        return self.head(h, e, layout).to(x.dtype)

    def _embed(self, x: Tensor, layout: TokenLayout) -> Tensor:
        """Per-modality patch embedding of the real slots plus the modality embedding -> (B, L, dim) fp32."""
        parts = []
        for i, m in enumerate(MODALITIES):
            conv = getattr(self, stream_name("patch_embedding", m))
            seg = x[:, layout.modality_slice(m), : layout.real_dim(m)]  # (B, N, C·pt·ph·pw)
            y = linear(seg, conv.weight.flatten(1), conv.bias)  # (B, N, dim)
            parts.append(y.float() + self.modality_embedding[i].float())
        return torch.cat(parts, dim=1)

    def _time(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token time embedding e (B, L, dim) and projection e0 (B, L, 6, dim), fp32, autocast off (Wan).

        Tokens share few distinct σ (clean ones are 0), so the MLPs run once per distinct value.
        """
        dev = sigma.device.type
        guard = torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext()
        dedupe = dev != "meta" and not torch.compiler.is_compiling()
        with guard:
            if dedupe:
                vals, inv = torch.unique(sigma.float(), return_inverse=True)  # (U,), (B, L)
            else:
                vals, inv = sigma.float().reshape(-1), None
            t = sinusoidal_embedding(vals * 1000.0, self.cfg.freq_dim)  # (U, freq_dim)
            te, tp = self.time_embedding, self.time_projection[1]
            e = F.linear(F.silu(F.linear(t, te[0].weight.float(), te[0].bias.float())),
                         te[2].weight.float(), te[2].bias.float())  # (U, dim)
            e0 = F.linear(F.silu(e), tp.weight.float(), tp.bias.float()).unflatten(-1, (6, -1))  # (U, 6, dim)
            # fold Wan's "1 +" of the two scale vectors in here, once, instead of in every block
            e0 = e0 + torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0], device=e0.device)[:, None]
        if inv is not None:
            e, e0 = e[inv], e0[inv]
        B, L = sigma.shape
        return e.reshape(B, L, -1), e0.reshape(B, L, 6, -1)

    def _rope(self, layout: TokenLayout, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (layout, str(device))
        if key not in self._rope_cache:
            if len(self._rope_cache) > 8:
                self._rope_cache.clear()
            pos = layout.positions(device=device)  # (L, 3)
            self._rope_cache[key] = rope_tables(pos, self.cfg.rope_dims, self.cfg.rope_theta)
        return self._rope_cache[key]

    def _check(self, x: Tensor, sigma: Tensor, layout: TokenLayout, context: Tensor | None) -> None:
        cfg = self.cfg
        if tuple(layout.patch) != tuple(cfg.patch):
            raise ValueError(f"layout.patch={layout.patch} differs from the model's patch {cfg.patch}")
        if tuple(layout.channels) != tuple(cfg.channels):
            raise ValueError(f"layout.channels={layout.channels} differs from the model's channels {cfg.channels}")
        if x.dim() != 3 or x.shape[1:] != (layout.length, layout.patch_dim):
            raise ValueError(f"x must be (B, {layout.length}, {layout.patch_dim}), got {tuple(x.shape)}")
        if sigma.shape != x.shape[:2]:
            raise ValueError(f"sigma must be (B, L) = {tuple(x.shape[:2])}, got {tuple(sigma.shape)}")
        if context is not None:
            if cfg.text_dim is None:
                raise ValueError("context given but the model has no text cross-attention (text_dim=None)")
            if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.text_dim:
                raise ValueError(f"context must be (B, Lc, {cfg.text_dim}), got {tuple(context.shape)}")

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
