"""Solvers for the Laplacian probability-flow ODE (Edify Image Sec. 2.2.3, App. B.2).

Every solver has one k-diffusion-style signature::

    sample_x(denoiser, x, sigmas, schedule=None, *, extra_args=None, callback=None,
             progress=None, s_churn=0.0, s_tmin=0.0, s_tmax=inf, generator=None) -> x

* ``denoiser(x, sigma, **extra_args) -> x0_hat`` with x (B, C, H, W) and sigma (B,).
* ``sigmas`` is a decreasing 1-D grid (see :func:`get_sigmas_karras`); it may end at 0.
* ``schedule`` is the stage's :class:`LaplacianSchedule`; ``None`` (or no factors) is plain EDM.
* ``callback({"x", "i", "sigma", "denoised"})`` after every step; ``progress`` wraps the step
  range (e.g. ``rich.progress.track``); ``s_churn`` > 0 adds EDM stochastic churn.

The ODE, per band k and written without the 1/alpha singularity of Eq. 19, is
``dx_k/dsigma = x_k/sigma - (alpha_k/sigma - alpha_k') D_k``. With every alpha = 1 it is EDM's
``dx/dsigma = (x - D)/sigma`` and each solver reduces exactly to its EDM counterpart.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .laplacian import LaplacianSchedule, mu, scale_bands

Tensor = torch.Tensor
EDM = LaplacianSchedule()


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                      append_zero: bool = True, device=None) -> Tensor:
    """Karras et al. (2022) rho-schedule: n levels from sigma_max down to sigma_min (+ a final 0)."""
    if n < 1:
        raise ValueError(f"need at least one step, got {n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (a + ramp * (b - a)) ** rho
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(device=device, dtype=torch.float32)


def velocity(x: Tensor, denoised: Tensor, sigma: Tensor, schedule: LaplacianSchedule) -> Tensor:
    """dx/dsigma of the Laplacian PF-ODE: per band ``x/sigma - (alpha/sigma - alpha') D`` (Eq. 18-19)."""
    s = sigma.view(-1, *([1] * (x.ndim - 1)))
    if not schedule.factors:
        return (x - denoised) / s
    w = [a / sigma - da for a, da in zip(schedule.alphas(sigma), schedule.dalphas(sigma))]
    return x / s - scale_bands(denoised, w, schedule.factors)


def first_order_step(x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor,
                     schedule: LaplacianSchedule) -> Tensor:
    """Exact ODE solution for D held constant: ``x' = mu(D, s') + (s'/s)(x - mu(D, s))``.

    This is the DDIM / exponential-integrator step for every band at once (DESIGN.md section 2).
    """
    ratio = (sigma_next / sigma).view(-1, *([1] * (x.ndim - 1)))
    return mu(denoised, sigma_next, schedule) + ratio * (x - mu(denoised, sigma, schedule))


def _churn(x, sigma, gamma, schedule, generator):
    """Raise the noise level from sigma to sigma_hat = (1 + gamma) sigma, keeping the Laplacian marginal.

    Per band x_k is rescaled by r_k = alpha_k(s_hat)/alpha_k(s) (1 where both are 0) and receives
    noise of variance s_hat^2 - r_k^2 s^2, so x_k ~ alpha_k(s_hat) x0_k + s_hat eps exactly.
    """
    sigma_hat = sigma * (1 + gamma)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if not schedule.factors:
        return x + (sigma_hat**2 - sigma**2).sqrt().view(-1, 1, 1, 1) * eps, sigma_hat
    a0, a1 = schedule.alphas(sigma), schedule.alphas(sigma_hat)
    ratios = [torch.where(p > 0, q / p.clamp_min(1e-12), torch.ones_like(p)) for p, q in zip(a0, a1)]
    stds = [(sigma_hat**2 - (r * sigma) ** 2).clamp_min(0).sqrt() for r in ratios]
    return scale_bands(x, ratios, schedule.factors) + scale_bands(eps, stds, schedule.factors), sigma_hat


def _run(step_fn, denoiser, x, sigmas, schedule, extra_args, callback, progress, s_churn, s_tmin, s_tmax,
         generator):
    """The loop every solver shares: optional churn, one denoiser call, one ``step_fn``, callback."""
    schedule = schedule or EDM
    extra_args = extra_args or {}

    def denoise(y, s):
        return denoiser(y, s, **extra_args)

    n = len(sigmas) - 1
    ones = x.new_ones(x.shape[0])
    state: dict = {}
    for i in progress(range(n)) if progress is not None else range(n):
        sigma, sigma_next = sigmas[i] * ones, sigmas[i + 1] * ones
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= float(sigmas[i]) <= s_tmax else 0.0
        if gamma > 0:
            x, sigma = _churn(x, sigma, gamma, schedule, generator)
        denoised = denoise(x, sigma)
        x = step_fn(x, denoised, sigma, sigma_next, schedule, state, denoise)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "denoised": denoised})
    return x


