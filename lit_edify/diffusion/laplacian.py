"""Laplacian decomposition and the Laplacian forward process (Edify Image, Sec. 2.1.2-2.2.4, App. B.1).

Conventions (DESIGN.md section 2):

* ``down(x, f)`` is f x f average pooling and ``up(x, f)`` nearest-neighbour upsampling, so
  ``P = up(down(.))`` is an orthogonal projection and every identity below is exact.
* Bands are ordered **finest first**: ``bands[0]`` is the full-resolution detail band and
  ``bands[-1]`` the coarsest (low-pass) band. ``factors[k]`` is the ratio between the resolution
  of band ``k`` and band ``k + 1``.
* A noise level ``sigma`` is always stated at the resolution of the array it describes.

All functions work on float tensors of shape (B, C, H, W); H and W must be divisible by the
product of the factors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def down(x: Tensor, f: int) -> Tensor:
    """f x f average pooling: (B, C, H, W) -> (B, C, H/f, W/f) (report App. B.1)."""
    if f == 1:
        return x
    if x.shape[-1] % f or x.shape[-2] % f:
        raise ValueError(f"spatial shape {tuple(x.shape[-2:])} is not divisible by factor {f}")
    return F.avg_pool2d(x, f)


def up(x: Tensor, f: int) -> Tensor:
    """Nearest-neighbour upsampling: (B, C, H, W) -> (B, C, f*H, f*W) (report App. B.1)."""
    if f == 1:
        return x
    return x.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)


def decompose(x: Tensor, factors: Sequence[int]) -> list[Tensor]:
    """Laplacian decomposition (Eq. 3) into ``len(factors) + 1`` bands at their compact resolution.

    ``bands[k] = low_k - up(low_{k+1}, factors[k])`` with ``low_0 = x`` and
    ``low_{k+1} = down(low_k, factors[k])``; the last band is the coarsest ``low``.
    For factors (2, 2) this is exactly Eq. 3a-3c with x1 = bands[0], x2 = bands[1], x3 = bands[2].
    """
    bands, low = [], x
    for f in factors:
        coarse = down(low, f)
        bands.append(low - up(coarse, f))
        low = coarse
    bands.append(low)
    return bands


def reconstruct(bands: Sequence[Tensor], factors: Sequence[int]) -> Tensor:
    """Inverse of :func:`decompose`: ``x = x1 + up(x2) + up(up(x3))`` (Eq. 3)."""
    x = bands[-1]
    for band, f in zip(reversed(bands[:-1]), reversed(list(factors))):
        x = band + up(x, f)
    return x


def scale_bands(x: Tensor, weights: Sequence[Tensor | float], factors: Sequence[int]) -> Tensor:
    """Return ``sum_k weights[k] * P_k x``, where P_k projects onto band k (finest first).

    ``weights[k]`` is a float or a tensor broadcastable to (B, 1, 1, 1). Because the band
    projections are orthogonal and sum to the identity, applying this to iid N(0, I) noise gives
    noise with covariance ``sum_k weights[k]**2 P_k``.
    """
    bands = decompose(x, factors)
    return reconstruct([_bcast(w, b) * b for w, b in zip(weights, bands)], factors)


def _bcast(w: Tensor | float, like: Tensor) -> Tensor | float:
    if isinstance(w, Tensor) and w.ndim == 1:
        return w.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))
    return w


@dataclass(frozen=True)
class LaplacianSchedule:
    """Per-band attenuation factors alpha_k(sigma) of one stage (Eq. 4, Sec. 2.2.1).

    Args:
        factors: resolution ratios between consecutive bands, finest first. ``()`` is plain EDM.
        cutoffs: per non-coarsest band, the sigma (at this stage's resolution) at and above which
            the band is fully attenuated (alpha = 0). Finer bands must have smaller cutoffs.
        starts: per non-coarsest band, the sigma below which alpha = 1. Defaults to cutoff / 8.
        shape: "cosine" (half-cosine in log sigma) or "linear" (linear in log sigma).

    The coarsest band always has alpha = 1. ``alphas(sigma)`` returns one tensor per band,
    finest first, each shaped like ``sigma``.
    """

    factors: tuple[int, ...] = ()
    cutoffs: tuple[float, ...] = ()
    starts: tuple[float, ...] | None = None
    shape: str = "cosine"

    def __post_init__(self):
        object.__setattr__(self, "factors", tuple(int(f) for f in self.factors))
        object.__setattr__(self, "cutoffs", tuple(float(c) for c in self.cutoffs))
        if len(self.cutoffs) != len(self.factors):
            raise ValueError(f"need one cutoff per non-coarsest band: factors={self.factors}, cutoffs={self.cutoffs}")
        if any(f < 2 for f in self.factors):
            raise ValueError(f"band factors must be integers >= 2, got {self.factors}")
        if any(a >= b for a, b in zip(self.cutoffs, self.cutoffs[1:])):
            raise ValueError(f"finer bands need smaller cutoffs (strictly increasing), got {self.cutoffs}")
        starts = self.starts if self.starts is not None else tuple(c / 8 for c in self.cutoffs)
        object.__setattr__(self, "starts", tuple(float(s) for s in starts))
        if len(self.starts) != len(self.cutoffs) or any(not 0 < s < c for s, c in zip(self.starts, self.cutoffs)):
            raise ValueError(f"need 0 < start < cutoff per band, got starts={self.starts}, cutoffs={self.cutoffs}")
        if self.shape not in ("cosine", "linear"):
            raise ValueError(f"schedule shape must be 'cosine' or 'linear', got {self.shape!r}")

    @property
    def num_bands(self) -> int:
        return len(self.factors) + 1

    @property
    def total_factor(self) -> int:
        return math.prod(self.factors)

    def _progress(self, sigma: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """u in [0, 1] (position between start and cutoff in log sigma) and du/dsigma."""
        lo, hi = math.log(self.starts[k]), math.log(self.cutoffs[k])
        s = sigma.clamp_min(1e-20)
        raw = (s.log() - lo) / (hi - lo)
        inside = (raw > 0) & (raw < 1)
        du = torch.where(inside, 1.0 / (s * (hi - lo)), torch.zeros_like(s))
        return raw.clamp(0, 1), du

    def alphas(self, sigma: Tensor) -> list[Tensor]:
        """alpha_k(sigma) for every band, finest first (coarsest = 1)."""
        out = []
        for k in range(len(self.cutoffs)):
            u, _ = self._progress(sigma, k)
            out.append(0.5 * (1 + torch.cos(math.pi * u)) if self.shape == "cosine" else 1 - u)
        return out + [torch.ones_like(sigma)]

    def dalphas(self, sigma: Tensor) -> list[Tensor]:
        """d alpha_k / d sigma for every band, finest first (coarsest = 0)."""
        out = []
        for k in range(len(self.cutoffs)):
            u, du = self._progress(sigma, k)
            out.append(-0.5 * math.pi * torch.sin(math.pi * u) * du if self.shape == "cosine" else -du)
        return out + [torch.zeros_like(sigma)]


def mu(x0: Tensor, sigma: Tensor, schedule: LaplacianSchedule) -> Tensor:
    """Attenuated mean ``mu(x0, sigma) = sum_k alpha_k(sigma) * band_k(x0)`` (Eq. 4).

    x0: (B, C, H, W); sigma: (B,) at the resolution of x0.
    """
    if not schedule.factors:
        return x0
    return scale_bands(x0, schedule.alphas(sigma), schedule.factors)


def forward_process(
    x0: Tensor, sigma: Tensor, schedule: LaplacianSchedule, noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample ``x_sigma = mu(x0, sigma) + sigma * eps`` (Eq. 5). sigma: (B,)."""
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return mu(x0, sigma, schedule) + _bcast(sigma, x0) * noise


def switch_resolution(
    x_r: Tensor, sigma: Tensor | float, f: int, generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor | float]:
    """Switch a noisy state from resolution r to R = f * r (Eq. 6-10).

    ``x_R = up(x_r) + sigma * f * (eps_R - up(down(eps_R)))`` and ``sigma_R = f * sigma``.
    Then ``down(x_R) == x_r`` exactly and the noise in x_R is iid N(0, sigma_R^2) (Eq. 10).
    Valid only where the new detail band is fully attenuated at sigma_R.

    x_r: (B, C, h, w); sigma: float or (B,) at resolution r. Returns (x_R (B, C, f*h, f*w), sigma_R).
    ``noise`` (B, C, f*h, f*w) may be given instead of a generator (used by exactness tests).
    """
    shape = (*x_r.shape[:-2], x_r.shape[-2] * f, x_r.shape[-1] * f)
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=x_r.device, dtype=x_r.dtype)
    detail = noise - up(down(noise, f), f)
    sigma_R = sigma * f
    return up(x_r, f) + _bcast(sigma_R, x_r) * detail, sigma_R
