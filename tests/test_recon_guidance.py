"""Reconstruction guidance (lit_edify.diffusion.guidance): exactness at w_r = 0, the gradient, the window, and
the low band moving toward x_low on Gaussian data with the closed-form denoiser."""
import torch

from lit_edify.diffusion.gaussian import GaussianDenoiser, smooth_gaussian
from lit_edify.diffusion.guidance import ReconstructionGuidance, guided_denoise, reconstruction_error
from lit_edify.diffusion.laplacian import LaplacianSchedule, down, forward_process


def _net():
    """A small nonlinear float64 denoiser (random conv + tanh) taking a context kwarg."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 3, 3, 3, generator=g, dtype=torch.float64) * 0.3

    def d(x, sigma, scale=1.0):
        return scale * torch.tanh(torch.nn.functional.conv2d(x, w, padding=1)) + x / (1 + sigma.view(-1, 1, 1, 1))

    return d


def test_zero_weight_is_the_unguided_denoiser_bit_for_bit():
    d = _net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    s = torch.tensor([0.7, 0.3], dtype=torch.float64)
    low = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out = ReconstructionGuidance(d, 2, 0.0)(x, s, x_low=low, scale=0.5)
    assert torch.equal(out, d(x, s, scale=0.5))


def test_correction_is_minus_half_weight_times_gradient_checked_by_finite_differences():
    d, f, w = _net(), 2, 1.7
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s = torch.tensor([0.5], dtype=torch.float64)
    low = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    corr = (d(x, s) - guided_denoise(d, x, s, low, f, w)) / (w / 2)  # = grad_x ||down(D(x)) - x_low||^2
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (0, 1, 3, 5), (0, 2, 7, 7), (0, 1, 4, 2)]:
        e = torch.zeros_like(x)
        e[idx] = eps
        fd = (reconstruction_error(d(x + e, s), low, f) - reconstruction_error(d(x - e, s), low, f)) / (2 * eps)
        torch.testing.assert_close(corr[idx], fd[0], rtol=1e-6, atol=1e-8)


def test_sigma_window_guides_only_inside():
    d = _net()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    s = torch.tensor([0.05, 0.5, 5.0], dtype=torch.float64)
    low = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    out = ReconstructionGuidance(d, 2, 2.0, window=(0.1, 1.0))(x, s, x_low=low)
    ref = d(x, s)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[2], ref[2])
    assert (out[1] - ref[1]).abs().max() > 1e-3
    all_outside = ReconstructionGuidance(d, 2, 2.0, window=(10.0, 20.0))(x, s, x_low=low)
    assert torch.equal(all_outside, ref)


def test_gaussian_low_band_moves_toward_x_low_as_weight_grows():
    side, f = 8, 2
    m, S = smooth_gaussian(side)
    sched = LaplacianSchedule((2,), (2.0,), (0.25,))
    den = GaussianDenoiser(m, S, side, sched)
    g = torch.Generator().manual_seed(3)
    x0 = m + (torch.linalg.cholesky(S) @ torch.randn(side * side, 4, dtype=torch.float64, generator=g)).T
    x0 = x0.reshape(4, 1, side, side)
    x_low = down(x0, f)
    for sigma in (0.3, 1.0, 3.0):
        s = torch.full((4,), sigma, dtype=torch.float64)
        x = forward_process(x0, s, sched, generator=g)
        errs = [reconstruction_error(ReconstructionGuidance(den, f, w)(x, s, x_low=x_low), x_low, f)
                for w in (0.0, 1.0, 3.0)]
        assert bool((errs[1] < errs[0]).all()) and bool((errs[2] < errs[1]).all()), (sigma, errs)
