"""Tiled denoising in bounded memory (4K upsampler, report Sec. 4; MultiDiffusion, Bar-Tal et al. 2023).

A large image is denoised as overlapping ``tile`` x ``tile`` windows; at every sampler step each window's
denoiser output is weighted by a raised-cosine ramp over the overlap and the weighted outputs are averaged::

    D(x)[p] = sum_t w_t[p] D(x[t])[p] / sum_t w_t[p]

The network only ever sees one tile, so its activation memory is set by the tile, not by the image; the sampler
keeps a few image-sized buffers (x, the blended output, the weight sum). Where two tiles overlap by exactly
``overlap`` pixels the two ramps are ``sin^2`` and ``cos^2`` of the same angle and sum to 1.

Usage (any denoiser with the sampler signature ``D(x, sigma, **cond)``)::

    tiled = TiledDenoiser(denoiser, tile=128, overlap=32, multiple=16)
    x0_hat = tiled(x, sigma, **cond)       # x (B, C, H, W); H, W multiples of ``multiple``

Conditioning tensors of shape (B, C', H/k, W/k) (a low-resolution image, a control hint at full size) are
cropped to the tile with it (tile starts are multiples of ``multiple``, which must be a multiple of k); others
(text contexts) are passed unchanged. ``canvas=True`` also passes ``canvas=(top, left, H, W)`` so a U-Net can
evaluate its positional encoding in global coordinates. One tile covering the image is the untiled call.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

Tensor = torch.Tensor


def tile_starts(size: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start offsets of tiles of length ``min(tile, size)`` covering ``[0, size)``: steps of ``tile - overlap``
    rounded down to ``multiple``; the last tile ends at ``size``. size and tile must be multiples of ``multiple``."""
    if size % multiple or tile % multiple:
        raise ValueError(f"image side {size} and tile {tile} must be multiples of {multiple}")
    if size <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile, got overlap={overlap}, tile={tile}")
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    return list(range(0, size - tile, stride)) + [size - tile]


