"""Reconstruction guidance (Ho et al. 2022, "Video Diffusion Models", Eq. 7; Edify Image Sec. 4.1).

The 4K upsampler keeps its output faithful to the low-resolution input ``x_low`` by correcting the denoised
estimate with the gradient, with respect to the noisy input, of the reconstruction error of its low band::

    D~(x, sigma) = D(x, sigma) - (w_r / 2) * grad_x || down(D(x, sigma), f) - x_low ||^2

(the sum runs over all pixels of the low-resolution image; Ho et al.'s ``alpha_t`` is 1 in EDM's
parametrisation). ``w_r = 0`` is the unguided denoiser exactly, and so is any sigma outside the optional
window ``[lo, hi]``. With the ideal denoiser the Jacobian ``dD/dx = Cov[x0 | x] / sigma^2`` is at most the
identity, so one evaluation removes about ``w_r / f^2`` of the low-band error where the denoiser trusts its
input: ``w_r`` up to ``f^2`` (16 for the 4x upsampler) moves the low band monotonically toward ``x_low``.
"""
from __future__ import annotations

from typing import Callable

import torch

from .laplacian import down
from .samplers import check_guidance_interval

Tensor = torch.Tensor


def reconstruction_error(denoised: Tensor, x_low: Tensor, f: int) -> Tensor:
    """Per-sample ``||down(D, f) - x_low||^2`` summed over channels and pixels: (B, C, fh, fw), (B, C, h, w) -> (B,)."""
    return (down(denoised, f) - x_low.to(denoised.dtype)).square().flatten(1).sum(1)


def guided_denoise(denoiser: Callable, x: Tensor, sigma: Tensor, target: Tensor, f: int, weight: Tensor | float,
                   **cond) -> Tensor:
    """``D(x) - (weight / 2) grad_x ||down(D(x), f) - target||^2`` (module docstring; target = x_low), one denoiser
    call + its backward. weight: a float or (B,) per sample. Works under ``torch.no_grad`` (grad enabled locally)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        d = denoiser(xg, sigma, **cond)
        (grad,) = torch.autograd.grad(reconstruction_error(d, target, f).sum(), xg)
    w = torch.as_tensor(weight, dtype=x.dtype, device=x.device)
    w = w.view(-1, *([1] * (x.ndim - 1))) if w.ndim else w
    return d.detach() - 0.5 * w * grad


class ReconstructionGuidance:
    """A denoiser with reconstruction guidance, in the one sampler signature ``D(x, sigma, *, x_low, **cond)``.

    Args:
        denoiser: ``denoiser(x, sigma, **cond) -> x0_hat``, x (B, C, H, W), sigma (B,).
        factor: f, with H = f h and W = f w for ``x_low`` (B, C, h, w) (the upsampling factor).
        weight: w_r >= 0; 0 returns ``denoiser(x, sigma, **cond)`` untouched.
        window: optional ``(lo, hi)``: guide only samples with ``lo <= sigma <= hi`` (sigma at the resolution of
            x); the others get the unguided output, and no backward pass runs when none is inside.

    ``x_low`` is a call argument (not state) so that :class:`lit_edify.diffusion.tiled.TiledDenoiser` crops it
    per tile with the image; give it through ``Stage.extra_args`` or ``partial``. ``pass_x_low=True`` also hands
    it to ``denoiser`` (a denoiser conditioned on the low-resolution image, e.g. the 4K upsampler's).
    """

    def __init__(self, denoiser: Callable, factor: int, weight: float, window: tuple[float, float] | None = None,
                 pass_x_low: bool = False):
        if not weight >= 0:
            raise ValueError(f"reconstruction guidance weight must be >= 0, got {weight}")
        check_guidance_interval(window)
        self.denoiser, self.factor, self.weight, self.window = denoiser, int(factor), float(weight), window
        self.pass_x_low = pass_x_low

    def __call__(self, x: Tensor, sigma: Tensor, *, x_low: Tensor, **cond) -> Tensor:
        if self.pass_x_low:
            cond = {**cond, "x_low": x_low}
        inside = torch.ones_like(sigma, dtype=torch.bool)
        if self.window is not None:
            inside = (sigma >= self.window[0]) & (sigma <= self.window[1])
        if self.weight == 0 or not bool(inside.any()):
            return self.denoiser(x, sigma, **cond)
        weight = torch.where(inside, self.weight, 0.0).to(x.dtype)
        return guided_denoise(self.denoiser, x, sigma, x_low, self.factor, weight, **cond)
