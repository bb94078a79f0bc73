"""EDM preconditioning, training noise levels and loss (Karras et al. 2022; Edify Image Eq. 1-2).

The denoiser is ``D(x, sigma) = c_skip * x + c_out * F(c_in * x, c_noise)`` and it is trained with
``lambda(sigma) * ||D(x_sigma, sigma) - x0||^2`` (Eq. 1), where ``x_sigma`` comes from the Laplacian
forward process of the stage (Eq. 5), so an attenuated band is attenuated in the network input too.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .laplacian import LaplacianSchedule, forward_process

Tensor = torch.Tensor


def edm_scalings(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM preconditioning coefficients (Karras et al. 2022, Table 1).

    c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2),
    c_noise = ln(s) / 4. sigma: (B,) -> four (B,) tensors.
    """
    var = sigma**2 + sigma_data**2
    return sigma_data**2 / var, sigma * sigma_data / var.sqrt(), 1 / var.sqrt(), sigma.log() / 4


def loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM loss weight lambda(sigma) = (s^2 + sd^2) / (s sd)^2 = 1 / c_out^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def precondition(net: Callable, x: Tensor, sigma: Tensor, sigma_data: float, **cond) -> Tensor:
    """Apply the EDM preconditioner around a raw network ``net(x_in, c_noise, **cond) -> F``.

    x: (B, C, H, W) noisy image; sigma: (B,) at the resolution of x. Returns D(x, sigma), same shape.
    The network runs in whatever dtype autocast gives; the skip connection stays in x's dtype.
    """
    c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1, 1) if c.ndim else c for c in edm_scalings(sigma, sigma_data))
    F_x = net(x * c_in, c_noise.flatten(), **cond)
    return c_skip * x + c_out * F_x.to(x.dtype)


def sample_sigmas(
    n: int, p_mean: float, p_std: float, sigma_min: float, sigma_max: float,
    generator: torch.Generator | None = None, device=None,
) -> Tensor:
    """Training noise levels: ln sigma ~ N(p_mean, p_std^2) truncated to [sigma_min, sigma_max].

    Sampled exactly by inverting the normal CDF on the truncated interval. Returns (n,) float32.
    """
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    normal = torch.distributions.Normal(0.0, 1.0)
    lo = normal.cdf(torch.tensor((math.log(sigma_min) - p_mean) / p_std))
    hi = normal.cdf(torch.tensor((math.log(sigma_max) - p_mean) / p_std))
    u = torch.rand(n, generator=generator, device=generator.device if generator is not None else "cpu")
    u = (lo + (hi - lo) * u).clamp(1e-7, 1 - 1e-7)
    log_sigma = p_mean + p_std * normal.icdf(u)
    return log_sigma.clamp(math.log(sigma_min), math.log(sigma_max)).exp().to(device)


def denoising_loss(
    denoiser: Callable, x0: Tensor, sigma: Tensor, schedule: LaplacianSchedule, sigma_data: float,
    noise: Tensor | None = None, pixel_weight: Tensor | None = None, **cond,
) -> Tensor:
    """Per-sample EDM loss (Eq. 1) under the Laplacian forward process (Eq. 5).

    denoiser(x, sigma, **cond) -> x0_hat. x0: (B, C, H, W) in [-1, 1]; sigma: (B,).
    pixel_weight: optional (B, 1, H, W) >= 0 weights of the squared error, normalised per sample (a weighted mean,
    so a constant weight is the plain loss); e.g. inpainting's known region weighted above the generated one.
    Returns (B,): lambda(sigma) * mean over pixels of (D - x0)^2 (weighted mean with ``pixel_weight``).
    """
    x = forward_process(x0, sigma, schedule, noise=noise)
    sq = (denoiser(x, sigma, **cond) - x0).square()
    if pixel_weight is None:
        err = sq.flatten(1).mean(1)
    else:
        w = pixel_weight.to(sq).expand_as(sq).flatten(1)
        err = (w * sq.flatten(1)).sum(1) / w.sum(1).clamp_min(torch.finfo(sq.dtype).tiny)
    return loss_weight(sigma, sigma_data) * err


class LossLogvar(torch.nn.Module):
    """EDM2's learned per-sigma loss uncertainty u(sigma) (Karras et al. 2024, "Analyzing and Improving the Training
    Dynamics of Diffusion Models", Sec. 5): unit-bandwidth Fourier features of c_noise = ln(sigma) / 4, then a
    zero-initialised linear layer. Trained jointly through :func:`uncertainty_weighted`; not used at sampling.
    sigma (B,) -> u (B,) float32."""

    def __init__(self, channels: int = 128):
        super().__init__()
        self.register_buffer("freqs", torch.randn(channels // 2))
        self.register_buffer("phases", torch.rand(channels // 2))
        self.linear = torch.nn.Linear(channels, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, sigma: Tensor) -> Tensor:
        x = (sigma.float().log() / 4).outer(self.freqs) + self.phases
        feats = torch.cat([torch.cos(2 * math.pi * x), torch.sin(2 * math.pi * x)], dim=1)
        return self.linear(feats).squeeze(1)


def uncertainty_weighted(loss: Tensor, logvar: Tensor) -> Tensor:
    """``loss / exp(u) + u`` per sample. For a fixed expected loss L at a sigma the minimum over u is at u = ln L,
    where every sigma's weighted loss is 1: the gradient contributions of the noise levels are equalised, so that no
    range of sigma (e.g. the steep low-noise end) dominates the shared weights' updates."""
    return loss / logvar.exp() + logvar
