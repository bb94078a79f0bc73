"""The exactness test (DESIGN.md section 2): on Gaussian data with the closed-form posterior-mean denoiser,
switch and cascade plans reproduce N(m, S); output covariances are computed exactly, not sampled.

Stage 0 uses sigma_max = 1000 so that the prior mismatch of starting from N(0, sigma_max^2 I) instead of
the true marginal (a mean bias of order sqrt(eig(S)) |m| / sigma_max, about 5e-3 at sigma_max = 80) stays
well below the 1e-3 mean tolerance.
"""
import math
from functools import lru_cache

import pytest

from lit_edify.diffusion.gaussian import GaussianDenoiser, downsampled, plan_output_moments, smooth_gaussian
from lit_edify.diffusion.laplacian import LaplacianSchedule
from lit_edify.diffusion.plans import Stage

SIDE = 16
M, S = smooth_gaussian(SIDE)
M0, S0 = downsampled(M, S, SIDE, 2)
SCH = LaplacianSchedule((2,), (1.0,))


def stages(steps: int, plan: str) -> list[Stage]:
    low = Stage(GaussianDenoiser(M0, S0, SIDE // 2, LaplacianSchedule()), LaplacianSchedule(), 0.002, 1000.0, steps)
    high = Stage(GaussianDenoiser(M, S, SIDE, SCH), SCH, 0.002, 2.0 if plan == "cascade" else 1.0, steps, factor=2)
    return [low, high]


@lru_cache(maxsize=None)
def errors(plan: str, solver: str, steps: int) -> tuple[float, float]:
    mean, cov = plan_output_moments(stages(steps, plan), SIDE // 2, plan, solver)
    return ((cov - S).norm() / S.norm()).item(), (mean - M).abs().max().item()


@pytest.mark.parametrize("plan", ["switch", "cascade"])
def test_second_order_solver_reproduces_the_gaussian(plan):
    cov_err, mean_err = errors(plan, "dpmpp_2m", 64)
    assert cov_err < 0.01 and mean_err < 1e-3


@pytest.mark.parametrize("plan", ["switch", "cascade"])
def test_first_order_solver_converges_at_order_one(plan):
    e16, e32, e64 = (errors(plan, "ddim", n)[0] for n in (16, 32, 64))
    for coarse, fine in [(e16, e32), (e32, e64)]:
        assert 0.8 <= math.log2(coarse / fine) <= 1.2


@pytest.mark.parametrize("plan", ["switch", "cascade"])
def test_second_order_solver_converges_at_order_two(plan):
    e32, e64 = errors(plan, "dpmpp_2m", 32)[0], errors(plan, "dpmpp_2m", 64)[0]
    assert math.log2(e32 / e64) >= 1.5


def test_a_wrong_band_sign_breaks_exactness():
    # Guard for the test itself: a denoiser that ignores the attenuation (treats x as plain EDM)
    # must visibly fail the covariance check.
    wrong = [stages(64, "cascade")[0],
             Stage(GaussianDenoiser(M, S, SIDE, LaplacianSchedule()), SCH, 0.002, 2.0, 64, factor=2)]
    _, cov = plan_output_moments(wrong, SIDE // 2, "cascade", "dpmpp_2m")
    assert ((cov - S).norm() / S.norm()).item() > 0.05
