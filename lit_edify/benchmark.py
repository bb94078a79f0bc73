"""``lit-edify benchmark``: image quality and sampling cost of one checkpoint at several solvers and step counts.

    lit-edify benchmark --config recipes/tiny/base32.yaml --ckpt runs/quickstart/version_0/checkpoints/last.ckpt \\
        --solvers dpmpp_2m,ddim,heun,euler --steps 8,16,32 --num-images 256 --out runs/benchmark

The recipe is parsed like ``lit-edify fit`` parses it (several ``--config`` compose, and ``--data.*`` /
``--model.*`` overrides may follow), but only its DataModule is built: its val (or ``--split test``)
dataloader gives the reference images for FID / KID and the prompts. For every (solver, steps) pair the
command generates ``--num-images`` images with fixed prompts and seeds and records

* ``nfe``: denoiser evaluations per image, ``steps * nfe_per_step(solver)`` minus one for Heun (its last
  step, to sigma = 0, is an Euler step); ``nfe_measured`` counts the U-Net calls (one per evaluation:
  classifier-free guidance batches the conditional and unconditional halves),
* ``sec_per_image``: wall seconds of sampling per image (generation only, not scoring),
* ``fid``, ``kid_mean``, ``kid_std`` and prompt adherence: the shapes judge (``adherence/<attr>``) for
  ``ShapesDataModule``, a caption classifier (``classifier_accuracy``) for class-captioned data (few
  distinct captions, each on several images).

It writes ``benchmark.json`` and ``benchmark.md`` (a markdown table) into ``--out`` and prints the table,
then the best FID last. :func:`run_grid` and :func:`markdown_table` are reused by ``benchmarks/``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from lit_edify.commands.argtypes import ArgumentParser
from lit_edify.diffusion.samplers import SOLVERS, nfe_per_step
from lit_edify.io import write_text_atomic

__all__ = ["count_calls", "expected_nfe", "main", "markdown_table", "run_grid", "spread_prompts"]

#: metric keys shown in the markdown table, in this order, when present in the records
TABLE_METRICS = ("fid", "kid_mean", "classifier_accuracy", "adherence/all", "adherence/color", "adherence/shape",
                 "adherence/background", "clip_score")


def run_in_child(label: str, target: Callable, *args, start_method: str = "spawn", **kwargs) -> dict:
    """``target(queue, *args, **kwargs)`` in a fresh process (its own threads, memory and torch state, so runs
    timed one after another do not share caches or peak-memory counters) -> the dict it puts on the queue. A
    dict with an ``"error"`` key ends the benchmark with ``SystemExit("<label> failed: <error>")``.
    ``start_method="fork"`` shares the parent's imports (CPU only: CUDA cannot be used after a fork)."""
    import multiprocessing as mp

    ctx = mp.get_context(start_method)
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue, *args), kwargs=kwargs)
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise SystemExit(f"{label} failed: {result['error']}")
    return result


def fit_recipe(args: list[str], run: Path, minutes: float, max_steps: int | None = None) -> tuple:
    """Train through the suite's LightningCLI (``args``: recipe and overrides) into ``run`` for at most ``minutes``
    (and ``max_steps``), without a progress bar; save ``run/final.ckpt`` (EMA weights as ``state_dict`` when the
    recipe has the EMA callback). Returns (the LightningCLI, training seconds, checkpoint path)."""
    import sys

    from lit_edify.commands.fit import build_cli, max_time_arg

    args = [*args, "--trainer.max_time", max_time_arg(minutes),
            "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run),
            "--trainer.enable_progress_bar", "false"]
    if max_steps is not None:
        args += ["--trainer.max_steps", str(max_steps)]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both args and a command line are given
    try:
        cli = build_cli(args, run=False)
    finally:
        sys.argv = argv
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - t0
    ckpt = run / "final.ckpt"
    cli.trainer.save_checkpoint(ckpt, weights_only=False)  # the full checkpoint, said (Lightning logs it otherwise)
    return cli, seconds, ckpt


