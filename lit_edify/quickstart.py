"""``lit-edify quickstart``: train the tiny base model on the built-in shapes dataset, then sample and judge.

Writes into ``--out`` (default ``runs/quickstart``): the Lightning run (TensorBoard logs, checkpoints,
sample grids), ``samples.png`` (64 fixed test prompts), ``heldout.png`` (held-out colour/shape pairs),
``adherence.json`` and ``adherence.md``: object colour, background colour and shape accuracy read back
by the shapes judge, with the held-out pairs and the camera labels (pitch, depth of field) reported
separately.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torchvision.utils import save_image

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "base32.yaml"
TARGETS = {"color": 0.90, "background": 0.90, "shape": 0.70}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lit-edify quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(RECIPE), help="recipe to train (default: the tiny shapes recipe)")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--minutes", type=float, default=12.0, help="training time budget")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the recipe's)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--ckpt", default=None, help="skip training and evaluate this checkpoint")
    return p.parse_args(argv)


def evaluate(model, num_prompts: int, out: Path, steps: int | None = None, guidance: float | None = None,
             batch: int = 64) -> dict:
    """Generate the fixed prompt sets with ``model`` and score them with the shapes judge."""
    from data_modules.judge import adherence
    from data_modules.shapes import evaluation_prompts

    report = {}
    for split, n in (("test", num_prompts), ("heldout", max(12, num_prompts // 4))):
        prompts = evaluation_prompts(n=n, seed=0, split=split)
        images = []
        for i in range(0, n, batch):
            ps = prompts[i:i + batch]
            images.append(model.generate([p["caption"] for p in ps], pitch=[p["pitch"] for p in ps],
                                         dof=[p["dof"] for p in ps], media_type=[p["media_type"] for p in ps],
                                         seed=i, steps=steps, guidance=guidance))
        images = torch.cat(images)
        save_image((images + 1) / 2, out / ("samples.png" if split == "test" else "heldout.png"), nrow=8)
        (out / f"{split}_prompts.txt").write_text("\n".join(p["caption"] for p in prompts) + "\n")
        report[split] = adherence(images, prompts)
    return report


def write_report(report: dict, out: Path, seconds: dict) -> bool:
    """Write adherence.json / adherence.md and print a table; True when every target is met."""
    report = {**report, "seconds": seconds, "targets": TARGETS}
    (out / "adherence.json").write_text(json.dumps(report, indent=2))
    table = Table(title="Prompt adherence (shapes judge)")
    for col in ("prompt set", "n", "colour", "background", "shape", "pitch", "dof"):
        table.add_column(col)
    lines = ["| prompt set | n | colour | background | shape | pitch | dof |", "|---|---|---|---|---|---|---|"]
    for split in ("test", "heldout"):
        r = report[split]
        row = [split, str(r["n"])] + [f"{r.get(k, float('nan')):.0%}" for k in
                                      ("color", "background", "shape", "pitch", "dof")]
        table.add_row(*row)
        lines.append("| " + " | ".join(row) + " |")
    ok = all(report["test"][k] >= v for k, v in TARGETS.items())
    verdict = "meets" if ok else "does NOT meet"
    summary = (f"Test prompts {verdict} the targets (colour >= 90%, background >= 90%, shape >= 70%). "
               f"Training {seconds['train']:.0f} s, evaluation {seconds['eval']:.0f} s.")
    (out / "adherence.md").write_text("\n".join(lines) + "\n\n" + summary + "\n")
    console = Console()
    console.print(table)
    console.print(summary)
    console.print(f"Samples: {out / 'samples.png'}  held-out: {out / 'heldout.png'}  report: {out / 'adherence.md'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    from lit_edify.cli import build_cli
    from lit_edify.pipelines.text2image import load_module

    a = parse(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if a.ckpt:
        model = load_module(a.ckpt)
    else:
        if not Path(a.config).is_file():
            raise FileNotFoundError(f"recipe {a.config!r} not found; run from the repository root or pass --config")
        hours, rest = divmod(int(round(a.minutes * 60)), 3600)
        max_time = f"00:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
        args = ["fit", "--config", a.config, "--trainer.default_root_dir", str(out),
                "--trainer.logger.init_args.save_dir", str(out), "--trainer.max_time", max_time]
        if a.max_steps:
            args += ["--trainer.max_steps", str(a.max_steps)]
        argv, sys.argv = sys.argv, sys.argv[:1]  # the fit arguments come from `args`, not the quickstart's own
        try:
            cli = build_cli(args)
        finally:
            sys.argv = argv
        model = cli.model  # the EMA callback copied the averaged weights in at the end of training
        final = Path(cli.trainer.log_dir or out) / "checkpoints" / "final.ckpt"
        cli.trainer.save_checkpoint(final)
        print(f"final weights (EMA): {final}  (evaluate again with `lit-edify quickstart --ckpt {final}`)")
    model = model.cpu().eval()
    t1 = time.time()
    report = evaluate(model, a.num_prompts, out, a.steps, a.guidance)
    t2 = time.time()
    write_report(report, out, {"train": t1 - t0, "eval": t2 - t1})
    return 0
