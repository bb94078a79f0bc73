"""``lit-edify sample`` ControlNet options (report Sec. 5)::

    lit-edify sample --ckpt base.ckpt --prompt "a red circle" \\
        --controlnet-ckpt canny.ckpt --control canny=edges.png --control-weight 0.8
    lit-edify sample --ckpt base.ckpt --prompt "a blue circle" \\
        --controlnet-ckpt inpaint.ckpt --control inpaint=image.png --mask mask.png --task replace

``--control KIND=FILE`` and ``--controlnet-ckpt`` are repeatable and paired in order; ``--control-weight`` is one
number for all controls or one per control. Files: ``canny`` / ``hed`` an edge map (white edges on black),
``depth`` a grey nearness map (white = near), ``inpaint`` the source image with ``--mask`` (white = generate)
and ``--task``. Every file is resized to the base's image size for ``--aspect``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lit_edify.data_modules.hints import HINT_CHANNELS, TASKS, inpaint_control, resize_hint
from lit_edify.commands.argtypes import finite_float

__all__ = ["add_control_arguments", "check_control_args", "load_controls"]


def _control(text: str) -> tuple[str, str]:
    kind, sep, path = text.partition("=")
    if not sep or kind not in HINT_CHANNELS or not path:
        raise argparse.ArgumentTypeError(f"must be KIND=FILE with KIND one of {sorted(HINT_CHANNELS)}, got {text!r}")
    return kind, path


def add_control_arguments(p: argparse.ArgumentParser) -> None:
    """The ControlNet options of ``lit-edify sample``."""
    g = p.add_argument_group("ControlNets (report Sec. 5)")
    g.add_argument("--control", type=_control, action="append", default=[], metavar="KIND=FILE",
                   help=f"control input, KIND in {sorted(HINT_CHANNELS)}; repeat for several ControlNets")
    g.add_argument("--controlnet-ckpt", action="append", default=[], help="ControlNet checkpoint, one per --control")
    g.add_argument("--control-weight", type=finite_float, action="append", default=[],
                   help="control weight: one for all controls or one per control (default: each ControlNet's)")
    g.add_argument("--mask", help="inpainting mask image (white = generate), with --control inpaint=IMAGE")
    g.add_argument("--task", default="inpaint", help=f"inpainting task, one of {list(TASKS)}")


def check_control_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """argparse errors (exit code 2) for inconsistent ControlNet options, before anything is loaded."""
    n = len(a.control)
    if len(a.controlnet_ckpt) != n:
        p.error(f"give one --controlnet-ckpt per --control: got {len(a.controlnet_ckpt)} checkpoint(s) for {n} "
                "control(s)")
    if len(a.control_weight) not in (0, 1, n):
        p.error(f"--control-weight: give one weight for all controls or one per control ({n}), "
                f"got {len(a.control_weight)}")
    if a.task not in TASKS:
        p.error(f"--task {a.task!r} is unknown; choose one of {list(TASKS)}")
    kinds = [k for k, _ in a.control]
    if ("inpaint" in kinds) != (a.mask is not None):
        p.error("--mask goes with --control inpaint=IMAGE (and inpainting needs one)")
    for flag, path in [("--control", f) for _, f in a.control] + [("--controlnet-ckpt", c) for c in a.controlnet_ckpt] \
            + ([("--mask", a.mask)] if a.mask else []):
        if not Path(path).is_file():
            p.error(f"{flag} file {path!r} not found")


def _read(path: str, shape: tuple[int, int], binary: bool) -> torch.Tensor:
    """An image file as (1, 3, H, W) in [-1, 1] at ``shape`` (nearest when ``binary``)."""
    from PIL import Image

    import numpy as np

    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1
    return resize_hint(torch.from_numpy(img).permute(2, 0, 1)[None], shape, binary)


def load_controls(a: argparse.Namespace, base, n: int, shape: tuple[int, int]) -> list[tuple]:
    """(ControlNetModule, hint (n, C, H, W), weight) per --control, each ControlNet checked against ``base``."""
    from lit_edify.pipelines.controlled import load_controlnet

    weights = a.control_weight * len(a.control) if len(a.control_weight) == 1 else a.control_weight
    controls = []
    for i, ((kind, path), ckpt) in enumerate(zip(a.control, a.controlnet_ckpt)):
        cn = load_controlnet(ckpt, base, device=a.device)
        if cn.hparams.hint != kind:
            raise ValueError(f"--control {kind}=... number {i + 1} is paired with a {cn.hparams.hint!r} ControlNet "
                             f"({ckpt}); pair each --control with a ControlNet of its kind")
        if kind == "inpaint":
            mask = (_read(a.mask, shape, binary=True).mean(1, keepdim=True) > 0).float()
            hint = inpaint_control(_read(path, shape, binary=False), mask, a.task)
        elif kind == "depth":
            hint = _read(path, shape, binary=False).mean(1, keepdim=True)
        else:
            edges = _read(path, shape, binary=True).mean(1, keepdim=True)
            hint = (edges > 0).float() if kind == "canny" else (edges + 1) / 2
        weight = weights[i] if weights else cn.hparams.control_weight
        controls.append((cn, hint.expand(n, -1, -1, -1).to(a.device), weight))
    return controls
