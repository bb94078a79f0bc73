"""Command line: ``lightning`` (a LightningCLI main) and ``lit-edify`` (the same plus project commands).

    lightning fit --config recipes/base256.yaml              # fit / validate / test / predict
    lit-edify fit --config recipes/tiny/base32.yaml          # same thing
    lit-edify quickstart                                     # tiny model on built-in shapes, samples + report
    lit-edify sample --ckpt base.ckpt [--upsampler-ckpt up.ckpt] --prompt "a red circle" ...
    lit-edify data tuxpaint --out data/tuxpaint              # prepare a real dataset (see --help)
    lit-edify benchmark --config <recipe> --ckpt <ckpt>      # metrics at several solvers / step counts
    lit-edify export --ckpt run.ckpt --out model.safetensors # EMA weights + hyper-parameters, no pickle
    lit-edify personalize export --ckpt run.ckpt --out concept.safetensors  # trained tensors of a finetune
    lit-edify upsample --ckpt up4k.ckpt --image in.png --out out.png  # 4x with the 4K upsampler
    lit-edify personalize export --ckpt run.ckpt --out concept.safetensors  # trained tensors of a finetune

On SLURM, Lightning's SLURMEnvironment is picked up from the environment: with ``#SBATCH --signal=SIGUSR1@90``
the job checkpoints and requeues itself before the time limit (see recipes/slurm/train.sbatch).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import unicodedata
from pathlib import Path

from lit_edify.commands.argtypes import ArgumentParser, finite_float, positive_int
from lit_edify.commands.fit import SuiteCLI, build_cli  # noqa: F401 (SuiteCLI: public here too)

#: project command -> the module whose ``main(argv)`` runs it (imported on use: each pulls in only what it needs);
#: ``sample`` is this module's own ``sample_main``
COMMAND_MODULES = {"quickstart": "lit_edify.quickstart", "data": "lit_edify.data_modules.prepare",
                   "benchmark": "lit_edify.benchmark", "export": "lit_edify.commands.export",
                   "personalize": "lit_edify.commands.personalize", "upsample": "lit_edify.commands.upsample",
                   "panorama": "lit_edify.commands.panorama"}
PROJECT_COMMANDS = ("sample", *COMMAND_MODULES)


def _fit_threads_to_quota(prog: str) -> None:
    """Torch threads capped at a cgroup CPU quota's whole cores (torch sees cores, not quotas)."""
    from lit_edify.cpu_threads import apply_cpu_quota

    threads = apply_cpu_quota()
    if threads is not None:
        print(f"{prog}: CPU quota detected: using {threads} torch thread(s) (set OMP_NUM_THREADS to choose)",
              file=sys.stderr)


def lightning_main(args: list[str] | None = None) -> None:
    """Console script ``lightning``."""
    from lit_edify.commands.fit import MovedClassPathError

    _fit_threads_to_quota("lightning")
    try:
        build_cli(args)
    except MovedClassPathError as exc:
        sys.exit(f"lightning: error: {exc}")


