"""Solvers: the Laplacian ODE itself, reduction to plain EDM, churn, CFG and plan validation."""
import math

import pytest
import torch

from lit_edify.diffusion.laplacian import LaplacianSchedule, decompose, forward_process, mu
from lit_edify.diffusion.plans import Stage, sample_plan
from lit_edify.diffusion.samplers import (
    CFGDenoiser, SOLVERS, _churn, first_order_step, get_sigmas_karras, velocity,
)

SCH = LaplacianSchedule((2,), (1.0,))


def test_karras_grid():
    s = get_sigmas_karras(10, 0.002, 80.0, rho=7.0)
    assert len(s) == 11 and s[-1] == 0
    assert math.isclose(s[0].item(), 80.0, rel_tol=1e-6) and math.isclose(s[-2].item(), 0.002, rel_tol=1e-5)
    mid = ((80 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7)
    s = get_sigmas_karras(3, 0.002, 80.0, append_zero=False)
    assert math.isclose(s[1].item(), mid, rel_tol=1e-5)


def test_velocity_is_the_forward_path_derivative():
    # With D = x0 held fixed, x(sigma) = mu(x0, sigma) + sigma * eps solves the ODE (Eq. 18-19).
    x0, eps = torch.randn(2, 1, 1, 8, 8, dtype=torch.float64)
    for s in [0.05, 0.3, 0.6, 0.95, 1.5]:
        sig, h = torch.tensor([s], dtype=torch.float64), 1e-6
        path = lambda t: forward_process(x0, t, SCH, noise=eps)  # noqa: E731
        fd = (path(sig + h) - path(sig - h)) / (2 * h)
        assert torch.allclose(velocity(path(sig), x0, sig, SCH), fd, atol=1e-6)


def test_first_order_step_is_exact_for_constant_denoiser():
    x0, eps = torch.randn(2, 1, 1, 8, 8, dtype=torch.float64)
    s, s_next = torch.tensor([1.7], dtype=torch.float64), torch.tensor([0.2], dtype=torch.float64)
    x = forward_process(x0, s, SCH, noise=eps)
    assert torch.allclose(first_order_step(x, x0, s, s_next, SCH), forward_process(x0, s_next, SCH, noise=eps))


def _edm_reference(name, denoiser, x, sigmas):
    """Plain EDM solvers written out directly (k-diffusion's formulas) for the alpha = 1 comparison."""
    old = None
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        d = denoiser(x, s * torch.ones(x.shape[0], dtype=x.dtype))
        if name == "euler":
            x = x + (sn - s) * (x - d) / s
        elif name == "heun":
            x2 = x + (sn - s) * (x - d) / s
            if sn > 0:
                d2 = denoiser(x2, sn * torch.ones(x.shape[0], dtype=x.dtype))
                x2 = x + (sn - s) * ((x - d) / s + (x2 - d2) / sn) / 2
            x = x2
        elif name == "ddim":
            x = d + (sn / s) * (x - d)
        else:  # dpmpp_2m
            t, tn = -s.log(), -sn.log()
            h = tn - t
            if old is None or sn == 0:
                x = (sn / s) * x - torch.expm1(-h) * d
            else:
                r = (t + sigmas[i - 1].log()) / h
                x = (sn / s) * x - torch.expm1(-h) * ((1 + 1 / (2 * r)) * d - old / (2 * r))
            old = d
    return x


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_alpha_one_reduces_to_plain_edm(name):
    denoiser = lambda x, s: 0.8 * torch.tanh(x) / (1 + s.view(-1, 1, 1, 1) ** 2) ** 0.25  # noqa: E731
    x = 10 * torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sigmas = get_sigmas_karras(12, 0.01, 10.0).double()
    never = LaplacianSchedule((2,), (1e6,), starts=(1e5,))         # bands present, alpha = 1 throughout
    ours = SOLVERS[name](denoiser, x, sigmas, never)
    plain = SOLVERS[name](denoiser, x, sigmas, None)
    ref = _edm_reference(name, denoiser, x, sigmas)
    assert torch.allclose(ours, ref, atol=1e-10) and torch.allclose(plain, ref, atol=1e-10)


def test_churn_keeps_the_laplacian_marginal():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 1, 16, 16, dtype=torch.float64).expand(4000, 1, 16, 16)
    s = torch.full((4000,), 0.3, dtype=torch.float64)
    x = forward_process(x0, s, SCH, generator=g)
    x_hat, s_hat = _churn(x, s, 0.4, SCH, g)
    assert torch.allclose(s_hat, s * 1.4)
    resid = x_hat - mu(x0, s_hat, SCH)
    assert (resid.mean(0)).abs().max() < 4 * s_hat[0] / math.sqrt(4000)
    for band in decompose(resid, SCH.factors):     # every band has variance s_hat^2 times its share
        share = 0.75 if band.shape[-1] == 16 else 0.25
        assert abs(band.var().item() / (share * s_hat[0].item() ** 2) - 1) < 0.03


