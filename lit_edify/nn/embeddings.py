"""Conditioning embeddings of the U-Net: the noise level's Fourier features and MLP (plus the pooled context), and
the learnable positional encoding with its resizing to other aspect ratios and to tiles of a larger canvas."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FourierEmbedding", "add_pos_embed", "embedding", "feature_canvas"]


def _bilinear_rows(out_size: int, in_size: int, start: int, length: int, like: Tensor) -> Tensor:
    """Rows ``start:start+length`` of the (out_size, in_size) matrix of 1-D bilinear resizing with
    ``align_corners=False`` (``F.interpolate``'s convention: source = (i + 0.5) in/out - 0.5, clamped at 0)."""
    i = torch.arange(start, start + length, dtype=torch.float64, device=like.device)
    src = ((i + 0.5) * (in_size / out_size) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    lam = src - i0
    m = torch.zeros(length, in_size, dtype=torch.float64, device=like.device)
    rows = torch.arange(length, device=like.device)
    m.index_put_((rows, i0), 1 - lam, accumulate=True)
    m.index_put_((rows, (i0 + 1).clamp_max(in_size - 1)), lam, accumulate=True)
    return m.to(like.dtype)


def add_pos_embed(h: Tensor, pos: Tensor | None, canvas: tuple[int, int, int, int] | None = None) -> Tensor:
    """h (B, C, h, w) + the learnable 1:1 positional encoding pos (1, C, s, s), bilinearly resized to (h, w)
    for other aspect ratios (Sec. 3.4); h unchanged if pos is None.

    ``canvas = (top, left, H, W)`` (feature units) says that h is the window ``[top:top+h, left:left+w]`` of a
    larger H x W feature map (tiled sampling): the encoding is then evaluated in those global coordinates, i.e.
    equal (to float rounding) to resizing pos to (H, W) and cropping the window, at the cost of the window only.
    A canvas equal to h's own extent is the untiled path exactly."""
    if pos is None:
        return h
    if canvas is not None and tuple(canvas) != (0, 0, *h.shape[-2:]):
        top, left, full_h, full_w = canvas
        rows = _bilinear_rows(full_h, pos.shape[-2], top, h.shape[-2], pos)
        cols = _bilinear_rows(full_w, pos.shape[-1], left, h.shape[-1], pos)
        return h + torch.einsum("yi,bcij,xj->bcyx", rows, pos, cols).to(h.dtype)
    if pos.shape[-2:] != h.shape[-2:]:
        pos = F.interpolate(pos, size=h.shape[-2:], mode="bilinear", align_corners=False)
    return h + pos.to(h.dtype)


def feature_canvas(canvas: tuple[int, int, int, int] | None, levels: int) -> tuple[int, int, int, int] | None:
    """A pixel canvas (top, left, H, W) in the units of the first feature map (pixels / 2^levels); every entry
    must be a multiple of 2^levels."""
    if canvas is None:
        return None
    k = 2**levels
    if any(int(v) % k for v in canvas):
        raise ValueError(f"canvas {tuple(canvas)} (top, left, H, W) must be in multiples of {k} pixels")
    return tuple(int(v) // k for v in canvas)


def embedding(net: nn.Module, c_noise: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
    """The ResBlocks' conditioning vector (B, emb_dim): an MLP of the noise level's Fourier features, plus the
    masked mean of the context tokens through ``net.map_context`` when the net has one (``pooled_context``)."""
    emb = net.map_layer1(F.silu(net.map_layer0(net.map_noise(c_noise))))
    if net.map_context is not None:
        w = context_mask.to(context.dtype)[..., None]
        pooled = (context * w).sum(1) / w.sum(1).clamp_min(1)
        emb = emb + net.map_context(pooled.to(emb.dtype))
    return F.silu(emb)


class FourierEmbedding(nn.Module):
    """Fixed random Fourier features of the scalar noise level (EDM's NCSN++ / EDM2's MP-Fourier).

    (B,) float (EDM ``c_noise = ln(sigma) / 4``, roughly [-3, 3]) -> (B, num_channels) float32 in [-1, 1].
    """

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, c_noise: Tensor) -> Tensor:
        x = c_noise.float().outer(2 * math.pi * self.freqs.float())
        return torch.cat([x.cos(), x.sin()], dim=1)
