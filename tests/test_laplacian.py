"""Exact identities of the Laplacian decomposition, attenuation schedule, forward process and switch."""
import math

import pytest
import torch

from lit_edify.diffusion.laplacian import (
    LaplacianSchedule, decompose, down, forward_process, mu, reconstruct, switch_resolution, up,
)

torch.manual_seed(0)


@pytest.mark.parametrize("factors,shape", [((2,), (2, 3, 16, 24)), ((2, 2), (1, 3, 32, 16)),
                                           ((4,), (2, 1, 16, 32)), ((2, 4), (1, 2, 64, 40))])
def test_decomposition_reconstructs_and_bands_are_orthogonal(factors, shape):
    x = torch.randn(shape, dtype=torch.float64)
    bands = decompose(x, factors)
    assert len(bands) == len(factors) + 1
    side = 1
    for band, f in zip(bands, (1, *factors)):
        side *= f
        assert band.shape[-2:] == (shape[-2] // side, shape[-1] // side)
    assert (reconstruct(bands, factors) - x).abs().max() < 1e-6
    # lift every band to full resolution and check pairwise orthogonality
    full = []
    for k in range(len(bands)):
        only = [b if j == k else torch.zeros_like(b) for j, b in enumerate(bands)]
        full.append(reconstruct(only, factors))
    for i in range(len(full)):
        for j in range(i + 1, len(full)):
            assert abs((full[i] * full[j]).sum().item()) < 1e-9 * x.numel()


def test_three_level_decomposition_is_eq3():
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    x1, x2, x3 = decompose(x, (2, 2))
    assert torch.allclose(x3, down(down(x, 2), 2))                   # Eq. 3a
    assert torch.allclose(x2, down(x, 2) - up(x3, 2))                # Eq. 3b
    assert torch.allclose(x1, x - up(down(x, 2), 2))                 # Eq. 3c
    assert torch.allclose(x1 + up(x2, 2) + up(up(x3, 2), 2), x)


def test_up_down_projection_is_orthogonal():
    x, y = torch.randn(2, 1, 1, 8, 12, dtype=torch.float64)
    P = lambda t: up(down(t, 2), 2)  # noqa: E731
    assert torch.allclose(P(P(x)), P(x))                             # idempotent
    assert torch.allclose((P(x) * y).sum(), (x * P(y)).sum())        # self-adjoint
    # Eq. 11: 2x2 average pooling of N(0,1) noise has std 1/2
    assert abs(down(torch.randn(1, 1, 512, 512), 2).std().item() - 0.5) < 0.01


@pytest.mark.parametrize("shape_name", ["cosine", "linear"])
def test_schedule_limits_monotone_and_derivative(shape_name):
    sch = LaplacianSchedule((2, 2), (0.5, 4.0), shape=shape_name)
    sig = torch.logspace(-3, 2, 2001, dtype=torch.float64)
    a_fine, a_mid, a_coarse = sch.alphas(sig)
    assert torch.all(a_coarse == 1)
    for a, start, cut in [(a_fine, 0.5 / 8, 0.5), (a_mid, 0.5, 4.0)]:
        assert torch.all(a[sig <= start] == 1) and torch.all(a[sig >= cut] == 0)
        assert torch.all(a[1:] <= a[:-1])                            # non-increasing in sigma
    assert torch.all(a_fine <= a_mid)                                # finer band decays first
    # value halfway (in log sigma) between start and cutoff, and a quarter of the way
    start, cut = 0.5 / 8, 0.5
    q = torch.tensor([math.exp(math.log(start) + 0.25 * math.log(cut / start))], dtype=torch.float64)
    expected = 0.5 * (1 + math.cos(math.pi / 4)) if shape_name == "cosine" else 0.75
    assert abs(sch.alphas(q)[0].item() - expected) < 1e-12
    # analytic derivative against central differences
    s = torch.linspace(0.07, 3.9, 97, dtype=torch.float64)
    h = 1e-6
    for a_p, a_m, da in zip(sch.alphas(s + h), sch.alphas(s - h), sch.dalphas(s)):
        assert torch.allclose((a_p - a_m) / (2 * h), da, atol=1e-6)


def test_schedule_rejects_bad_cutoffs():
    with pytest.raises(ValueError, match="smaller cutoffs"):
        LaplacianSchedule((2, 2), (4.0, 0.5))
    with pytest.raises(ValueError, match="one cutoff"):
        LaplacianSchedule((2,), (1.0, 2.0))


def test_mu_limits_and_forward_statistics():
    sch = LaplacianSchedule((2,), (1.0,))
    x0 = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert torch.allclose(mu(x0, torch.tensor([0.01, 0.1]), sch), x0)        # alpha = 1 below start
    assert torch.allclose(mu(x0, torch.tensor([1.0, 5.0]), sch), up(down(x0, 2), 2))  # fine band gone
    mid = torch.tensor([0.4, 0.4], dtype=torch.float64)
    a = sch.alphas(mid)[0][0]
    fine = x0 - up(down(x0, 2), 2)
    assert torch.allclose(mu(x0, mid, sch), up(down(x0, 2), 2) + a * fine)   # Eq. 4
    x0 = torch.zeros(1, 1, 256, 256, dtype=torch.float64)
    x = forward_process(x0, torch.tensor([0.7], dtype=torch.float64), sch)
    assert abs(x.std().item() - 0.7) < 0.01                                   # Eq. 5 noise level


@pytest.mark.parametrize("f", [2, 4])
def test_resolution_switch_is_exact(f):
    g = torch.Generator().manual_seed(1)
    sigma = 0.8
    clean = torch.randn(64, 1, 16, 16, generator=g, dtype=torch.float64)
    x_r = clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    x_R, sigma_R = switch_resolution(x_r, sigma, f, generator=g)
    assert sigma_R == f * sigma
    assert (down(x_R, f) - x_r).abs().max() < 1e-5                            # down(x_R) == x_r
    resid = x_R - up(clean, f)                                                # total noise in x_R (Eq. 10)
    assert abs(resid.std().item() / (f * sigma) - 1) < 0.02
    n = resid / resid.std()
    corr_h = (n[..., :, 1:] * n[..., :, :-1]).mean().item()
    corr_v = (n[..., 1:, :] * n[..., :-1, :]).mean().item()
    assert abs(corr_h) < 0.02 and abs(corr_v) < 0.02                          # iid, not blocky
