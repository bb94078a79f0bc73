"""How much of the input noise a trained shapes model leaves inside flat objects, per noise level.

    python benchmarks/noise_kept.py --ckpt runs/quickstart/version_0/checkpoints/final.ckpt   # ~10 s

The inside of a shapes object (the render's mask eroded by 3 pixels) is a flat fill or a smooth shading, so a
good denoiser removes nearly all the noise there once sigma is below the object's contrast. What it leaves, the
sampler integrates into the final image: kept noise at sigma <= 0.3 is the grain of the samples
(:func:`lit_edify.metrics.artifacts.noise_kept`). For each sigma the script prints the kept share and the RMS
error inside the objects in grey levels (0-255), on ``--num`` validation renders with their own captions and
labels. The last line is ``noise_kept: sigma_0.1=<share> sigma_0.03=<share>``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = (0.03, 0.1, 0.2, 0.3, 0.5)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a shapes base checkpoint (e.g. the quickstart's final.ckpt)")
    p.add_argument("--num", type=int, default=128, help="validation renders")
    a = p.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from lit_edify.data_modules.shapes import ShapesDataset
    from lit_edify.metrics.artifacts import noise_kept
    from lit_edify.pipelines.text2image import load_module

    model = load_module(a.ckpt).eval()
    if model.schedule.cutoffs and min(model.schedule.starts) < max(SIGMAS):  # noise_kept assumes x0 + sigma n
        raise SystemExit(f"the model's first band starts at sigma {min(model.schedule.starts)}, below {max(SIGMAS)}")
    res = model.cfg.noise.resolution
    ds = ShapesDataset(a.num, res, split="val", multiple=model.resolution_multiple)
    items = [ds[i] for i in range(a.num)]
    x0 = torch.stack([it["image"] for it in items])
    core = -F.max_pool2d(-torch.stack([it["mask"] for it in items]), 7, 1, 3)  # object mask eroded by 3 px
    with torch.no_grad():
        ctx, mask = model.encode_conditions([it["caption"] for it in items], [it["pitch"] for it in items],
                                            [it["dof"] for it in items], [it["media_type"] for it in items],
                                            drop=False)
    gen = torch.Generator().manual_seed(0)
    out = {}
    for s in SIGMAS:
        n = torch.randn(x0.shape, generator=gen)
        seen = {}  # the denoised batch, kept for the RMS error (one denoiser pass per sigma)

        def denoise(x, sig):
            seen["d"] = model.denoise(x, sig, ctx, mask)
            return seen["d"]

        kept = noise_kept(denoise, x0, core, s, n)
        err = seen["d"] - x0
        w = core.expand_as(err)
        rmse = float(((err**2 * w).sum() / w.sum()).sqrt() * 127.5)
        out[s] = (kept, rmse)
        print(f"sigma {s:<5} noise kept inside objects {kept:6.3f}   RMS error {rmse:5.1f} grey levels "
              f"(input noise {s * 127.5:5.1f})", flush=True)
    print(f"noise_kept: sigma_0.1={out[0.1][0]:.3f} sigma_0.03={out[0.03][0]:.3f}")
    return out


if __name__ == "__main__":
    main()