def expected_nfe(solver: str, steps: int) -> int:
    """Denoiser evaluations per image of a full single-stage run: steps x nfe_per_step, minus one for Heun
    (its step to sigma = 0 is first order)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps * nfe_per_step(solver) - (1 if solver == "heun" else 0)


@contextmanager
def count_calls(modules: Sequence[torch.nn.Module]):
    """Count forward calls of ``modules`` (all together) while the context is open: yields a one-item list."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def run_grid(make_generate: Callable[[str, int], Callable], evaluator, prompts: list, pairs: Sequence[tuple[str, int]],
             *, nfe_of: Callable[[str, int], int] = expected_nfe, count_modules: Sequence[torch.nn.Module] = (),
             batch_size: int = 32, seed: int = 0, progress=None, on_record: Callable | None = None) -> list[dict]:
    """Generate and score one image set per (solver, steps) pair.

    Args:
        make_generate: ``(solver, steps) -> generate_fn`` with the signature of
            ``LaplacianDiffusionMixin.generate`` (captions, aspect=, seed=, pitch=, ...) -> (N, 3, H, W) in [-1, 1].
        evaluator: a :class:`lit_edify.metrics.GeneratorEvaluator` (FID / KID / adherence).
        prompts: the prompts (str or dicts, see ``lit_edify.metrics.evaluate``), the same for every pair.
        nfe_of: ``(solver, steps) -> nominal NFE`` recorded as ``nfe``.
        count_modules: networks whose forward calls are one denoiser evaluation each (``nfe_measured``).
        progress: an open ``rich.progress.Progress`` (or None).
        on_record: called with each record as soon as it is scored.
    One untimed warm-up batch (the first prompts, first pair) runs before the grid.
    Returns:
        one dict per pair: solver, steps, nfe, nfe_measured, sec_per_image, and the evaluator's metrics.
    """
    from lit_edify.metrics.evaluate import generate_batches

    records = []
    if pairs:  # warm-up (allocator, kernels, text-encoder cache) so the first row's timing is not inflated
        first = [p if isinstance(p, str) else p["caption"] for p in prompts[: min(batch_size, len(prompts))]]
        make_generate(*pairs[0])(first, seed=seed)
    outer = progress.add_task("benchmark", total=len(pairs)) if progress else None
    inner = progress.add_task("images", total=len(prompts)) if progress else None
    for solver, steps in pairs:
        if progress:
            progress.reset(inner, total=len(prompts), description=f"{solver} {steps} steps: sampling")
        generate = make_generate(solver, steps)

        def tracked(captions, generate=generate, **kw):
            images = generate(captions, **kw)
            if progress:
                progress.advance(inner, len(captions))
            return images

        with count_calls(count_modules) as calls:
            t0 = time.perf_counter()
            batches = generate_batches(tracked, prompts, batch_size=batch_size, seed=seed)
            seconds = time.perf_counter() - t0
        if progress:
            progress.update(inner, description=f"{solver} {steps} steps: scoring")
        metrics = evaluator.score_batches(batches, prompts)
        rec = {"solver": solver, "steps": int(steps), "nfe": int(nfe_of(solver, steps)),
               "nfe_measured": calls[0] / len(batches) if count_modules else None,
               "sec_per_image": seconds / len(prompts), **metrics}
        records.append(rec)
        if on_record:
            on_record(rec)
        if progress:
            progress.advance(outer)
    return records


def _fmt(key: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if key == "kid_mean":
        return f"{1e3 * value:.2f}"
    if key == "sec_per_image":
        return f"{value:.4f}"
    if key.startswith("adherence/") or key == "classifier_accuracy":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.2f}" if not value.is_integer() else str(int(value))
    return str(value)