def _solver(step_fn):
    def sample(denoiser: Callable, x: Tensor, sigmas: Tensor, schedule: LaplacianSchedule | None = None, *,
               extra_args: dict | None = None, callback: Callable | None = None, progress: Callable | None = None,
               s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
               generator: torch.Generator | None = None) -> Tensor:
        return _run(step_fn, denoiser, x, sigmas, schedule, extra_args, callback, progress, s_churn, s_tmin,
                    s_tmax, generator)

    sample.__name__ = step_fn.__name__.removeprefix("_").removesuffix("_step")
    sample.__doc__ = step_fn.__doc__
    return sample


def _euler_step(x, denoised, sigma, sigma_next, schedule, state, denoise):
    """Euler on the Laplacian PF-ODE (first order). With alpha = 1: k-diffusion's ``sample_euler``."""
    return x + (sigma_next - sigma).view(-1, 1, 1, 1) * velocity(x, denoised, sigma, schedule)


def _heun_step(x, denoised, sigma, sigma_next, schedule, state, denoise):
    """Heun (EDM Algorithm 1/2): Euler then trapezoidal correction, Euler only for the step to sigma = 0."""
    d = velocity(x, denoised, sigma, schedule)
    dt = (sigma_next - sigma).view(-1, 1, 1, 1)
    x_next = x + dt * d
    if float(sigma_next[0]) == 0:
        return x_next
    d_next = velocity(x_next, denoise(x_next, sigma_next), sigma_next, schedule)
    return x + dt * (d + d_next) / 2


def _ddim_step(x, denoised, sigma, sigma_next, schedule, state, denoise):
    """First-order Laplacian solver ``x' = mu(D, s') + (s'/s)(x - mu(D, s))``. With alpha = 1: DDIM."""
    return first_order_step(x, denoised, sigma, sigma_next, schedule)


def _dpmpp_2m_step(x, denoised, sigma, sigma_next, schedule, state, denoise):
    """Second-order multistep solver for the Laplacian ODE (DPM-Solver++(2M) for per-band attenuation).

    Derivation. Per band, let y = x/sigma and g = alpha(sigma)/sigma. The ODE
    ``dx/dsigma = x/sigma - (alpha/sigma - alpha') D`` becomes ``dy = D dg``, so over a step
    ``y' = y + int_{g(s)}^{g(s')} D dg``: exact when D is constant, which is the first-order step
    ``x' = mu(D, s') + (s'/s)(x - mu(D, s))``. Write lambda = -log(sigma) (shared by all bands) and model
    D as linear in lambda through the last two evaluations, D(lambda) = D_i + (lambda - lambda_i)(D_i - D_{i-1})/h_{i-1}.
    Evaluating that line at the midpoint lambda_i + h_i/2 and integrating it exactly gives
    ``D_eff = D_i + h_i / (2 h_{i-1}) (D_i - D_{i-1})`` in the first-order step; the error against the exact
    integral of the line is O(h^3) per step for smooth alpha, so the method is second order. With alpha = 1
    this is exactly k-diffusion's ``sample_dpmpp_2m``. The first step and the step to sigma = 0 are first order.
    """
    prev = state.get("prev")
    d_eff = denoised
    if prev is not None and float(sigma_next[0]) > 0:
        old_denoised, old_sigma = prev
        h = (sigma / sigma_next).log().view(-1, 1, 1, 1)
        h_last = (old_sigma / sigma).log().view(-1, 1, 1, 1)
        d_eff = denoised + h / (2 * h_last) * (denoised - old_denoised)
    state["prev"] = (denoised, sigma)
    return first_order_step(x, d_eff, sigma, sigma_next, schedule)