def test_cfg_combines_both_branches_in_one_call():
    calls = []

    def denoiser(x, sigma, ctx):
        calls.append(x.shape[0])
        return x * ctx.view(-1, 1, 1, 1)

    x, sigma = torch.randn(3, 1, 4, 4), torch.ones(3)
    cond, uncond = {"ctx": torch.full((3,), 2.0)}, {"ctx": torch.full((3,), 0.5)}
    out = CFGDenoiser(denoiser, cond, uncond, 3.0)(x, sigma)
    assert calls == [6]
    assert torch.allclose(out, 0.5 * x + 3.0 * (2.0 * x - 0.5 * x))
    assert torch.allclose(CFGDenoiser(denoiser, cond, uncond, 1.0)(x, sigma), 2 * x)


def test_cfg_interval_guides_only_inside_and_skips_the_unconditional_branch_outside():
    calls = []

    def denoiser(x, sigma, ctx):
        calls.append(x.shape[0])
        return x * ctx.view(-1, 1, 1, 1)

    x = torch.randn(3, 1, 4, 4)
    cond, uncond = {"ctx": torch.full((3,), 2.0)}, {"ctx": torch.full((3,), 0.5)}
    cfg = CFGDenoiser(denoiser, cond, uncond, 3.0, interval=(0.5, 2.0))
    guided = 0.5 * x + 3.0 * (2.0 * x - 0.5 * x)
    assert torch.allclose(cfg(x, torch.full((3,), 1.0)), guided)
    assert calls == [6]
    for outside in (0.1, 5.0):                       # below and above: D_c only, one half-size call
        assert torch.equal(cfg(x, torch.full((3,), outside)), 2.0 * x)
    assert calls == [6, 3, 3]
    mixed = cfg(x, torch.tensor([0.1, 1.0, 5.0]))    # per-sample: only the middle one is guided
    assert torch.allclose(mixed[1], guided[1]) and torch.allclose(mixed[0], 2 * x[0])
    assert torch.allclose(mixed[2], 2 * x[2])
    with pytest.raises(ValueError, match="interval"):
        CFGDenoiser(denoiser, cond, uncond, 3.0, interval=(2.0, 1.0))


def test_autoguidance_adds_the_difference_to_a_weaker_denoiser_of_the_same_condition():
    def denoiser(x, sigma, ctx):
        return x * ctx.view(-1, 1, 1, 1)

    x, sigma = torch.randn(3, 1, 4, 4), torch.ones(3)
    cond, uncond = {"ctx": torch.full((3,), 2.0)}, {"ctx": torch.full((3,), 0.5)}
    guide_calls = []

    def guide(y, s):                                # D_g = 1.5 x: the "bad" model
        guide_calls.append(y.shape[0])
        return 1.5 * y

    pure = CFGDenoiser(denoiser, cond, uncond, 1.0, guide=guide, guide_scale=3.0)(x, sigma)
    assert torch.allclose(pure, 1.5 * x + 3.0 * (2.0 * x - 1.5 * x))      # EDM2: D_g + w (D_c - D_g)
    both = CFGDenoiser(denoiser, cond, uncond, 3.0, guide=guide, guide_scale=2.0)(x, sigma)
    assert torch.allclose(both, 0.5 * x + 3.0 * (2.0 * x - 0.5 * x) + 1.0 * (2.0 * x - 1.5 * x))
    assert guide_calls == [3, 3]
    # weight 1, or the guide equal to the model, is plain CFG bit for bit, and weight 1 never calls the guide
    plain = CFGDenoiser(denoiser, cond, uncond, 3.0)(x, sigma)
    assert torch.equal(CFGDenoiser(denoiser, cond, uncond, 3.0, guide=guide, guide_scale=1.0)(x, sigma), plain)
    assert guide_calls == [3, 3]
    same = CFGDenoiser(denoiser, cond, uncond, 3.0, guide=lambda y, s: 2.0 * y, guide_scale=2.5)(x, sigma)
    assert torch.equal(same, plain)
    # outside the CFG interval only autoguidance applies
    outside = CFGDenoiser(denoiser, cond, uncond, 3.0, interval=(0.5, 2.0), guide=guide, guide_scale=3.0)
    assert torch.allclose(outside(x, torch.full((3,), 5.0)), 1.5 * x + 3.0 * (2.0 * x - 1.5 * x))


def test_plans_reject_a_stage_entered_above_its_range():
    ident = lambda x, s: x  # noqa: E731
    lo = Stage(ident, LaplacianSchedule(), 0.002, 80.0, 4)
    hi = Stage(ident, SCH, 0.002, 0.5, 4, factor=2)                 # sigma_max below the band cutoff 1.0
    with pytest.raises(ValueError, match="sigma_max"):
        sample_plan([lo, hi], (1, 1, 8, 8), plan="switch")
    with pytest.raises(ValueError, match="cannot enter"):
        sample_plan([lo, hi], (1, 1, 8, 8), plan="cascade")
    out = sample_plan([lo, Stage(ident, SCH, 0.002, 2.0, 4, factor=2)], (1, 1, 8, 8), plan="switch")
    assert out.shape == (1, 1, 16, 16)
