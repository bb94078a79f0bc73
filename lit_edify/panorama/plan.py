"""View plan and assembly of a panorama from perspective views (Edify Image Sec. 6).

The plan (:func:`view_plan`): ``n`` square views around the horizon, generated in order, then the zenith and the
nadir, which see the overlap of all the horizon views. Horizon view k looks at yaw ``-pi + (k + 1/2) 2pi/n``, so
the last view meets the first one at the longitude wrap (columns 0 / W-1 of the equirectangular image): loop
closure happens exactly where a naive assembly shows its seam.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from lit_edify.panorama.geometry import (View, equirect_directions, project_to_view, sample_view,
                                         solid_angle_weights, view_weight)

__all__ = ["assemble", "coverage_counts", "horizon_fov", "pole_fov", "ring_lowest_latitude", "view_plan"]
Tensor = torch.Tensor


def horizon_fov(n: int, overlap: float) -> float:
    """Horizontal field of view of n horizon views whose neighbours share ``overlap`` of their width at the
    horizon: ``(fov - 2pi/n) / fov = overlap``, so ``fov = (2pi/n) / (1 - overlap)``."""
    if not 0 <= overlap < 1 or n < 3:
        raise ValueError(f"need n >= 3 horizon views and 0 <= overlap < 1, got n={n}, overlap={overlap}")
    fov = 2 * math.pi / n / (1 - overlap)
    if fov >= math.pi:
        raise ValueError(f"{n} views with overlap {overlap} need a field of view of {math.degrees(fov):.0f} deg "
                         ">= 180; use more views or less overlap")
    return fov


def ring_lowest_latitude(n: int, fov: float) -> float:
    """The latitude up to which the horizon ring of n square views (field of view fov) covers every longitude:
    the top edge midway between two views, ``atan(tan(fov/2) / sqrt(1 + tan(pi/n)^2))``."""
    return math.atan(math.tan(fov / 2) / math.sqrt(1 + math.tan(math.pi / n) ** 2))


def pole_fov(ring_latitude: float, pole_overlap: float) -> float:
    """Field of view of a square zenith (nadir) view whose edge midpoints reach ``pole_overlap`` below the
    ring's covered latitude: ``2 (pi/2 - ring_latitude + pole_overlap)``."""
    fov = 2 * (math.pi / 2 - ring_latitude + pole_overlap)
    if fov >= math.pi:
        raise ValueError(f"pole view field of view {math.degrees(fov):.0f} deg >= 180: lower the pole overlap")
    return fov


def view_plan(n: int = 8, overlap: float = 0.5, pole_overlap_deg: float = 10.0) -> list[View]:
    """The generation order: n horizon views (yaw -pi + (k + 1/2) 2pi/n, pitch 0), then zenith and nadir.

    overlap: fraction of a horizon view's width shared with each neighbour at the horizon.
    pole_overlap_deg: latitude band (degrees) shared by the zenith / nadir views and the horizon ring."""
    fov = horizon_fov(n, overlap)
    fp = pole_fov(ring_lowest_latitude(n, fov), math.radians(pole_overlap_deg))
    ring = [View(-math.pi + (k + 0.5) * 2 * math.pi / n, 0.0, fov) for k in range(n)]
    return ring + [View(0.0, math.pi / 2, fp), View(0.0, -math.pi / 2, fp)]


def coverage_counts(views: Sequence[View], h: int, w: int, size: tuple[int, int]) -> Tensor:
    """How many views (h x w pixels each) see each pixel of a ``size`` = (H, W) equirectangular image (H, W)."""
    d = equirect_directions(*size)
    return sum(project_to_view(d, v, h, w)[1].long() for v in views)


def covered_fraction(counts: Tensor, at_least: int = 1) -> float:
    """Fraction of the sphere's solid angle (4pi) whose count is >= ``at_least`` (counts (H, W))."""
    sa = solid_angle_weights(*counts.shape)
    return float(((counts >= at_least).double() * sa).sum() / (4 * math.pi))


def assemble(views: Sequence[View], images: Sequence[Tensor] | Callable[[int], Tensor], size: tuple[int, int],
             band: int = 512, out: Tensor | None = None, mode: str = "bilinear") -> Tensor:
    """Blend perspective images into an equirectangular image (C, H, W) with tent weights (feathered seams).

    images: per view (C, h, w) float (or a function view index -> image). Rows are processed in bands of
    ``band`` so that memory is set by the band, not the panorama: ``out`` may be a preallocated (C, H, W)
    tensor of any dtype (e.g. float16 or uint8 for a 16K panorama); float values are written as they are,
    uint8 output takes values in [0, 1] and rounds to 0..255."""
    get = images if callable(images) else (lambda k: images[k])
    h_out, w_out = size
    first = get(0)
    c = first.shape[0]
    out = torch.empty(c, h_out, w_out, dtype=first.dtype) if out is None else out
    for r0 in range(0, h_out, band):
        rows = slice(r0, min(r0 + band, h_out))
        d = equirect_directions(h_out, w_out, rows=rows)
        num = torch.zeros(c, d.shape[0], w_out)
        den = torch.zeros(d.shape[0], w_out)
        for k, v in enumerate(views):
            img = first if k == 0 else get(k)
            wk = view_weight(d, v, *img.shape[-2:])
            cols = wk.any(0).nonzero().squeeze(1)  # only the columns this view reaches (4-8x less work)
            if cols.numel() == 0:
                continue
            wk = wk[:, cols]
            num[:, :, cols] += sample_view(img.float(), v, d[:, cols], mode) * wk
            den[:, cols] += wk
        band_img = num / den.clamp(min=1e-12)
        if out.dtype == torch.uint8:
            band_img = (band_img.clamp(0, 1) * 255).round()
        out[:, rows] = band_img.to(out.dtype)
    return out
