"""FID against NFE (8, 16, 32, 64 denoiser evaluations per image) for each solver on one trained tiny model.

    python benchmarks/solver_nfe.py                  # ~15 min on 2 cores after benchmarks/real_data_quality.py

Model: a single-stage Fashion-MNIST checkpoint, by default the one ``benchmarks/real_data_quality.py`` (the
Fashion-MNIST quickstart recipe, trained through LightningCLI) leaves; train one with
``lit-edify quickstart --data fashion-mnist`` if it is missing. A single-stage model keeps the NFE accounting
plain: ``nfe`` steps for ddim / dpmpp_2m / euler, and for Heun ``nfe / 2`` steps, i.e. ``nfe - 1`` evaluations
(its last step, to sigma = 0, is an Euler step).

Every (solver, NFE) pair generates the same ``--num-images`` prompts (class captions of the reference, mixed
classes) with the same seeds and guidance (default: the checkpoint's), scored with FID / KID (TF-Inception)
against ``--num-reference`` real Fashion-MNIST test images and with the caption classifier, through the
quickstart's evaluator and its cache (``runs/.cache/metrics``: the reference features and the classifier are
computed once). With a few hundred generated images FID is biased high (its bias falls roughly like 1/N), so
compare rows with each other, not with published FIDs.

The last line is ``solver_nfe: nfe_within_5pct_of_best=<n>``: the smallest NFE at which some solver's FID is
within 5% of the best FID in the table.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_edify.benchmark import expected_nfe, markdown_table, run_grid  # noqa: E402

OUT = ROOT / "runs" / "solver_nfe"


def steps_for(solver: str, nfe: int) -> int:
    """Solver steps whose evaluation count is ``nfe`` (Heun: ``nfe // 2`` steps = ``nfe - 1`` evaluations)."""
    return max(1, nfe // 2) if solver == "heun" else nfe


def within_5pct(records: list[dict]) -> int:
    """Smallest nominal NFE at which some solver's FID is within 5% of the best FID of all records."""
    best = min(r["fid"] for r in records)
    return min(r["nominal_nfe"] for r in records if r["fid"] <= 1.05 * best)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default=str(ROOT / "runs/real_data_quality_fashion-mnist/version_0/checkpoints/final.ckpt"),
                   help="single-stage Fashion-MNIST model checkpoint (.ckpt / .safetensors)")
    p.add_argument("--nfe", default="8,16,32,64")
    p.add_argument("--solvers", default="ddim,dpmpp_2m,euler,heun")
    p.add_argument("--num-images", type=int, default=200, help="generated images per (solver, NFE)")
    p.add_argument("--num-reference", type=int, default=10000, help="real test images (FID / KID reference)")
    p.add_argument("--guidance", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--data-root", default=str(ROOT / "data"), help="where the quickstart prepares its datasets")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(OUT))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lit_edify.metrics import GeneratorEvaluator
    from lit_edify.pipelines.text2image import load_module
    from lit_edify.quickstart import prepare_data

    a = parse(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    nfes = [int(n) for n in a.nfe.split(",")]
    solvers = a.solvers.split(",")
    ckpt = Path(a.ckpt)
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt} not found: train it with `python benchmarks/real_data_quality.py` or "
                         "`lit-edify quickstart --data fashion-mnist`, or pass --ckpt")
    model = load_module(ckpt).eval()
    if "factor" in model.hparams:
        raise SystemExit(f"{ckpt} is an upsampler; give a single-stage (BaseModel) checkpoint")
    a.guidance = model.cfg.sampling.guidance if a.guidance is None else a.guidance
    source = str(ckpt)
    print(f"model: {source}", flush=True)
    _, test_dir = prepare_data("fashion-mnist", Path(a.data_root))
    evaluator = GeneratorEvaluator(str(test_dir), adherence="classifier", num_reference=a.num_reference,
                                   cache_dir=ROOT / "runs" / ".cache" / "metrics", batch_size=100).prepare()
    order = torch.randperm(len(evaluator.reference_prompts), generator=torch.Generator().manual_seed(0))
    prompts = [dict(evaluator.reference_prompts[int(i)]) for i in order[:a.num_images]]  # mixed classes

    def make_generate(solver: str, steps: int):
        def generate(captions, **kw):
            return model.generate(captions, steps=steps, solver=solver, guidance=a.guidance, **kw)
        return generate

    pairs = [(s, steps_for(s, n)) for s in solvers for n in nfes]
    nominal = {(s, steps_for(s, n)): n for s in solvers for n in nfes}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        records = run_grid(make_generate, evaluator, prompts, pairs, count_modules=[model.net],
                           batch_size=a.batch_size, seed=0, progress=progress,
                           on_record=lambda r: progress.console.print(
                               f"  {r['solver']:9s} steps {r['steps']:3d} NFE {r['nfe']:3d}: FID {r['fid']:.2f}"))
    for r in records:
        r["nominal_nfe"] = nominal[(r["solver"], r["steps"])]
        if r["nfe_measured"] != expected_nfe(r["solver"], r["steps"]):
            raise RuntimeError(f"counted {r['nfe_measured']} U-Net calls per image batch for {r['solver']} "
                               f"{r['steps']} steps, expected {r['nfe']}")
    n_best = within_5pct(records)
    best = min(records, key=lambda r: r["fid"])
    (out / "results.json").write_text(json.dumps({"model": source, "args": vars(a), "records": records,
                                                  "nfe_within_5pct_of_best": n_best}, indent=1, default=float))
    pivot = ["| solver | " + " | ".join(f"FID @ NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for s in solvers:
        row = {r["nominal_nfe"]: r["fid"] for r in records if r["solver"] == s}
        pivot.append(f"| {s} | " + " | ".join(f"{row[n]:.2f}" for n in nfes) + " |")
    print(f"\nmodel: {source}")
    print(f"{a.num_images} generated vs {a.num_reference} real Fashion-MNIST test images per FID (biased high at this "
          f"size: compare rows only), guidance {a.guidance}, same prompts and seeds for every row. Heun's NFE is "
          f"the nominal one minus 1.\n")
    print(markdown_table(records) + "\n")
    print("\n".join(pivot) + "\n")
    print(f"best FID {best['fid']:.2f}: {best['solver']} at NFE {best['nfe']}; within 5% of it: "
          + ", ".join(f"{r['solver']}@{r['nfe']}" for r in records if r["fid"] <= 1.05 * best["fid"])
          + f"; total wall time {time.perf_counter() - t0:.0f} s")
    fid_ok = all(math.isfinite(r["fid"]) for r in records)
    print(f"solver_nfe: nfe_within_5pct_of_best={n_best if fid_ok else 'nan'}")
    return {"records": records, "nfe_within_5pct_of_best": n_best}


if __name__ == "__main__":
    main()
