"""Spacetime patch tokenizer for RGB, depth and Plücker-ray videos.

Each modality's video (B, F, C, H, W) is cut into (pt, ph, pw) patches as in ViT/DiT patchify
(Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023), extended to time as in Wan2.1's
Conv3d patch embedding. Token order is modality-major: [all rgb | all depth | all rays], each block
in (f, h, w) raster order, so a modality's tokens are one contiguous slice (mixture-of-transformers
gathers nothing). Inside a token the values are channel-major, (c, t, i, j) flattened — the order of
a Conv3d weight [dim, C, pt, ph, pw] flattened — and zero-padded to the widest modality, so the real
channels of every token are a prefix of its P slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

MODALITIES = ("rgb", "depth", "rays")


@dataclass(frozen=True)
class TokenLayout:
    frames: int  # F, frames (or latent frames)
    height: int  # H, pixels (or latent cells)
    width: int  # W, pixels (or latent cells)
    patch: tuple[int, int, int] = (1, 8, 8)  # (pt, ph, pw) spacetime patch
    channels: tuple[int, int, int] = (3, 1, 6)  # channels per modality, in MODALITIES order

    def __post_init__(self) -> None:
        if len(self.patch) != 3 or min(self.patch) <= 0:
            raise ValueError(f"TokenLayout.patch must be three positive ints, got {self.patch}")
        if len(self.channels) != len(MODALITIES) or min(self.channels) <= 0:
            raise ValueError(f"TokenLayout.channels must be {len(MODALITIES)} positive ints, got {self.channels}")
        for field, size, p in zip(("frames", "height", "width"), (self.frames, self.height, self.width), self.patch):
            if size <= 0 or size % p:
                raise ValueError(f"TokenLayout.{field}={size} must be a positive multiple of the patch size {p}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """(F', H', W') tokens along frame, height, width."""
        pt, ph, pw = self.patch
        return (self.frames // pt, self.height // ph, self.width // pw)

    @property
    def tokens_per_modality(self) -> int:
        return math.prod(self.grid)

    @property
    def length(self) -> int:
        return len(MODALITIES) * self.tokens_per_modality

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch)

    @property
    def patch_dim(self) -> int:
        return max(self.channels) * self.patch_volume

    def real_dim(self, name: str) -> int:
        """Number of real (unpadded) slots in a token of modality `name`: C_m·pt·ph·pw."""
        return self.channels[_index(name)] * self.patch_volume

    def modality_slice(self, name: str) -> slice:
        i, n = _index(name), self.tokens_per_modality
        return slice(i * n, (i + 1) * n)

    def modality_ids(self, device=None) -> Tensor:
        """(L,) long: 0 rgb, 1 depth, 2 rays, modality-major."""
        ids = torch.arange(len(MODALITIES), device=device)
        return ids.repeat_interleave(self.tokens_per_modality)  # (L,)

    def positions(self, device=None) -> Tensor:
        """(L, 3) long (f, h, w) grid index of every token; identical for all modalities (shared RoPE)."""
        axes = [torch.arange(n, device=device) for n in self.grid]
        fhw = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (N, 3)
        return fhw.repeat(len(MODALITIES), 1)  # (L, 3)

    def channel_mask(self, device=None) -> Tensor:
        """(L, P) bool, True where the slot holds a real channel (the prefix of length C_m·pt·ph·pw)."""
        real = torch.tensor([self.real_dim(m) for m in MODALITIES], device=device)
        per_token = real.repeat_interleave(self.tokens_per_modality)  # (L,)
        return torch.arange(self.patch_dim, device=device)[None, :] < per_token[:, None]  # (L, P)

    def patchify(self, video: dict[str, Tensor]) -> Tensor:
        """{modality: (B, F, C, H, W)} -> (B, L, P); a missing modality gives zero tokens."""
        unknown = sorted(set(video) - set(MODALITIES))
        if unknown:
            raise ValueError(f"patchify: unknown modality {unknown}; expected a subset of {MODALITIES}")
        if not video:
            raise ValueError("patchify: video has no modality")
        ref = next(iter(video.values()))
        B = ref.shape[0]
        out = ref.new_zeros(B, self.length, self.patch_dim)  # (B, L, P)
        for name, x in video.items():
            self._check_video(name, x, B)
            out[:, self.modality_slice(name), : self.real_dim(name)] = self._cut(x)
        return out

    def unpatchify(self, tokens: Tensor) -> dict[str, Tensor]:
        """(B, L, P) -> {modality: (B, F, C, H, W)}; padded slots are dropped."""
        if tokens.dim() != 3 or tokens.shape[1:] != (self.length, self.patch_dim):
            raise ValueError(
                f"unpatchify: tokens must be (B, {self.length}, {self.patch_dim}), got {tuple(tokens.shape)}"
            )
        (Fg, Hg, Wg), (pt, ph, pw) = self.grid, self.patch
        out = {}
        for name, C in zip(MODALITIES, self.channels):
            t = tokens[:, self.modality_slice(name), : self.real_dim(name)]  # (B, N, C·pt·ph·pw)
            t = t.reshape(-1, Fg, Hg, Wg, C, pt, ph, pw).permute(0, 1, 5, 4, 2, 6, 3, 7)
            out[name] = t.reshape(-1, self.frames, C, self.height, self.width)  # (B, F, C, H, W)
        return out

    def pixel_mask_to_tokens(self, mask: Tensor) -> Tensor:
        """(B, F, H, W) bool/float mask -> (B, N) fraction of each patch's pixels that are set."""
        if mask.dim() != 4 or mask.shape[1:] != (self.frames, self.height, self.width):
            raise ValueError(
                f"pixel_mask_to_tokens: mask must be (B, {self.frames}, {self.height}, {self.width}), "
                f"got {tuple(mask.shape)}"
            )
        (Fg, Hg, Wg), (pt, ph, pw) = self.grid, self.patch
        m = mask.float().reshape(-1, Fg, pt, Hg, ph, Wg, pw)
        return m.mean(dim=(2, 4, 6)).reshape(-1, self.tokens_per_modality)  # (B, N)

    def _cut(self, x: Tensor) -> Tensor:
        """(B, F, C, H, W) -> (B, N, C·pt·ph·pw), channel-major inside a token."""
        (Fg, Hg, Wg), (pt, ph, pw) = self.grid, self.patch
        B, _, C = x.shape[:3]
        t = x.reshape(B, Fg, pt, C, Hg, ph, Wg, pw).permute(0, 1, 4, 6, 3, 2, 5, 7)  # (B,F',H',W',C,pt,ph,pw)
        return t.reshape(B, Fg * Hg * Wg, C * pt * ph * pw)

    def _check_video(self, name: str, x: Tensor, batch: int) -> None:
        want = (batch, self.frames, self.channels[_index(name)], self.height, self.width)
        if tuple(x.shape) != want:
            raise ValueError(
                f"patchify: video[{name!r}] must have shape (B, F, C, H, W) = {want}, got {tuple(x.shape)}"
            )


def _index(name: str) -> int:
    if name not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {name!r}")
    return MODALITIES.index(name)
