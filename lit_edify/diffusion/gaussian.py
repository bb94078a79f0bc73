"""Closed-form checks of the Laplacian diffusion math on Gaussian data (DESIGN.md, "the exactness test").

For data ``x0 ~ N(m, S)`` the Laplacian forward process is ``x = A(sigma) x0 + sigma eps`` with the
linear map ``A(sigma) = sum_k alpha_k(sigma) P_k`` (Eq. 4-5), so the posterior mean (Eq. 2, the
ideal denoiser) is ``E[x0 | x] = m + S A^T (A S A^T + sigma^2 I)^{-1} (x - A m)``: affine in x.
A deterministic sampler driven by it is then an affine map of all the Gaussian noise it consumes,
and its output covariance can be computed exactly by pushing basis vectors through it.
"""
from __future__ import annotations

import torch

from .laplacian import LaplacianSchedule, down, mu
from .plans import Stage, sample_plan

Tensor = torch.Tensor


def smooth_gaussian(side: int, length: float = 2.0, var: float = 0.25, nugget: float = 0.01,
                    dtype=torch.float64) -> tuple[Tensor, Tensor]:
    """A non-diagonal Gaussian on 1 x side x side images: smooth mean and squared-exponential covariance.

    Returns (m (side*side,), S (side*side, side*side)).
    """
    ii, jj = torch.meshgrid(torch.arange(side, dtype=dtype), torch.arange(side, dtype=dtype), indexing="ij")
    p = torch.stack([ii.flatten(), jj.flatten()], 1)
    S = var * torch.exp(-torch.cdist(p, p) ** 2 / (2 * length**2)) + nugget * torch.eye(side * side, dtype=dtype)
    m = 0.3 * torch.sin(p[:, 0] / side * 3.1) - 0.2 * torch.cos(p[:, 1] / side * 2.3)
    return m, S


def operator_matrix(fn, side: int, dtype=torch.float64) -> Tensor:
    """Matrix M with ``fn(x).flatten() == M @ x.flatten()`` for a linear map on (1, side, side) images."""
    n = side * side
    basis = torch.eye(n, dtype=dtype).view(n, 1, side, side)
    return fn(basis).reshape(n, -1).T


class GaussianDenoiser:
    """The exact posterior-mean denoiser E[x0 | x] for x0 ~ N(m, S) under a Laplacian schedule.

    Call as ``denoiser(x, sigma)`` with x (B, 1, side, side) and sigma (B,) (all equal).
    """

    def __init__(self, m: Tensor, S: Tensor, side: int, schedule: LaplacianSchedule):
        self.m, self.S, self.side, self.schedule = m, S, side, schedule

    def __call__(self, x: Tensor, sigma: Tensor, **_) -> Tensor:
        s = sigma.reshape(-1)[:1].to(self.S.dtype)
        A = operator_matrix(lambda b: mu(b, s.expand(b.shape[0]), self.schedule), self.side)
        cov_x = A @ self.S @ A.T + s**2 * torch.eye(len(self.m), dtype=self.S.dtype)
        resid = x.reshape(x.shape[0], -1).to(self.S.dtype) - (A @ self.m)
        post = self.m + (self.S @ A.T @ torch.linalg.solve(cov_x, resid.T)).T
        return post.to(x.dtype).view_as(x)


def downsampled(m: Tensor, S: Tensor, side: int, f: int) -> tuple[Tensor, Tensor]:
    """Distribution of down(x0, f) when x0 ~ N(m, S): (D m, D S D^T)."""
    D = operator_matrix(lambda b: down(b, f), side)
    return D @ m, D @ S @ D.T


def plan_output_moments(stages: list[Stage], side0: int, plan: str, solver: str) -> tuple[Tensor, Tensor]:
    """Exact mean and covariance of a deterministic plan's output, by pushing noise basis vectors through.

    Every Gaussian draw of the plan (initial noise, switch / restart noise) is one block of the
    input vector z; the output is ``y = M z + b``. Sample 0 of the batch gets z = 0 (giving b) and
    sample 1 + j gets the j-th basis vector (giving column j of M). Returns (b, M M^T).
    """
    sides = [side0]
    for st in stages[1:]:
        sides.append(sides[-1] * st.factor)
    dims = [s * s for s in sides]
    batch = 1 + sum(dims)
    calls = iter(range(len(stages)))

    def noise(shape):
        k = next(calls)
        z = torch.zeros(batch, dims[k], dtype=torch.float64)
        off = 1 + sum(dims[:k])
        z[off:off + dims[k]] = torch.eye(dims[k], dtype=torch.float64)
        return z.view(shape)

    y = sample_plan(stages, (batch, 1, side0, side0), plan=plan, solver=solver, noise=noise,
                    dtype=torch.float64).reshape(batch, -1)
    M = (y[1:] - y[:1]).T
    return y[0], M @ M.T
