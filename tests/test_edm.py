"""EDM preconditioning, truncated log-normal noise levels and the weighted loss (Eq. 1)."""
import math

import torch

from lit_edify.diffusion.edm import denoising_loss, edm_scalings, loss_weight, precondition, sample_sigmas
from lit_edify.diffusion.laplacian import LaplacianSchedule


def test_scalings_give_unit_variance_input_and_target():
    sd = 0.5
    g = torch.Generator().manual_seed(0)
    for s in [0.01, 0.5, 3.0, 80.0]:
        sigma = torch.tensor([s])
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, sd)
        x0 = sd * torch.randn(200_000, generator=g)
        x = x0 + s * torch.randn(200_000, generator=g)
        assert abs((c_in * x).std().item() - 1) < 0.01                   # network input has unit variance
        target = (x0 - c_skip * x) / c_out
        assert abs(target.std().item() - 1) < 0.01                       # network target has unit variance
        assert torch.allclose(c_noise, torch.log(sigma) / 4)
        assert torch.allclose(loss_weight(sigma, sd), 1 / c_out**2)


def test_precondition_composes_skip_and_network():
    sd, sigma = 0.5, torch.tensor([2.0, 0.1])
    x = torch.randn(2, 3, 4, 4)
    net = lambda x_in, c_noise: torch.ones_like(x_in) * c_noise.view(-1, 1, 1, 1)  # noqa: E731
    c_skip, c_out, _, c_noise = edm_scalings(sigma, sd)
    expected = c_skip.view(-1, 1, 1, 1) * x + c_out.view(-1, 1, 1, 1) * c_noise.view(-1, 1, 1, 1)
    assert torch.allclose(precondition(net, x, sigma, sd), expected)


def test_truncated_lognormal_sigmas():
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(100_000, -1.2, 1.2, 0.002, 80.0, generator=g)
    assert s.min() >= 0.002 and s.max() <= 80.0
    assert abs(s.log().mean().item() + 1.2) < 3 * 1.2 / math.sqrt(1e5) + 2e-3
    # truncated: mass of the normal between the limits, compared with a narrow window
    s = sample_sigmas(100_000, 0.0, 1.0, 0.5, 2.0, generator=g)
    assert s.min() >= 0.5 and s.max() <= 2.0
    normal = torch.distributions.Normal(0.0, 1.0)
    lo, hi = normal.cdf(torch.tensor(math.log(0.5))), normal.cdf(torch.tensor(math.log(2.0)))
    frac_below_1 = (normal.cdf(torch.tensor(0.0)) - lo) / (hi - lo)
    assert abs((s < 1).float().mean().item() - frac_below_1.item()) < 0.01


def test_ideal_denoiser_has_unit_weighted_loss():
    # x0 ~ N(0, sd^2 I): the posterior mean is c_skip * x and the EDM-weighted MSE is exactly 1.
    sd = 0.5
    g = torch.Generator().manual_seed(0)
    x0 = sd * torch.randn(4, 1, 64, 64, generator=g)
    sigma = torch.tensor([0.05, 0.5, 2.0, 20.0])
    ideal = lambda x, s: edm_scalings(s, sd)[0].view(-1, 1, 1, 1) * x  # noqa: E731
    loss = denoising_loss(ideal, x0, sigma, LaplacianSchedule(), sd)
    assert loss.shape == (4,)
    assert torch.allclose(loss, torch.ones(4), atol=0.06)


def test_pixel_weighted_loss_is_the_weighted_mean_of_the_squared_error():
    """A constant weight gives the plain loss bit for bit in value; an indicator weight gives lambda(sigma) times the
    mean squared error over the selected pixels only (all channels); weights w and 2 w give the same loss."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    sigma = torch.tensor([0.1, 1.0, 10.0])
    noise = torch.randn(x0.shape, generator=g)
    den = lambda x, s: 0.5 * x  # noqa: E731  (any fixed denoiser)
    sched, sd = LaplacianSchedule(), 0.5
    plain = denoising_loss(den, x0, sigma, sched, sd, noise=noise)
    const = denoising_loss(den, x0, sigma, sched, sd, noise=noise, pixel_weight=torch.full((3, 1, 8, 8), 3.0))
    torch.testing.assert_close(const, plain, rtol=1e-6, atol=0)
    sel = torch.zeros(3, 1, 8, 8)
    sel[:, :, 2:5, 1:7] = 1
    masked = denoising_loss(den, x0, sigma, sched, sd, noise=noise, pixel_weight=sel)
    from lit_edify.diffusion.laplacian import forward_process

    sq = (den(forward_process(x0, sigma, sched, noise=noise), sigma) - x0).square()[:, :, 2:5, 1:7]
    torch.testing.assert_close(masked, loss_weight(sigma, sd) * sq.flatten(1).mean(1))
    assert not torch.allclose(masked, plain)
    w = 1 + 3 * sel
    torch.testing.assert_close(denoising_loss(den, x0, sigma, sched, sd, noise=noise, pixel_weight=2 * w),
                               denoising_loss(den, x0, sigma, sched, sd, noise=noise, pixel_weight=w))


def test_uncertainty_weighting_is_minimised_at_the_log_of_the_loss():
    """d/du [L e^-u + u] = 0 at u = ln L, where the weighted loss is 1 + ln L; a fresh LossLogvar (u = 0) leaves
    the loss unchanged exactly."""
    from lit_edify.diffusion.edm import LossLogvar, uncertainty_weighted

    L = torch.tensor([0.01, 0.3, 2.0, 50.0], dtype=torch.float64)
    u = L.log().clone().requires_grad_(True)
    w = uncertainty_weighted(L, u)
    w.sum().backward()
    torch.testing.assert_close(u.grad, torch.zeros_like(L), atol=1e-12, rtol=0)
    torch.testing.assert_close(w.detach(), 1 + L.log())
    sigma = torch.tensor([0.002, 0.1, 1.0, 80.0])
    fresh = LossLogvar()(sigma)
    assert torch.equal(fresh, torch.zeros(4))
    loss = torch.tensor([0.5, 1.5, 0.2, 3.0])
    assert torch.equal(uncertainty_weighted(loss, fresh), loss)


def test_loss_logvar_learns_the_log_of_a_per_sigma_loss():
    """Trained on a noise-free per-sigma loss L(sigma) = 0.3 sigma^-0.5 (EDM's log-normal sigmas), u(sigma) reaches
    ln L(sigma) across the trained range."""
    from lit_edify.diffusion.edm import LossLogvar, uncertainty_weighted

    torch.manual_seed(0)
    logvar = LossLogvar()
    opt = torch.optim.Adam(logvar.parameters(), lr=3e-2)
    for _ in range(600):
        sigma = sample_sigmas(256, -1.2, 1.2, 0.002, 80.0)
        loss = 0.3 * sigma**-0.5
        opt.zero_grad()
        uncertainty_weighted(loss, logvar(sigma)).mean().backward()
        opt.step()
    grid = torch.tensor([0.03, 0.1, 0.3, 1.0, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(logvar(grid), (0.3 * grid**-0.5).log(), atol=0.05, rtol=0)
