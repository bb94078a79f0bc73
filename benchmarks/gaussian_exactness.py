"""Gaussian exactness of the Laplacian samplers (issue: diffusion core).

For x0 ~ N(m, S) on 1x16x16 images (smooth squared-exponential covariance) and the closed-form
posterior-mean denoisers, runs the 2-stage switch plan (8x8 -> 16x16) and the cascade plan with Karras
grids per stage, computes each output covariance exactly (noise basis vectors pushed through the
sampler) and prints the relative Frobenius error at 8/16/32/64 steps per stage and the observed orders.

    python benchmarks/gaussian_exactness.py
"""
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_edify.diffusion.gaussian import GaussianDenoiser, downsampled, plan_output_moments, smooth_gaussian  # noqa: E402
from lit_edify.diffusion.laplacian import LaplacianSchedule  # noqa: E402
from lit_edify.diffusion.plans import Stage  # noqa: E402

SIDE, STEPS = 16, (8, 16, 32, 64)


def main() -> None:
    torch.set_num_threads(1)
    m, S = smooth_gaussian(SIDE)
    m0, S0 = downsampled(m, S, SIDE, 2)
    sch = LaplacianSchedule((2,), (1.0,))
    t0 = time.time()
    worst_64 = 0.0
    print(f"{'plan':8s} {'solver':9s} " + " ".join(f"{'cov@' + str(n):>9s}" for n in STEPS)
          + "   order(16->32) order(32->64)  mean_err@64")
    for plan in ("switch", "cascade"):
        for solver in ("ddim", "euler", "dpmpp_2m", "heun"):
            errs = []
            for n in STEPS:
                stages = [Stage(GaussianDenoiser(m0, S0, SIDE // 2, LaplacianSchedule()), LaplacianSchedule(),
                                0.002, 1000.0, n),
                          Stage(GaussianDenoiser(m, S, SIDE, sch), sch, 0.002, 2.0 if plan == "cascade" else 1.0, n,
                                factor=2)]
                mean, cov = plan_output_moments(stages, SIDE // 2, plan, solver)
                errs.append(((cov - S).norm() / S.norm()).item())
            mean_err = (mean - m).abs().max().item()
            o1, o2 = math.log2(errs[1] / errs[2]), math.log2(errs[2] / errs[3])
            print(f"{plan:8s} {solver:9s} " + " ".join(f"{e:9.2e}" for e in errs)
                  + f"   {o1:13.2f} {o2:13.2f}  {mean_err:11.1e}")
            if solver == "dpmpp_2m":
                worst_64 = max(worst_64, errs[-1])
    print(f"(wall time {time.time() - t0:.1f}s; stage 0 sigma_max=1000, stage 1 cutoff 1.0, sigma_min 0.002)")
    print(f"gaussian_exactness: worst_cov_err_64_steps={worst_64:.2e}")


if __name__ == "__main__":
    main()
