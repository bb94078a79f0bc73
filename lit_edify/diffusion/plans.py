"""Sampling plans over several resolution stages (Edify Image Sec. 2.2.3-2.2.4 and Sec. 3).

* **switch**: one trajectory. Stage 0 runs from its sigma_max down to the next stage's switch
  level (stated at stage 0's resolution), the state is lifted with :func:`switch_resolution`
  (Eq. 6-10) and the next stage continues; the last stage runs down to sigma = 0.
* **cascade**: stage 0 samples fully (down to 0); each next stage starts from
  ``up(x) + sigma_max * eps`` (forward diffusion of the upsampled sample, Sec. 3) and samples fully.

Both are exact for exact denoisers because each stage's sigma_max is at or above the cutoff of the
detail band it adds, so at the switch / restart that band holds pure noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .laplacian import LaplacianSchedule, down, mu, switch_resolution, up
from .samplers import get_sigmas_karras, get_solver

Tensor = torch.Tensor
NoiseFn = Callable[[tuple], Tensor]


@dataclass
class Stage:
    """One resolution stage of a plan.

    denoiser(x, sigma, **extra_args) -> x0_hat at this stage's resolution (CFG already applied).
    factor: resolution ratio to the previous stage (ignored for the first stage).
    sigma_min / sigma_max: the stage's noise range at its own resolution; steps: solver steps.
    """

    denoiser: Callable
    schedule: LaplacianSchedule
    sigma_min: float
    sigma_max: float
    steps: int
    factor: int = 1
    rho: float = 7.0
    extra_args: dict = field(default_factory=dict)

    def new_bands(self) -> int:
        """Number of this stage's finest bands that the previous stage does not have."""
        prod, j = 1, 0
        while prod < self.factor:
            if j >= len(self.schedule.factors):
                break
            prod *= self.schedule.factors[j]
            j += 1
        if prod != self.factor:
            raise ValueError(f"stage factor {self.factor} is not a product of its finest band factors "
                             f"{self.schedule.factors}")
        return j

    def switch_sigma(self) -> float:
        """Lowest sigma (this resolution) where every new band is fully attenuated: the switch level."""
        j = self.new_bands()
        return self.schedule.cutoffs[j - 1] if j else self.sigma_max


def _check_entry(prev: Stage | None, stage: Stage, sigma: float, probe_hw: int = 16) -> None:
    """Check that entering ``stage`` at ``sigma`` from ``prev`` (or from a clean image) is exact.

    Exactness needs mu_stage(x0, sigma) == up(mu_prev(down(x0), sigma / f)) for every x0
    (prev = None: == up(down(x0))). Both sides are linear, so one random probe decides it.
    """
    f = stage.factor
    side = probe_hw * stage.schedule.total_factor * f
    x0 = torch.randn(1, 1, side, side, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = torch.tensor([sigma], dtype=torch.float64)
    low = down(x0, f)
    if prev is not None:
        low = mu(low, s / f, prev.schedule)
    err = (mu(x0, s, stage.schedule) - up(low, f)).abs().max().item()
    if err > 1e-6:
        raise ValueError(
            f"cannot enter the {f}x stage at sigma={sigma:g}: its attenuation schedule "
            f"(cutoffs {stage.schedule.cutoffs}) does not match the previous stage there "
            f"(max mismatch {err:.3g}); raise that stage's sigma_max or its band cutoffs")


def _randn(generator: torch.Generator | None, device, dtype) -> NoiseFn:
    return lambda shape: torch.randn(shape, generator=generator, device=device, dtype=dtype)


def sample_plan(
    stages: list[Stage], shape: tuple, plan: str = "cascade", solver: str = "dpmpp_2m", *,
    generator: torch.Generator | None = None, noise: NoiseFn | None = None, device=None,
    dtype=torch.float32, callback: Callable | None = None, progress: Callable | None = None,
    s_churn: float = 0.0, x_low: Tensor | None = None,
) -> Tensor:
    """Sample through ``stages`` with plan "switch" or "cascade" (module docstring).

    shape: (B, C, H, W) of stage 0. Returns (B, C, H * prod(factors), W * prod(factors)), the last
    stage's x0 estimate. ``noise(shape)`` supplies every Gaussian draw (initial, switch and restart
    noise), default ``torch.randn`` with ``generator``. ``callback`` also receives "stage".
    """
    if plan not in ("switch", "cascade"):
        raise ValueError(f"plan must be 'switch' or 'cascade', got {plan!r}")
    noise = noise or _randn(generator, device, dtype)
    sample = get_solver(solver)
    if x_low is not None and plan != "cascade":
        raise ValueError("x_low (start from a clean low-resolution image) needs plan='cascade'")
    x = x_low
    for k, stage in enumerate(stages):
        last = k == len(stages) - 1
        if plan == "switch":
            top = stage.sigma_max if k == 0 else stage.switch_sigma()
            if k > 0 and top > stage.sigma_max:
                raise ValueError(f"stage {k}: switch level {top:g} above its sigma_max {stage.sigma_max:g}")
            bottom = stage.sigma_min if last else stages[k + 1].switch_sigma() / stages[k + 1].factor
        else:
            top, bottom = stage.sigma_max, stage.sigma_min
        if x is None:
            x = noise(tuple(shape)) * top
        elif plan == "switch":
            _check_entry(stages[k - 1], stage, top)
            x, _ = switch_resolution(x, top / stage.factor, stage.factor, noise=noise(
                (*x.shape[:-2], x.shape[-2] * stage.factor, x.shape[-1] * stage.factor)))
        else:
            _check_entry(None, stage, top)
            x = up(x, stage.factor)
            x = x + top * noise(tuple(x.shape))
        if bottom >= top:
            raise ValueError(f"stage {k}: empty noise range [{bottom:g}, {top:g}]")
        sigmas = get_sigmas_karras(stage.steps, bottom, top, stage.rho, append_zero=plan == "cascade" or last,
                                   device=x.device)
        cb = None if callback is None else (lambda d, k=k: callback({**d, "stage": k}))
        x = sample(stage.denoiser, x, sigmas, stage.schedule, extra_args=stage.extra_args, callback=cb,
                   progress=progress, s_churn=s_churn, generator=generator)
    return x
