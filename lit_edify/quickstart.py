"""``lit-edify quickstart``: train a tiny model for a fixed number of steps, then sample and score it.

    lit-edify quickstart                         # built-in shapes, 2500 steps (12 min on a slow 2-core machine)
    lit-edify quickstart --data fashion-mnist    # Fashion-MNIST 32 px (Debian dataset-fashion-mnist), FID/KID
    lit-edify quickstart --data tuxpaint         # Tux Paint stamps (Debian tuxpaint-stamps-default), FID/KID

Training stops on steps, not on a wall-clock budget, so a slower machine gets the same model later rather
than a worse model on time; ``--max-minutes`` is only a safety cap (the report says when it cut training).
After 50 steps the measured speed and the expected remaining time are printed.

Everything goes into ``--out`` (default ``runs/quickstart`` or ``runs/quickstart_<data>``): the Lightning run
(TensorBoard logs, checkpoints, sample grids), ``samples.png``, ``report.json`` and ``report.md``.

* shapes: 64 fixed test prompts + held-out (colour, shape) pairs, read back by the shapes judge (object
  colour, background, shape, pitch, depth of field); ``heldout.png``.
* image folders: ``--num-images`` generated images (captions drawn like the reference's) against the real
  test images: FID / KID (TF-Inception pool3), accuracy of a small classifier trained on real images.

Both also report the artefact statistics of :mod:`lit_edify.metrics.artifacts` (4x4 block-border ratio over
that of real images; colour spread, 0 for greyscale data).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback
from rich.console import Console
from rich.table import Table

from lit_edify.commands.argtypes import ArgumentParser, finite_float, positive_int
from lit_edify.diffusion.samplers import SOLVERS, check_guidance_interval
from lit_edify.io import save_image_atomic, write_text_atomic

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"
#: --data -> (recipes merged in order, default steps, prepare(train_dir, test_dir) or None)
DATASETS = {
    "shapes": ([RECIPES / "base32.yaml"], 2500),
    "fashion-mnist": ([RECIPES / "base32.yaml", RECIPES / "fashion_mnist.yaml"], 7000),
    "tuxpaint": ([RECIPES / "base32.yaml", RECIPES / "tuxpaint.yaml"], 6000),
}
SHAPES_TARGETS = {"color": 0.95, "background": 0.95, "shape": 0.85, "pitch": 0.85, "dof": 0.75}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="lit-edify quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="shapes", choices=sorted(DATASETS))
    p.add_argument("--config", action="append", help="recipe(s) to train instead of the dataset's defaults")
    p.add_argument("--out", default=None, help="output folder (default runs/quickstart[_<data>])")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="training steps (default: 2500 shapes, 7000 Fashion-MNIST, 6000 Tux Paint)")
    p.add_argument("--max-minutes", type=float, default=60.0, help="safety cap on training time")
    p.add_argument("--seed", type=int, default=0, help="training seed (data order, noise, initial weights)")
    p.add_argument("--data-root", default="data", help="where image datasets are prepared")
    p.add_argument("--num-prompts", type=int, default=64, help="shapes: test prompts")
    p.add_argument("--num-images", type=int, default=2000, help="image data: generated images for FID")
    p.add_argument("--num-reference", type=int, default=10000, help="image data: real test images for FID")
    p.add_argument("--classifier-steps", type=int, default=1000, help="image data: training steps of the "
                   "classifier that scores adherence (trained once on the real test images, then cached)")
    p.add_argument("--sample-steps", type=positive_int, default=None, help="sampling steps (default: the recipe's)")
    p.add_argument("--solver", default=None, choices=sorted(SOLVERS), help="sampler (default: the recipe's)")
    p.add_argument("--guidance", type=finite_float, default=None)
    p.add_argument("--autoguidance", type=finite_float, default=None,
                   help="autoguidance weight (1 = off; default: the recipe's; needs a model trained with a guide)")
    p.add_argument("--guidance-interval", type=finite_float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="apply guidance only for sigma in [LO, HI] (default: the recipe's; `0 1000`: at every sigma)")
    p.add_argument("--ckpt", default=None, help="skip training and evaluate this checkpoint (.ckpt/.safetensors)")
    a = p.parse_args(argv)
    try:  # fail before training, not when sampling starts
        check_guidance_interval(a.guidance_interval)
    except ValueError as e:
        p.error(f"--guidance-interval: {e}")
    a.out = Path(a.out or ("runs/quickstart" if a.data == "shapes" else f"runs/quickstart_{a.data}"))
    return a


class EtaPrinter(Callback):
    """Prints the measured speed and the expected remaining training time once, after ``after`` steps."""

    def __init__(self, total_steps: int, after: int = 50):
        self.total, self.after, self._t0 = total_steps, after, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 5:  # skip start-up
            self._t0 = time.perf_counter()
        elif step == 5 + self.after and self._t0 is not None:
            rate = self.after / (time.perf_counter() - self._t0)
            left = (self.total - step) / rate / 60
            print(f"\n{rate:.2f} steps/s: about {left:.0f} min of training left for {self.total} steps", flush=True)


# ----------------------------------------------------------------------------------------------- data
def prepare_data(name: str, root: Path) -> tuple[Path, Path]:
    """Prepare (train folder, test folder) for an image dataset from its Debian package, once."""
    from lit_edify.data_modules.prepare import main as prepare

    train, test = root / name.replace("-", "_"), root / f"{name.replace('-', '_')}_test"
    jobs = [(train, ["--split", "train"]), (test, ["--split", "test"])] if name == "fashion-mnist" else [(train, [])]
    for folder, extra in jobs:
        if not any(folder.rglob("*.png")) if folder.is_dir() else True:
            print(f"preparing {name} {extra[1] if extra else ''} in {folder} (once)", flush=True)
            if prepare([name, "--out", str(folder), *extra]) != 0:
                pkg = "dataset-fashion-mnist" if name == "fashion-mnist" else "tuxpaint-stamps-default"
                raise SystemExit(f"{name} could not be prepared: install it with "
                                 f"`apt-get install -y {pkg}` (Debian) and run again")
    return train, (test if name == "fashion-mnist" else train)


# ----------------------------------------------------------------------------------------------- train
def train(a: argparse.Namespace, configs: list[Path], steps: int, data_root: Path | None):
    from lit_edify.commands.fit import build_cli, max_time_arg

    args = [x for c in configs for x in ("--config", str(c))]
    args += ["--trainer.default_root_dir", str(a.out),  # the recipe logger follows it (SuiteCLI)
             "--trainer.max_steps", str(steps), "--trainer.max_time", max_time_arg(a.max_minutes),
             "--seed_everything", str(a.seed), "--data.init_args.seed", str(a.seed)]
    if data_root is not None:
        args += ["--data.init_args.root", str(data_root)]
    elif a.data == "shapes":  # one epoch = the whole run, so the progress bar's total and ETA are right
        args += ["--data.init_args.train_size", str(steps * 32)]
    argv, sys.argv = sys.argv, sys.argv[:1]  # the fit arguments come from `args`, not the quickstart's own
    try:
        cli = build_cli(args, run=False)
    finally:
        sys.argv = argv
    batch = cli.datamodule.hparams.batch_size
    print(f"training {steps} steps of {batch} images (seed {a.seed}); the speed is printed after 50 steps",
          flush=True)
    cli.trainer.callbacks.append(EtaPrinter(steps))
    cli.trainer.fit(cli.model, cli.datamodule)
    final = Path(cli.trainer.log_dir or a.out) / "checkpoints" / "final.ckpt"
    cli.trainer.save_checkpoint(final, weights_only=False)  # holds the EMA weights (copied in at the end)
    print(f"final weights (EMA): {final}  (evaluate again with `lit-edify quickstart --ckpt {final}`)")
    return cli.model, cli.trainer.global_step


# ----------------------------------------------------------------------------------------------- evaluate
def artefacts(images: torch.Tensor, real: torch.Tensor) -> dict:
    from lit_edify.metrics.artifacts import block_border_ratio, channel_spread

    return {"block_ratio_vs_real": block_border_ratio(images) / block_border_ratio(real),
            "channel_spread": channel_spread(images), "channel_spread_real": channel_spread(real)}


def evaluate_shapes(model, a: argparse.Namespace) -> dict:
    """The fixed shapes prompt sets through the judge, plus artefact statistics against real renders."""
    from lit_edify.data_modules.judge import adherence
    from lit_edify.data_modules.shapes import ShapesDataset, evaluation_prompts

    report = {}
    for split, n in (("test", a.num_prompts), ("heldout", max(12, a.num_prompts // 4))):
        prompts = evaluation_prompts(n=n, seed=0, split=split)
        images = torch.cat([model.generate([p["caption"] for p in ps], pitch=[p["pitch"] for p in ps],
                                           dof=[p["dof"] for p in ps], media_type=[p["media_type"] for p in ps],
                                           seed=i, steps=a.sample_steps, solver=a.solver, guidance=a.guidance,
                                           autoguidance=a.autoguidance)
                            for i in range(0, n, 64) for ps in [prompts[i:i + 64]]])
        save_image_atomic((images + 1) / 2, a.out / ("samples.png" if split == "test" else "heldout.png"), nrow=8)
        write_text_atomic(a.out / f"{split}_prompts.txt", "\n".join(p["caption"] for p in prompts) + "\n")
        report[split] = adherence(images, prompts)
        if split == "test":
            ds = ShapesDataset(256, model.cfg.noise.resolution, split="test", multiple=model.resolution_multiple)
            report["artefacts"] = artefacts(images, torch.stack([ds[i]["image"] for i in range(len(ds))]))
    report["targets"] = SHAPES_TARGETS
    report["meets_targets"] = all(report["test"][k] >= v for k, v in SHAPES_TARGETS.items())
    return report


def evaluate_images(model, a: argparse.Namespace, test_dir: Path) -> dict:
    """FID / KID / classifier accuracy of ``--num-images`` samples against the real test images.

    The prompts are the captions of ``--num-images`` test images drawn at random (seeded), so the classes
    are mixed as in the test set."""
    from lit_edify.data_modules.image_text import ImageTextDataModule
    from lit_edify.metrics import GeneratorEvaluator, generate_batches

    ev = GeneratorEvaluator(str(test_dir), adherence="classifier", num_reference=a.num_reference,
                            cache_dir=a.out.parent / ".cache" / "metrics", batch_size=100,
                            classifier_kwargs={"steps": a.classifier_steps}).prepare()
    order = torch.randperm(len(ev.reference_prompts), generator=torch.Generator().manual_seed(0))
    prompts = [dict(ev.reference_prompts[int(i)]) for i in order[:a.num_images]]
    batches = generate_batches(lambda caps, **kw: model.generate(caps, steps=a.sample_steps, solver=a.solver,
                                                                 guidance=a.guidance, autoguidance=a.autoguidance,
                                                                 **kw),
                               prompts, batch_size=100, seed=0)
    scores = ev.score_batches(batches, prompts)
    images = torch.cat([im for _, im in batches])
    res = model.cfg.noise.resolution  # real images as training sees them (resized to the model's buckets)
    dm = ImageTextDataModule(root=str(test_dir), resolution=res, multiple=model.resolution_multiple,
                             aspects=["1:1"], batch_size=512, num_workers=0, p_drop_caption=0.0)
    dm.setup("fit")
    real = next(iter(dm.train_dataloader()))["image"]
    save_image_atomic((images[:64] + 1) / 2, a.out / "samples.png", nrow=8)
    return {"scores": scores, "artefacts": artefacts(images, real)}


def write_report(report: dict, a: argparse.Namespace) -> None:
    """report.json + report.md, and a table on the console."""
    write_text_atomic(a.out / "report.json", json.dumps(report, indent=2))
    lines, table = [], Table(title=f"lit-edify quickstart ({a.data})")
    if a.data == "shapes":
        cols = ("color", "background", "shape", "pitch", "dof")
        for c in ("prompt set", "n", *cols):
            table.add_column(c)
        lines += ["| prompt set | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
        for split in ("test", "heldout"):
            row = [split, str(report[split]["n"])] + [f"{report[split].get(k, float('nan')):.0%}" for k in cols]
            table.add_row(*row)
            lines.append("| " + " | ".join(row) + " |")
        verdict = "meet" if report["meets_targets"] else "do NOT meet"
        summary = (f"The test prompts {verdict} the targets ("
                   + ", ".join(f"{k} >= {v:.0%}" for k, v in SHAPES_TARGETS.items()) + ").")
    else:
        s = report["scores"]
        table.add_column("metric")
        table.add_column("value")
        for k in ("fid", "kid_mean", "classifier_accuracy", "classifier_real_accuracy", "num_images"):
            table.add_row(k, f"{s[k]:.4g}")
            lines.append(f"- {k}: {s[k]:.4g}")
        summary = f"FID of {int(s['num_images'])} samples against {a.num_reference} real test images."
    art = report["artefacts"]
    lines.append("")
    lines.append(f"Artefacts: 4-px block-border ratio {art['block_ratio_vs_real']:.3f} x that of real images; "
                 f"colour spread {art['channel_spread']:.4f} (real {art['channel_spread_real']:.4f}).")
    sp = report["sampling"]
    trained = (f"Checkpoint {a.ckpt}" if report["steps"] is None
               else f"Training {report['train_s']:.0f} s for {report['steps']} steps")
    timing = (f"{trained}, evaluation {report['eval_s']:.0f} s, on {torch.get_num_threads()} threads; sampled with "
              f"{sp['solver']}, {sp['steps']} steps, guidance {sp['guidance']:g}"
              + (" for sigma in [{:g}, {:g}]".format(*sp["guidance_interval"]) if sp["guidance_interval"] else "")
              + (f", autoguidance {sp['autoguidance']:g}." if sp.get("autoguidance", 1.0) != 1.0 else "."))
    write_text_atomic(a.out / "report.md", "\n".join(lines) + "\n\n" + summary + "\n" + timing + "\n")
    console = Console()
    console.print(table)
    console.print(lines[-1])
    console.print(summary + " " + timing)
    console.print(f"Samples: {a.out / 'samples.png'}  report: {a.out / 'report.md'}")


def main(argv: list[str] | None = None) -> int:
    from lit_edify.pipelines.text2image import load_module

    a = parse(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    configs, default_steps = DATASETS[a.data]
    configs = [Path(c) for c in a.config] if a.config else configs
    steps = a.steps or default_steps
    train_dir = test_dir = None
    if a.data != "shapes":
        train_dir, test_dir = prepare_data(a.data, Path(a.data_root))
    t0 = time.time()
    if a.ckpt:
        model, steps_done = load_module(a.ckpt), None
    else:
        model, steps_done = train(a, configs, steps, train_dir)
    model = model.cpu().eval()
    cfg = model.cfg.sampling  # the settings every sample below uses: the options, else the checkpoint's recipe
    a.solver, a.sample_steps = a.solver or cfg.solver, a.sample_steps or cfg.steps
    a.guidance = cfg.guidance if a.guidance is None else a.guidance
    a.autoguidance = cfg.autoguidance if a.autoguidance is None else a.autoguidance
    if a.guidance_interval is not None:
        cfg.guidance_interval = tuple(a.guidance_interval)
    t1 = time.time()
    report = evaluate_shapes(model, a) if a.data == "shapes" else evaluate_images(model, a, test_dir)
    report.update(steps=steps_done, train_s=t1 - t0, eval_s=time.time() - t1, seed=a.seed, data=a.data,
                  sampling={"solver": a.solver, "steps": a.sample_steps, "guidance": a.guidance,
                            "autoguidance": a.autoguidance,
                            "guidance_interval": list(cfg.guidance_interval) if cfg.guidance_interval else None})
    write_report(report, a)
    return 0
