"""Small class-captioned synthetic images (coloured shapes on textured backgrounds) for tests and benchmarks.

Each caption reads ``"a <color> <shape>"`` and is a class; images are drawn with torch only.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["COLORS", "SHAPES", "draw_shapes", "random_captions"]

COLORS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.25, 0.9), "yellow": (0.95, 0.85, 0.1)}
SHAPES = ("circle", "square", "triangle")


def random_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` captions "a <color> <shape>" drawn uniformly with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    colors, k = list(COLORS), len(COLORS) * len(SHAPES)
    return [f"a {colors[i % len(COLORS)]} {SHAPES[i // len(COLORS)]}"
            for i in torch.randint(0, k, (n,), generator=g).tolist()]


def draw_shapes(captions: list[str], size: int = 64, seed: int = 0) -> Tensor:
    """Render one image per caption "a <color> <shape>".

    Random per image: background tint and texture, shape centre and radius, colour jitter.

    Returns:
        (N, 3, size, size) float32 in [-1, 1].
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for cap in captions:
        _, color, shape = cap.split()
        bg = 0.55 + 0.35 * torch.rand(3, 1, 1, generator=g)
        freq = 2 + 6 * torch.rand(2, generator=g)
        texture = 0.06 * torch.sin(2 * torch.pi * (freq[0] * xx + freq[1] * yy))
        img = (bg + texture).expand(3, size, size).clone()
        cx, cy = (0.3 + 0.4 * torch.rand(2, generator=g)).tolist()
        r = float(0.15 + 0.12 * torch.rand(1, generator=g))
        if shape == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        elif shape == "square":
            mask = ((xx - cx).abs() <= r * 0.85) & ((yy - cy).abs() <= r * 0.85)
        elif shape == "triangle":
            top, bottom = cy - r, cy + r
            half = (yy - top) / (2 * r) * r
            mask = (yy >= top) & (yy <= bottom) & ((xx - cx).abs() <= half)
        else:
            raise ValueError(f"unknown shape {shape!r} in caption {cap!r}")
        rgb = torch.tensor(COLORS[color]) + 0.06 * torch.randn(3, generator=g)
        img = torch.where(mask, rgb.view(3, 1, 1).clamp(0, 1), img)
        img = img + 0.02 * torch.randn(3, size, size, generator=g)
        out.append(img.clamp(0, 1) * 2 - 1)
    return torch.stack(out)