sample_euler = _solver(_euler_step)
sample_heun = _solver(_heun_step)
sample_ddim = _solver(_ddim_step)
sample_dpmpp_2m = _solver(_dpmpp_2m_step)

SOLVERS: dict[str, Callable] = {
    "euler": sample_euler, "heun": sample_heun, "ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m,
}


def get_solver(name: str) -> Callable:
    """Look a solver up by name ("euler", "heun", "ddim", "dpmpp_2m")."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[name]


def nfe_per_step(name: str) -> int:
    """Denoiser evaluations per step (Heun: 2, except the last step to 0)."""
    return 2 if name == "heun" else 1


def check_guidance_interval(interval: tuple[float, float] | None) -> None:
    """ValueError unless ``interval`` is None or a sigma range ``(lo, hi)`` with ``0 <= lo < hi``."""
    if interval is not None and not 0 <= interval[0] < interval[1]:
        raise ValueError(f"guidance interval must be (lo, hi) with 0 <= lo < hi, got {tuple(interval)}")


class CFGDenoiser:
    """Classifier-free guidance, optionally with autoguidance, in one batched call for the guidance pair.

    ``D = D_u + scale * (D_c - D_u)``; with a ``guide`` (Karras et al. 2024, "Guiding a Diffusion Model with a Bad
    Version of Itself") also ``+ (guide_scale - 1) * (D_c - D_g)``, where ``guide(x, sigma) -> D_g`` is a weaker
    denoiser of the same condition. So ``scale = 1`` is pure autoguidance ``D_g + guide_scale (D_c - D_g)`` and
    ``guide_scale = 1`` (or no guide) is plain CFG, bit for bit.

    ``cond`` and ``uncond`` are dicts of tensors with a leading batch dim (B, ...); the conditional
    and unconditional inputs are concatenated along the batch. ``scale = 1`` skips the unconditional
    branch. ``interval = (lo, hi)`` applies classifier-free guidance only for ``lo <= sigma <= hi`` (Kynkaanniemi
    et al. 2024, "guidance in a limited interval"); outside it the CFG term is 0 and, when no sample of the batch is
    inside, the unconditional branch is not evaluated. Autoguidance applies at every sigma.
    Call as ``CFGDenoiser(denoiser, cond, uncond, scale)(x, sigma)``.
    """

    def __init__(self, denoiser: Callable, cond: dict, uncond: dict, scale: float,
                 interval: tuple[float, float] | None = None, guide: Callable | None = None,
                 guide_scale: float = 1.0):
        check_guidance_interval(interval)
        self.denoiser, self.cond, self.uncond, self.scale = denoiser, cond, uncond, scale
        self.interval, self.guide, self.guide_scale = interval, guide, guide_scale

    def __call__(self, x: Tensor, sigma: Tensor, **_) -> Tensor:
        inside = torch.ones_like(sigma, dtype=torch.bool)
        if self.interval is not None:
            inside = (sigma >= self.interval[0]) & (sigma <= self.interval[1])
        if self.scale == 1.0 or not bool(inside.any()):
            d = d_c = self.denoiser(x, sigma, **self.cond)
        else:
            both = {k: torch.cat([self.uncond[k], self.cond[k]]) for k in self.cond}
            d_u, d_c = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
            scale = torch.where(inside, self.scale, 1.0).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
            d = d_u + scale * (d_c - d_u)
        if self.guide is not None and self.guide_scale != 1.0:
            d = d + (self.guide_scale - 1.0) * (d_c - self.guide(x, sigma))
        return d
