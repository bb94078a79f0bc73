"""Image statistics that expose sampling defects a person sees at a glance.

* :func:`block_border_ratio` -- wavelet-block artefacts. The U-Net predicts each 4x4 pixel block from one
  position's 48 wavelet coefficients; when those are noisy the image shows a grid of 4x4 tiles. The ratio
  of the mean absolute neighbour difference *across* block borders to the one *inside* blocks is about the
  same for real images and artefact-free samples, and grows with tiling.
* :func:`channel_spread` -- colour where there should be none: the mean over pixels of
  ``max_c x - min_c x``, 0 for greyscale images.
* :func:`noise_kept` -- the denoiser's share of the input noise left in its output on a region where the
  answer is known to be (near) noise-free, e.g. the inside of flat objects. A sampler integrates what the
  denoiser leaves: kept noise at sigma <= 0.3 is the grain of the final samples.

Images are float in [-1, 1], (N, C, H, W); both functions return Python floats in that scale.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def _diffs(x: Tensor, dim: int, block: int) -> tuple[Tensor, Tensor]:
    """Absolute neighbour differences along ``dim`` split into (across a block border, inside a block)."""
    d = (x.narrow(dim, 1, x.shape[dim] - 1) - x.narrow(dim, 0, x.shape[dim] - 1)).abs()
    border = (torch.arange(1, x.shape[dim], device=x.device) % block) == 0  # difference j is pixels j-1 | j
    d = d.movedim(dim, -1)
    return d[..., border], d[..., ~border]


def block_border_ratio(images: Tensor, block: int = 4) -> float:
    """mean |horizontal and vertical differences across ``block``-pixel borders| / the same inside blocks.

    Pixel ``j`` and ``j - 1`` straddle a border when ``j % block == 0``. Returns NaN for a constant image.
    """
    if images.ndim != 4 or images.shape[-1] <= block or images.shape[-2] <= block:
        raise ValueError(f"need (N, C, H, W) with H, W > {block}, got {tuple(images.shape)}")
    x = images.double()
    across, inside = zip(_diffs(x, -1, block), _diffs(x, -2, block))
    a = torch.cat([t.flatten() for t in across]).mean()
    i = torch.cat([t.flatten() for t in inside]).mean()
    return float(a / i)


def channel_spread(images: Tensor) -> float:
    """Mean over pixels of (max over channels - min over channels); 0 for greyscale images."""
    if images.ndim != 4:
        raise ValueError(f"need (N, C, H, W), got {tuple(images.shape)}")
    x = images.double()
    return float((x.amax(1) - x.amin(1)).mean())


def noise_kept(denoiser, x0: Tensor, region: Tensor, sigma: float, noise: Tensor) -> float:
    """Least-squares share of the noise that ``D(x0 + sigma n) - x0`` still holds on ``region``.

    ``<D - x0, n>_region / (sigma <n, n>_region)``: 1 = the noise passes untouched, 0 = fully removed (the
    right answer where the clean image is flat and the model knows it). ``denoiser(x, sigma_batch) -> D``;
    x0, noise (N, C, H, W); region (N, 1, H, W) weights in [0, 1]. Plain EDM noising ``x0 + sigma n``: for a
    Laplacian model use a sigma below its first band start (no band is attenuated there).
    """
    if noise.shape != x0.shape or region.shape != (x0.shape[0], 1, *x0.shape[-2:]):
        raise ValueError(f"noise must match x0 {tuple(x0.shape)} and region be (N, 1, H, W), got "
                         f"{tuple(noise.shape)} and {tuple(region.shape)}")
    sig = torch.full((x0.shape[0],), float(sigma), device=x0.device)
    with torch.no_grad():
        err = denoiser(x0 + sigma * noise, sig) - x0
    w = region.to(err.dtype).expand_as(err)
    return float((err * noise * w).sum() / (sigma * (noise * noise * w).sum()))
