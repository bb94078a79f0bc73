"""Panorama consistency figures (issue 12 acceptance): wrap seam ratio and pole spread."""
from __future__ import annotations

import torch

__all__ = ["pole_spread", "seam_ratio"]
Tensor = torch.Tensor


def seam_ratio(pano: Tensor) -> float:
    """mean |I[:, :, 0] - I[:, :, -1]| (the longitude wrap) over the mean |difference| of neighbouring interior
    columns of an equirectangular image (C, H, W); about 1 when the wrap is as smooth as the rest."""
    p = pano.float()
    wrap = (p[..., 0] - p[..., -1]).abs().mean()
    inner = (p[..., 1:] - p[..., :-1]).abs().mean()
    return float(wrap / inner.clamp(min=1e-12))


def pole_spread(pano: Tensor, rows: int = 1) -> tuple[float, float]:
    """(top, bottom): standard deviation across longitude of the top / bottom ``rows`` rows (mean over channels
    and rows). Those rows all look at (nearly) one point, the zenith / nadir, so a consistent panorama has a
    small spread there."""
    p = pano.float()
    return float(p[:, :rows].std(-1).mean()), float(p[:, -rows:].std(-1).mean())