def ramp(length: int, start: int, size: int, overlap: int) -> Tensor:
    """1-D raised-cosine weights (length,) of a tile at ``start``: ``sin^2(pi (p + 1/2) / (2 overlap))`` over the
    first ``overlap`` pixels unless the tile starts at 0, mirrored at the end unless it ends at ``size``; 1 inside."""
    w = torch.ones(length, dtype=torch.float64)
    n = min(overlap, length // 2)
    if n > 0:
        r = torch.sin(math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / (2 * n)) ** 2
        if start > 0:
            w[:n] = r
        if start + length < size:
            w[length - n:] = torch.minimum(w[length - n:], r.flip(0))
    return w


def tile_edges(size: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Pixel indices c where a tile starts or ends inside the image (a seam would sit between c - 1 and c)."""
    t = min(tile, size)
    starts = tile_starts(size, tile, overlap, multiple)
    return sorted({s for s in starts if s > 0} | {s + t for s in starts if s + t < size})


def seam_ratio(image: Tensor, rows: list[int], cols: list[int], period: int = 1) -> float:
    """Mean absolute difference across the given borders over that between other neighbouring pixels.

    image (B, C, H, W); a border c means the pixel pairs (c - 1, c) along H (``rows``) or W (``cols``). The
    reference is every other pair (c - 1, c) with ``c % period == 0``: ``period`` = the tile grid (e.g. 16)
    compares tile borders with other borders of the same phase, so a network's own block structure (a
    2-level Haar packet draws 4 x 4 pixel blocks) is not counted as a seam. About 1 without seams.
    """
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs()  # dy[..., c-1, :] is the pair (c-1, c)
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs()
    my = torch.zeros(dy.shape[-2], dtype=torch.bool)
    my[[c - 1 for c in rows]] = True
    mx = torch.zeros(dx.shape[-1], dtype=torch.bool)
    mx[[c - 1 for c in cols]] = True
    ref_y = (torch.arange(1, dy.shape[-2] + 1) % period == 0) & ~my
    ref_x = (torch.arange(1, dx.shape[-1] + 1) % period == 0) & ~mx
    seam = torch.cat([dy[..., my, :].flatten(), dx[..., mx].flatten()])
    inner = torch.cat([dy[..., ref_y, :].flatten(), dx[..., ref_x].flatten()])
    return float(seam.double().mean() / inner.double().mean())


def _crop(value, top: int, left: int, th: int, tw: int, H: int, W: int):
    """The tile's part of a conditioning tensor (B, C, H/k, W/k); anything else unchanged."""
    if not isinstance(value, Tensor) or value.ndim != 4:
        return value
    h, w = value.shape[-2:]
    if H % h or W % w or H // h != W // w:
        return value
    k = H // h
    if top % k or left % k or th % k or tw % k:
        raise ValueError(f"tile ({top}, {left}, {th}, {tw}) does not fall on the {k}x grid of a conditioning "
                         f"tensor of shape {tuple(value.shape)}; use a tile multiple that is a multiple of {k}")
    return value[..., top // k:(top + th) // k, left // k:(left + tw) // k]


class TiledDenoiser:
    """``D(x, sigma, **cond)`` evaluated on overlapping tiles and blended (module docstring).

    Args:
        denoiser: the wrapped denoiser, ``denoiser(x_tile, sigma, **cond_tile) -> x0_hat_tile``.
        tile: tile side in pixels (a tile is ``min(tile, H) x min(tile, W)``).
        overlap: pixels shared by neighbouring tiles (before rounding the stride to ``multiple``).
        multiple: tile starts and sides are multiples of this (the network's resolution multiple).
        blend: True: raised-cosine averaging; False: each tile overwrites the previous ones (to show seams).
        canvas: pass ``canvas=(top, left, H, W)`` to the denoiser (global positional encoding).
    """

    def __init__(self, denoiser: Callable, tile: int, overlap: int, multiple: int = 1, blend: bool = True,
                 canvas: bool = False):
        if tile < 1 or tile % multiple:
            raise ValueError(f"tile must be a positive multiple of {multiple}, got {tile}")
        self.denoiser, self.tile, self.overlap, self.multiple = denoiser, tile, overlap, multiple
        self.blend, self.canvas = blend, canvas

    def tiles(self, H: int, W: int) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) of every tile of an H x W image, row by row."""
        th, tw = min(self.tile, H), min(self.tile, W)
        return [(y, x, th, tw) for y in tile_starts(H, self.tile, self.overlap, self.multiple)
                for x in tile_starts(W, self.tile, self.overlap, self.multiple)]

    def edges(self, H: int, W: int) -> tuple[list[int], list[int]]:
        """Tile borders inside the image: (rows, cols), for :func:`seam_ratio`."""
        return (tile_edges(H, self.tile, self.overlap, self.multiple),
                tile_edges(W, self.tile, self.overlap, self.multiple))

    def _call(self, x: Tensor, sigma: Tensor, top: int, left: int, th: int, tw: int, cond: dict) -> Tensor:
        H, W = x.shape[-2:]
        kw = {k: _crop(v, top, left, th, tw, H, W) for k, v in cond.items()}
        if self.canvas:
            kw["canvas"] = (top, left, H, W)
        return self.denoiser(x[..., top:top + th, left:left + tw], sigma, **kw)

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        H, W = x.shape[-2:]
        tiles = self.tiles(H, W)
        if len(tiles) == 1:
            return self._call(x, sigma, *tiles[0], cond)
        out = torch.zeros_like(x)
        total = torch.zeros(H, W, dtype=x.dtype, device=x.device)
        for top, left, th, tw in tiles:
            d = self._call(x, sigma, top, left, th, tw, cond)
            if not self.blend:
                out[..., top:top + th, left:left + tw] = d
                continue
            w = (ramp(th, top, H, self.overlap)[:, None] * ramp(tw, left, W, self.overlap)[None]).to(x)
            out[..., top:top + th, left:left + tw] += w * d
            total[top:top + th, left:left + tw] += w
        return out / total if self.blend else out
