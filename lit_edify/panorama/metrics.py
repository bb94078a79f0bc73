"""Panorama consistency figures (issue 12 acceptance): wrap seam ratio and pole spread."""
from __future__ import annotations

import torch

__all__ = ["boundary_ratio", "pole_spread", "seam_ratio"]
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


def boundary_ratio(img: Tensor, known: Tensor) -> float:
    """How visible the edge of an inpainted region is: mean |difference| of neighbouring pixels (horizontal and
    vertical pairs) that straddle the known / generated boundary over that of pairs in the same direction inside the
    generated region (img (C, h, w), known (1, h, w) in {0, 1}); about 1 when the new content continues the old
    one seamlessly."""
    edge_sum, expected = 0.0, 0.0
    for dim in (-1, -2):  # each direction against its own interior (a smooth ramp differs per direction)
        n = img.shape[dim] - 1
        a, b = img.narrow(dim, 0, n), img.narrow(dim, 1, n)
        ka, kb = known.narrow(dim, 0, n), known.narrow(dim, 1, n)
        diff = (a - b).abs().mean(0, keepdim=True)
        edge, inner = diff[ka != kb], diff[(ka == 0) & (kb == 0)]
        if edge.numel() and inner.numel():
            edge_sum += float(edge.sum())
            expected += edge.numel() * float(inner.mean())
    return edge_sum / expected if expected > 0 else float("nan")
