"""``lit-edify panorama``: text (+ optional example view) -> 360-degree HDR panorama (Edify Image Sec. 6)::

    lit-edify panorama --prompt "a red circle on a blue background" --size 4k --out pano.exr \\
        --ckpt base.ckpt --inpaint-ckpt inpaint.ckpt --hdr-ckpt ldr2hdr.ckpt [--view example.png]

Writes ``pano.exr`` (OpenEXR), ``pano.hdr`` (Radiance) and ``pano.png`` (tone-mapped preview), each atomically:
an error or a crash mid-panorama leaves nothing under those names.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from lit_edify.commands.argtypes import ArgumentParser, finite_float, positive_int

__all__ = ["main", "parser"]
SIZE_CHOICES = ("4k", "8k", "16k")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="lit-edify panorama", description="Generate a 360-degree HDR panorama (equirectangular).")
    p.add_argument("--prompt", required=True, help="caption for every view")
    p.add_argument("--size", required=True, type=str.lower, help=f"output size, one of {list(SIZE_CHOICES)} "
                   "(4096x2048, 8192x4096, 16384x8192)")
    p.add_argument("--out", required=True, help="output .exr or .hdr path; the other format and a .png preview are "
                   "written next to it")
    p.add_argument("--view", help="optional example view (square image, the views' aspect): the first horizon view")
    p.add_argument("--ckpt", required=True, help="base model checkpoint")
    p.add_argument("--inpaint-ckpt", required=True, help="inpainting ControlNet trained on --ckpt")
    p.add_argument("--hdr-ckpt", required=True, help="LDR2HDR checkpoint")
    p.add_argument("--personalization", help="personalization file for --ckpt (`lit-edify personalize export`)")
    p.add_argument("--views", type=positive_int, default=8, help="views around the horizon (default 8)")
    p.add_argument("--overlap", type=finite_float, default=0.5, help="share of a horizon view's width seen by its "
                   "neighbour (default 0.5)")
    p.add_argument("--hdr-width", type=positive_int, help="panorama width at which LDR2HDR runs (default: the "
                   "checkpoint's work_width, else the output size); its prediction is upsampled to the output")
    p.add_argument("--steps", type=positive_int, help="solver steps per view")
    p.add_argument("--guidance", type=finite_float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p


def check_args(p: ArgumentParser, a) -> None:
    """Usage errors (exit 2) before anything is loaded or generated."""
    if a.size not in SIZE_CHOICES:
        p.error(f"--size {a.size!r} is unknown; choose one of {list(SIZE_CHOICES)}")
    if not a.prompt.strip():
        p.error("--prompt is empty; pass a caption")
    from lit_edify.pipelines.panorama import SIZES

    width = SIZES[a.size][1]
    if a.hdr_width is not None and (width % a.hdr_width or a.hdr_width % 32):
        p.error(f"--hdr-width {a.hdr_width} must divide the {a.size} width {width} and be a multiple of 32 "
                "(e.g. 512, 1024 or 2048)")
    out = Path(a.out)
    if out.is_dir():
        p.error(f"--out {a.out!r} is a folder; pass a file path such as {os.path.join(a.out, 'pano.exr')}")
    if out.suffix.lower() not in (".exr", ".hdr"):
        p.error(f"--out {a.out!r} must end in .exr or .hdr")
    parent = next(q for q in (out.parent, *out.parent.parents) if q.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "is a file, not a folder" if not parent.is_dir() else "has no write permission"
        p.error(f"--out {a.out!r} is not writable ({str(parent)!r} {why}); pass another path")
    for flag, path in (("--ckpt", a.ckpt), ("--inpaint-ckpt", a.inpaint_ckpt), ("--hdr-ckpt", a.hdr_ckpt),
                       ("--view", a.view), ("--personalization", a.personalization)):
        if path is not None and not Path(path).is_file():
            p.error(f"{flag} file {path!r} not found")
    if not 0 <= a.overlap < 1:
        p.error(f"--overlap must be in [0, 1), got {a.overlap}")
    if a.view is not None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(a.view) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError) as e:
            p.error(f"--view {a.view!r} is not a readable image ({e})")
        if abs(w / h - 1) > 0.02:
            p.error(f"--view {a.view!r} is {w}x{h} (aspect {w / h:.2f}); the panorama's views are square (1:1): "
                    "crop it to a square")


def _example(path: str, hw: tuple[int, int]):
    """The example view as (3, h, w) in [-1, 1] at the views' size."""
    import numpy as np
    import torch
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(x, size=hw, mode="area")[0]


def main(argv: list[str] | None = None) -> int:
    from rich.progress import track

    from lit_edify.modules.controlnet import load_frozen_base
    from lit_edify.modules.ldr2hdr import LDR2HDR
    from lit_edify.pipelines.checkpoints import CheckpointError, load_module
    from lit_edify.pipelines.controlled import load_controlnet
    from lit_edify.pipelines.panorama import panorama

    p = parser()
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    check_args(p, a)
    base = load_frozen_base(a.ckpt).to(a.device)
    if a.personalization:  # a copy that keeps the base's weights hash, so the inpainting ControlNet still attaches
        from lit_edify.personalization import personalized
        base = personalized(base, a.personalization)
    inpaint = load_controlnet(a.inpaint_ckpt, base, a.device)
    if inpaint.controlnet.hint_channels != 7:
        raise CheckpointError(f"--inpaint-ckpt {a.inpaint_ckpt} is a {inpaint.hparams.hint} ControlNet; the "
                              "panorama needs an inpainting one (hint: inpaint)")
    hdr = load_module(a.hdr_ckpt, a.device)
    if not isinstance(hdr, LDR2HDR):
        raise CheckpointError(f"--hdr-ckpt {a.hdr_ckpt} is a {type(hdr).__name__} checkpoint, not LDR2HDR")
    example = _example(a.view, base.image_shape("1:1")) if a.view else None
    res = panorama(base, inpaint, hdr, a.prompt, a.size, a.out, example=example, seed=a.seed, steps=a.steps,
                   guidance=a.guidance, n_views=a.views, overlap=a.overlap, hdr_width=a.hdr_width,
                   progress=lambda it: track(it, description="views", total=len(it)))
    h, w = res["size"]
    print(f"wrote {w}x{h} panorama: {res['exr']}, {res['hdr']}, preview {res['png']} "
          f"(peak {res['peak']:.4g} x the clipping level)")
    return 0