def main(argv: list[str] | None = None) -> int:
    """Console script ``lit-edify``. An error ends the command with one line on stderr naming it (exit 1);
    ``--debug`` anywhere in the arguments shows the full traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    _fit_threads_to_quota("lit-edify")
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        print("lit-edify: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a command line shows one line; --debug shows the traceback
        if debug:
            raise
        from lit_edify.pipelines.checkpoints import first_line

        message, root = f"{type(exc).__name__}: {first_line(exc)}", exc
        while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
            root = root.__cause__ or root.__context__
        if root is not exc:  # e.g. jsonargparse's "Does not validate ..." around the module's own ValueError
            message += f" (caused by {type(root).__name__}: {first_line(root)})"
        print(f"lit-edify: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 1


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in PROJECT_COMMANDS:
        cmd, rest = argv[0], argv[1:]
        if cmd == "sample":
            return sample_main(rest)
        return importlib.import_module(COMMAND_MODULES[cmd]).main(rest)
    build_cli(argv)
    return 0


def sample_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="lit-edify sample", description="Generate images from trained checkpoints.")
    p.add_argument("--ckpt", required=True, help="base model checkpoint (.ckpt or exported .safetensors)")
    p.add_argument("--upsampler-ckpt", help="optional upsampler checkpoint (.ckpt / .safetensors); enables the "
                   "2-stage plans")
    p.add_argument("--prompt", action="append", required=True, help="caption; repeat for several images")
    p.add_argument("--aspect", default="1:1", choices=["1:1", "4:3", "3:4", "16:9", "9:16"])
    p.add_argument("--steps", type=positive_int, help="base solver steps >= 1 (default: the model's sample_steps)")
    p.add_argument("--upsampler-steps", type=positive_int)
    p.add_argument("--solver", choices=["dpmpp_2m", "ddim", "euler", "heun"])
    p.add_argument("--guidance", type=finite_float, help="classifier-free guidance scale of the base")
    p.add_argument("--autoguidance", type=finite_float, help="autoguidance weight of the base (1 = off; default: "
                   "the model's, for a model trained with sampling.guide_at); not with --control")
    p.add_argument("--plan", default="cascade", choices=["cascade", "switch"])
    p.add_argument("--pitch", type=int, default=-1, help="0 ascending, 1 eye level, 2 descending, -1 unknown")
    p.add_argument("--dof", type=int, default=-1, help="0 shallow, 1 deep, -1 unknown")
    p.add_argument("--media-type", type=int, default=-1, help="0 photography, 1 illustration, -1 unknown")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="samples", help="output folder for PNGs")
    p.add_argument("--personalization", help="personalization file for the base (`lit-edify personalize export`)")
    p.add_argument("--upsampler-personalization", help="personalization file for the upsampler")
    from lit_edify.commands.control import add_control_arguments
    add_control_arguments(p)  # --control KIND=FILE, --controlnet-ckpt, --control-weight, --mask, --task
    from lit_edify.commands.upsample import add_upsampler4k_arguments
    p.add_argument("--upsampler4k-ckpt", help="optional 4K upsampler (Upsampler4K) applied to the final images")
    add_upsampler4k_arguments(p)  # --upsampler4k-recon-guidance, --upsampler4k-tile, ...
    return p


def prompt_problem(prompt: str) -> str | None:
    """Why ``prompt`` cannot be a caption (None when it can): empty, undecodable bytes or control characters."""
    if not prompt.strip():
        return "is empty; pass a caption (the model's unconditional output is --guidance 0 with any caption)"
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 reach sys.argv as lone surrogates
        return "is not valid UTF-8 text; pass the caption UTF-8 encoded"
    bad = next((i for i, c in enumerate(prompt) if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        return f"contains the control character {prompt[bad]!r} at position {bad}; remove it"
    return None


def output_folder_problem(out: Path) -> str | None:
    """Why ``out`` cannot receive the images (None when it can): an existing file, or not writable."""
    if out.exists() and not out.is_dir():
        return f"{str(out)!r} exists and is not a folder; pass a folder path"
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"{str(out)!r} is not writable (no write permission on {str(existing)!r}); pass another folder"
    return None


def check_sample_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Fail fast (argparse error, exit code 2) on arguments that would fail or give wrong output after sampling."""
    for i, prompt in enumerate(a.prompt, 1):
        if (why := prompt_problem(prompt)) is not None:
            p.error(f"--prompt number {i} {why}")
    if (why := output_folder_problem(Path(a.out))) is not None:
        p.error(f"--out {why}")
    for flag, path in (("--personalization", a.personalization),
                       ("--upsampler-personalization", a.upsampler_personalization)):
        if path is not None and not Path(path).is_file():
            p.error(f"{flag} file {path!r} not found")
    for flag, path in (("--ckpt", a.ckpt), ("--upsampler-ckpt", a.upsampler_ckpt),
                       ("--upsampler4k-ckpt", a.upsampler4k_ckpt)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {str(path)!r} not found: train one with "
                                    "`lit-edify fit --config recipes/tiny/base32.yaml` (checkpoints land in "
                                    "<log_dir>/checkpoints/) or pass the right path")


def sample_main(argv: list[str]) -> int:
    """``lit-edify sample``: writes one PNG per prompt plus a grid into --out (each file appears atomically)."""
    from rich.progress import track

    from lit_edify.io import save_image_atomic, write_text_atomic
    from lit_edify.commands.control import check_control_args, load_controls
    from lit_edify.modules.controlnet import load_frozen_base
    from lit_edify.pipelines.controlled import controlled_text_to_image
    from lit_edify.pipelines.text2image import load_module, text_to_image

    parser = sample_parser()
    a = parser.parse_args(argv)
    check_sample_args(parser, a)
    check_control_args(parser, a)
    base = load_frozen_base(a.ckpt).to(a.device) if a.control else load_module(a.ckpt, a.device)
    if a.personalization:  # a copy (the frozen base is cached); it keeps its weights hash, so ControlNets attach
        from lit_edify.personalization import personalized
        base = personalized(base, a.personalization)
    upsampler = load_module(a.upsampler_ckpt, a.device) if a.upsampler_ckpt else None
    if a.upsampler_personalization:
        if upsampler is None:
            parser.error("--upsampler-personalization goes with --upsampler-ckpt")
        from lit_edify.personalization import apply_personalization
        apply_personalization(upsampler, a.upsampler_personalization)
    n = len(a.prompt)
    kw = dict(upsampler=upsampler, plan=a.plan, aspect=a.aspect, seed=a.seed, steps=a.steps,
              upsampler_steps=a.upsampler_steps, solver=a.solver, guidance=a.guidance, pitch=[a.pitch] * n,
              dof=[a.dof] * n, media_type=[a.media_type] * n,
              progress=lambda it: track(it, description="sampling", transient=True))
    if a.control:  # ControlNets on the frozen base; the upsampler (if any) is reused unchanged
        if a.autoguidance is not None:
            parser.error("--autoguidance is not available with --control (the controlled pipeline uses CFG only)")
        controls = load_controls(a, base, n, base.image_shape(a.aspect))
        images = controlled_text_to_image(base, a.prompt, controls, **kw)
    else:
        images = text_to_image(base, a.prompt, autoguidance=a.autoguidance, **kw)
    if a.upsampler4k_ckpt:  # text -> base -> 1K -> 4K (report Sec. 4)
        from lit_edify.commands.upsample import upsample_images
        images = upsample_images(a, images, kw["progress"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        save_image_atomic((img.float().cpu() + 1) / 2, out / f"{i:03d}.png")
    save_image_atomic((images.float().cpu() + 1) / 2, out / "grid.png", nrow=max(1, int(n ** 0.5)))
    write_text_atomic(out / "prompts.txt", "\n".join(a.prompt) + "\n")
    print(f"wrote {n} images of {tuple(images.shape[-2:])} px to {out}/ (grid.png, prompts.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
