"""Command line: ``lightning`` (a LightningCLI main) and ``lit-edify`` (the same plus project commands).

    lightning fit --config recipes/base256.yaml              # fit / validate / test / predict
    lit-edify fit --config recipes/tiny/base32.yaml          # same thing
    lit-edify quickstart                                     # tiny model on built-in shapes, samples + report
    lit-edify sample --ckpt base.ckpt [--upsampler-ckpt up.ckpt] --prompt "a red circle" ...
    lit-edify data tuxpaint --out data/tuxpaint              # prepare a real dataset (see --help)
    lit-edify benchmark --config <recipe> --ckpt <ckpt>      # metrics at several solvers / step counts

On SLURM, Lightning's SLURMEnvironment is picked up from the environment: with ``#SBATCH --signal=SIGUSR1@90``
the job checkpoints and requeues itself before the time limit (see recipes/slurm/train.sbatch).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

PROJECT_COMMANDS = ("quickstart", "sample", "data", "benchmark")


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The LightningCLI of the suite: any LightningModule / LightningDataModule by class_path."""
    return LightningCLI(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        auto_configure_optimizers=False, save_config_kwargs={"overwrite": True}, args=args, run=run,
    )


def lightning_main(args: list[str] | None = None) -> None:
    """Console script ``lightning``."""
    build_cli(args)


def main(argv: list[str] | None = None) -> int:
    """Console script ``lit-edify``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PROJECT_COMMANDS:
        cmd, rest = argv[0], argv[1:]
        if cmd == "data":
            from data_modules.prepare import main as data_main
            return data_main(rest)
        if cmd == "quickstart":
            from lit_edify.quickstart import main as quickstart_main
            return quickstart_main(rest)
        if cmd == "benchmark":
            from lit_edify.benchmark import main as benchmark_main
            return benchmark_main(rest)
        return sample_main(rest)
    build_cli(argv)
    return 0


def sample_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-edify sample", description="Generate images from trained checkpoints.")
    p.add_argument("--ckpt", required=True, help="base model checkpoint (.ckpt)")
    p.add_argument("--upsampler-ckpt", help="optional upsampler checkpoint; enables the 2-stage plans")
    p.add_argument("--prompt", action="append", required=True, help="caption; repeat for several images")
    p.add_argument("--aspect", default="1:1", choices=["1:1", "4:3", "3:4", "16:9", "9:16"])
    p.add_argument("--steps", type=int, help="base solver steps (default: the model's sample_steps)")
    p.add_argument("--upsampler-steps", type=int)
    p.add_argument("--solver", choices=["dpmpp_2m", "ddim", "euler", "heun"])
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale of the base")
    p.add_argument("--plan", default="cascade", choices=["cascade", "switch"])
    p.add_argument("--pitch", type=int, default=-1, help="0 ascending, 1 eye level, 2 descending, -1 unknown")
    p.add_argument("--dof", type=int, default=-1, help="0 shallow, 1 deep, -1 unknown")
    p.add_argument("--media-type", type=int, default=-1, help="0 photography, 1 illustration, -1 unknown")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="samples", help="output folder for PNGs")
    return p


def sample_main(argv: list[str]) -> int:
    """``lit-edify sample``: writes one PNG per prompt plus a grid into --out."""
    from rich.progress import track
    from torchvision.utils import save_image

    from lit_edify.pipelines.text2image import load_module, text_to_image

    a = sample_parser().parse_args(argv)
    base = load_module(a.ckpt, a.device)
    upsampler = load_module(a.upsampler_ckpt, a.device) if a.upsampler_ckpt else None
    n = len(a.prompt)
    images = text_to_image(
        base, a.prompt, upsampler=upsampler, plan=a.plan, aspect=a.aspect, seed=a.seed, steps=a.steps,
        upsampler_steps=a.upsampler_steps, solver=a.solver, guidance=a.guidance, pitch=[a.pitch] * n,
        dof=[a.dof] * n, media_type=[a.media_type] * n,
        progress=lambda it: track(it, description="sampling", transient=True))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        save_image((img.float().cpu() + 1) / 2, out / f"{i:03d}.png")
    save_image((images.float().cpu() + 1) / 2, out / "grid.png", nrow=max(1, int(n ** 0.5)))
    (out / "prompts.txt").write_text("\n".join(a.prompt) + "\n")
    print(f"wrote {n} images of {tuple(images.shape[-2:])} px to {out}/ (grid.png, prompts.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