def markdown_table(records: list[dict], first: Sequence[str] = ("solver", "steps", "nfe", "sec_per_image"),
                   metrics: Sequence[str] = TABLE_METRICS) -> str:
    """A markdown table of records: the ``first`` columns, then every metric of ``metrics`` that some
    record has (KID shown x 1e3, adherence / accuracy in percent)."""
    names = {"sec_per_image": "s / image", "kid_mean": "KID x1e3", "nfe": "NFE", "fid": "FID",
             "classifier_accuracy": "classifier acc.", "clip_score": "CLIP"}
    cols = list(first) + [m for m in metrics if any(m in r for r in records)]
    lines = ["| " + " | ".join(names.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        lines.append("| " + " | ".join(_fmt(c, r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ command
def parse_list(text: str, kind=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"empty list {text!r}")
    return [kind(t) for t in items]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="lit-edify benchmark", description=__doc__.split("\n\n")[0],
        epilog="Unknown --data.* / --model.* / --trainer.* options go to the recipe parser (as for `lit-edify fit`).")
    p.add_argument("--config", action="append", required=True, help="recipe YAML (repeat to compose, as for fit)")
    p.add_argument("--ckpt", required=True, help="checkpoint (.ckpt or exported .safetensors) of a single-stage "
                   "model (BaseModel) to benchmark")
    p.add_argument("--solvers", type=lambda s: parse_list(s), default=["dpmpp_2m", "ddim", "heun", "euler"])
    p.add_argument("--steps", type=lambda s: parse_list(s, int), default=[8, 16, 32])
    p.add_argument("--num-images", type=int, default=256, help="generated images per (solver, steps)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    p.add_argument("--split", choices=("val", "test"), default="val", help="reference split of the DataModule")
    p.add_argument("--num-reference", type=int, default=None, help="use at most this many reference images")
    p.add_argument("--fid", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--kid", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--adherence", choices=("auto", "none", "shapes", "classifier"), default="auto",
                   help="auto: shapes judge for ShapesDataModule, classifier for class-captioned data, else none")
    p.add_argument("--batch-size", type=int, default=32, help="images per generate call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="reference features / classifier cache (default: the metrics')")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/benchmark")
    return p


def recipe_datamodule(configs: Sequence[str], overrides: Sequence[str] = ()):
    """The DataModule of a recipe, parsed by the suite's LightningCLI (same composition and overrides as
    ``lit-edify fit``); the model and trainer sections are validated but not built."""
    import lightning as L
    from lightning.pytorch.cli import LightningCLI, instantiate_class

    class RecipeData(LightningCLI):
        def instantiate_classes(self) -> None:
            data = self.config.get("data")
            if data is None:
                raise ValueError(f"the recipe {list(configs)} has no data section: compose it with a data recipe, "
                                 "e.g. --config recipes/tiny/base32.yaml --config recipes/tiny/fashion_mnist.yaml")
            self.datamodule = instantiate_class((), data.as_dict() if hasattr(data, "as_dict") else dict(data))
            self.model = self.trainer = None

    args = [a for c in configs for a in ("--config", str(c))] + list(overrides)
    cli = RecipeData(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     auto_configure_optimizers=False, save_config_callback=None, args=args, run=False)
    return cli.datamodule


def reference_loader(dm, split: str):
    """The DataModule's ``<split>_dataloader()``; a clear error when the split is missing or empty."""
    dm.prepare_data()
    dm.setup("validate" if split == "val" else "test")
    try:
        loader = getattr(dm, f"{split}_dataloader")()
    except Exception as err:  # Lightning raises for an unimplemented hook
        raise ValueError(f"{type(dm).__name__} has no usable {split} dataloader ({err}); try --split "
                         f"{'test' if split == 'val' else 'val'}") from err
    if loader is None or (isinstance(loader, (list, tuple)) and not loader):
        raise ValueError(f"{type(dm).__name__} has an empty {split} split: give it one (e.g. "
                         "--data.init_args.val_fraction 0.05 for an image folder)")
    return loader


def pick_adherence(mode: str, dm, captions: list[str]) -> str | None:
    """Resolve ``--adherence auto``: "shapes" for the shapes data, "classifier" when 2..200 distinct captions each
    label several images (class captions), else None."""
    if mode != "auto":
        return None if mode == "none" else mode
    from lit_edify.data_modules.shapes import ShapesDataModule

    if isinstance(dm, ShapesDataModule):
        return "shapes"
    distinct = len(set(captions))
    return "classifier" if 2 <= distinct <= 200 and distinct * 2 <= len(captions) else None


def spread_prompts(reference_prompts: list[dict], n: int) -> list[dict]:
    """``n`` prompts taken evenly over the reference's (a loader sorted by class then gives every class its
    share when ``n`` is smaller than the reference), cycled when ``n`` is larger."""
    m = len(reference_prompts)
    if m == 0:
        raise ValueError("the reference set has no prompts")
    return [dict(reference_prompts[(i * m) // n if n <= m else i % m]) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    """``lit-edify benchmark``; returns the exit code."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lit_edify.metrics import GeneratorEvaluator
    from lit_edify.metrics.fid import DEFAULT_CACHE_DIR, iter_reference_batches
    from lit_edify.pipelines.text2image import load_module

    a, overrides = build_parser().parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-") and not o.startswith(("--data", "--model", "--trainer",
                                                                          "--seed_everything"))]
    if bad:
        raise SystemExit(f"lit-edify benchmark: unknown options {bad} (see --help)")
    for s in a.solvers:
        if s not in SOLVERS:
            raise SystemExit(f"lit-edify benchmark: unknown solver {s!r}; choose from {sorted(SOLVERS)}")
    if a.num_images < 2 or any(s < 1 for s in a.steps):
        raise SystemExit("lit-edify benchmark: --num-images must be >= 2 and every --steps value >= 1")
    model = load_module(a.ckpt, a.device)
    if not hasattr(model, "generate") or "factor" in model.hparams:
        raise SystemExit(f"lit-edify benchmark: {a.ckpt} is a {type(model).__name__}; benchmark a single-stage "
                         "model (BaseModel) checkpoint")
    dm = recipe_datamodule(a.config, overrides)
    loader = reference_loader(dm, a.split)
    first = next(iter_reference_batches(loader, 1))
    aspect = (first.get("aspect") or ["1:1"])[0]
    if tuple(first["image"].shape[-2:]) != tuple(model.image_shape(aspect)):
        raise SystemExit(f"lit-edify benchmark: {aspect} reference images are {tuple(first['image'].shape[-2:])} px "
                         f"but the model generates {tuple(model.image_shape(aspect))}: match the recipe's data "
                         "resolution to the model (e.g. --data.init_args.resolution)")
    captions = [c for b in iter_reference_batches(loader, a.num_reference) for c in b["caption"]]
    adherence = pick_adherence(a.adherence, dm, captions)
    evaluator = GeneratorEvaluator(loader, fid=a.fid, kid=a.kid, adherence=adherence, num_reference=a.num_reference,
                                   cache_dir=a.cache_dir or DEFAULT_CACHE_DIR, seed=a.seed, device=a.device)
    evaluator.prepare()
    if adherence == "shapes":
        from lit_edify.data_modules.shapes import evaluation_prompts

        prompts = evaluation_prompts(n=a.num_images, seed=a.seed, split="test")
    else:
        prompts = spread_prompts(evaluator.reference_prompts, a.num_images)

    def make_generate(solver: str, steps: int):
        def generate(caps, **kw):
            return model.generate(caps, steps=steps, solver=solver, guidance=a.guidance, **kw)
        return generate

    pairs = [(s, n) for s in a.solvers for n in a.steps]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:
        records = run_grid(make_generate, evaluator, prompts, pairs, count_modules=[model.net],
                           batch_size=a.batch_size, seed=a.seed, progress=progress)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    guidance = model.cfg.sampling.guidance if a.guidance is None else a.guidance
    report = {"ckpt": str(a.ckpt), "config": list(a.config), "overrides": overrides, "split": a.split,
              "num_images": a.num_images, "num_reference": len(evaluator.reference_captions),
              "guidance": guidance, "adherence": adherence, "seed": a.seed, "device": a.device,
              "records": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                          for r in records]}
    write_text_atomic(out / "benchmark.json", json.dumps(report, indent=1))
    table = markdown_table(records)
    header = (f"Benchmark of {a.ckpt}: {a.num_images} images per row, {report['num_reference']} reference images "
              f"({a.split} split), guidance {guidance}, adherence {adherence or 'none'}.")
    write_text_atomic(out / "benchmark.md", header + "\n\n" + table + "\n")
    print(header + "\n\n" + table + "\n")
    print(f"wrote {out / 'benchmark.json'} and {out / 'benchmark.md'}")
    scored = [r for r in records if r.get("fid") is not None and math.isfinite(r["fid"])]
    if scored:
        best = min(scored, key=lambda r: r["fid"])
        print(f"benchmark: best_fid={best['fid']:.2f} solver={best['solver']} steps={best['steps']} nfe={best['nfe']}")
    else:
        fastest = min(records, key=lambda r: r["sec_per_image"])
        print(f"benchmark: fastest sec_per_image={fastest['sec_per_image']:.4f} solver={fastest['solver']} "
              f"steps={fastest['steps']} nfe={fastest['nfe']}")
    return 0
