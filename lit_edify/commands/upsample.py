"""``lit-edify upsample``: upsample any user image 4x with a trained 4K upsampler (report Sec. 4).

    lit-edify upsample --ckpt up4k.ckpt --image photo.png --out photo_4x.png [--recon-guidance 1.0] [--tile 1024]

Input conversions (documented, printed as notes): greyscale is replicated to RGB; an alpha channel is resized
bicubically and re-attached (only RGB goes through the model); 16-bit input keeps its precision and is written
as 16-bit (PNG / TIFF); sides that are not multiples of the model's grid are reflect-padded and cropped back.
Refused with one line and exit code 2: a missing or unreadable image, float (HDR) images, an image smaller than
the model's input size, an output above 16384 px per side, an output path that cannot be written. The output
appears atomically: a failure leaves nothing under its name.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from lit_edify.commands.argtypes import ArgumentParser, finite_float, positive_int

__all__ = ["MAX_SIDE", "add_upsampler4k_arguments", "main", "read_image", "upsample_array", "upsample_images",
           "write_image"]

#: largest output side (pixels) the command writes
MAX_SIDE = 16384
SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".webp")


class InputError(ValueError):
    """A user input the command refuses (one line, exit code 2)."""


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="lit-edify upsample", description="Upsample an image 4x with a trained 4K upsampler.")
    p.add_argument("--ckpt", required=True, help="Upsampler4K checkpoint (.ckpt or exported .safetensors)")
    p.add_argument("--image", required=True, help="input image (PNG / JPEG / TIFF / WebP; 8 or 16 bit)")
    p.add_argument("--out", required=True, help="output file (.png, .tif, .jpg, .webp)")
    add_upsampler4k_arguments(p, prefix="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p


def _non_negative(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_upsampler4k_arguments(p: argparse.ArgumentParser, prefix: str = "upsampler4k-") -> None:
    """Sampling options of the 4K stage (``--recon-guidance`` etc.; ``lit-edify sample`` prefixes them)."""
    p.add_argument(f"--{prefix}recon-guidance", type=_non_negative, default=None,
                   help="reconstruction guidance weight w_r >= 0 (0: none; default: the model's)")
    p.add_argument(f"--{prefix}tile", type=positive_int, default=None,
                   help="tile side in output pixels (memory is set by the tile; default: the model's)")
    p.add_argument(f"--{prefix}overlap", type=int, default=None, help="tile overlap in output pixels")
    p.add_argument(f"--{prefix}steps", type=positive_int, default=None, help="solver steps (default: the model's)")
    p.add_argument(f"--{prefix}restore-low", action=argparse.BooleanOptionalAction, default=None,
                   help="colour fix: afterwards, add the bicubically upsampled difference between the input and the "
                        "downsampled output, so colours and low frequencies are the input's (default: the model's, "
                        "on unless it was trained with restore_low: false)")


def check_output(path: Path) -> None:
    """InputError unless ``path`` names a writable image file with a supported suffix."""
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"--out {str(path)!r} must end in one of {', '.join(SUFFIXES)}")
    if path.is_dir():
        raise InputError(f"--out {str(path)!r} is a folder; pass a file name")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {str(path)!r} is not writable (no write permission on {str(existing)!r})")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"--out {str(path)!r} exists and is read-only")


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, int, list[str]]:
    """(rgb float32 (H, W, 3) in [0, 1], alpha float32 (H, W) or None, bit depth 8/16, conversion notes)."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--image {str(p)!r} not found")
    arr = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError(f"--image {str(p)!r} is not a readable image (corrupt or unsupported format)")
    notes = []
    if arr.dtype == np.uint8:
        depth, x = 8, arr.astype(np.float32) / 255
    elif arr.dtype == np.uint16:
        depth, x = 16, arr.astype(np.float32) / 65535
        notes.append("16-bit input: processed in float, written as 16-bit")
    else:
        raise InputError(f"--image {str(p)!r} has {arr.dtype} pixels (HDR / float); convert it to 8- or 16-bit "
                         "first (the upsampler works on display-referred images)")
    if x.ndim == 2:
        x = x[..., None]
    alpha = None
    if x.shape[-1] == 1:
        notes.append("greyscale input: replicated to RGB")
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        notes.append("alpha channel: resized bicubically and re-attached (the model upsamples RGB only)")
        x, alpha = x[..., :3], x[..., 3]
    elif x.shape[-1] != 3:
        raise InputError(f"--image {str(p)!r} has {x.shape[-1]} channels; pass a grey, RGB or RGBA image")
    return np.ascontiguousarray(x[..., ::-1]), alpha, depth, notes  # OpenCV's BGR -> RGB


def write_image(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None, depth: int) -> None:
    """Write rgb (H, W, 3) [+ alpha (H, W)] in [0, 1] at ``depth`` bits (16 only for PNG / TIFF), atomically."""
    import cv2

    from lit_edify.io import atomic_path

    path = Path(path)
    if depth == 16 and path.suffix.lower() not in (".png", ".tif", ".tiff"):
        depth = 8
    x = rgb[..., ::-1] if alpha is None else np.dstack([rgb[..., ::-1], alpha])
    scale, dtype = (65535, np.uint16) if depth == 16 else (255, np.uint8)
    x = np.clip(np.rint(x * scale), 0, scale).astype(dtype)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), x):
            raise OSError(f"OpenCV could not write {path}")


def check_size(h: int, w: int, model) -> None:
    """InputError for an input smaller than the model's input size or an output above MAX_SIDE per side."""
    f = model.factor
    need = model.cfg.noise.resolution // f
    if min(h, w) < need:
        raise InputError(f"the image is {w}x{h} px, smaller than the model's input size ({need} px per side); "
                         f"pass an image at least {need}x{need} px")
    if max(h, w) * f > MAX_SIDE:
        raise InputError(f"the output would be {w * f}x{h * f} px, above the {MAX_SIDE} px per side limit; "
                         f"pass an image at most {MAX_SIDE // f} px per side")


def upsample_array(model, rgb: np.ndarray, *, seed: int = 0, steps: int | None = None,
                   recon_guidance: float | None = None, tile: int | None = None, overlap: int | None = None,
                   restore_low: bool | None = None, progress=None) -> np.ndarray:
    """rgb (h, w, 3) float in [0, 1] -> (f h, f w, 3) float in [0, 1]; reflect-pads sides to the model's grid."""
    f, m = model.factor, model.tile_multiple() // model.factor
    h, w = rgb.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() * 2 - 1
    ph, pw = -h % m, -w % m
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    y = model.upsample(x, seed=seed, steps=steps, recon_guidance=recon_guidance, tile=tile, tile_overlap=overlap,
                       restore_low=restore_low, progress=progress)
    return ((y[0, :, :h * f, :w * f].permute(1, 2, 0).cpu().numpy() + 1) / 2).clip(0, 1)


def main(argv: list[str]) -> int:
    """``lit-edify upsample``: one output image, written atomically."""
    import sys

    import cv2
    from rich.progress import track

    from lit_edify.modules.upsampler4k import Upsampler4K
    from lit_edify.pipelines.checkpoints import load_module

    p = parser()
    a = p.parse_args(argv)
    out = Path(a.out)
    try:
        check_output(out)
        rgb, alpha, depth, notes = read_image(a.image)
    except InputError as e:
        p.error(str(e))
    model = load_module(a.ckpt, a.device)
    if not isinstance(model, Upsampler4K):
        p.error(f"--ckpt {a.ckpt!r} is a {type(model).__name__}, not an Upsampler4K checkpoint")
    try:
        check_size(*rgb.shape[:2], model)
    except InputError as e:
        p.error(str(e))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    y = upsample_array(model, rgb, seed=a.seed, steps=a.steps, recon_guidance=a.recon_guidance, tile=a.tile,
                       overlap=a.overlap, restore_low=a.restore_low,
                       progress=lambda it: track(it, description="upsampling", transient=True))
    if alpha is not None:
        alpha = cv2.resize(alpha, (y.shape[1], y.shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    write_image(out, y, alpha, depth)
    print(f"wrote {out} ({y.shape[1]}x{y.shape[0]} px, {depth}-bit)")
    return 0


def upsample_images(a: argparse.Namespace, images: torch.Tensor, progress=None) -> torch.Tensor:
    """``lit-edify sample --upsampler4k-ckpt``: the generated images (N, 3, h, w) in [-1, 1] upsampled by the 4K
    model with the ``--upsampler4k-*`` options -> (N, 3, f h, f w) in [-1, 1]."""
    from lit_edify.modules.upsampler4k import Upsampler4K
    from lit_edify.pipelines.checkpoints import load_module

    model = load_module(a.upsampler4k_ckpt, a.device)
    if not isinstance(model, Upsampler4K):
        raise ValueError(f"--upsampler4k-ckpt {a.upsampler4k_ckpt!r} is a {type(model).__name__}, not an "
                         "Upsampler4K checkpoint")
    check_size(*images.shape[-2:], model)
    m = model.tile_multiple() // model.factor
    if images.shape[-2] % m or images.shape[-1] % m:
        raise ValueError(f"images of {tuple(images.shape[-2:])} px are not multiples of {m}, the 4K model's input "
                         "grid; use `lit-edify upsample` on the saved PNGs (it pads)")
    return model.upsample(images, seed=a.seed, steps=a.upsampler4k_steps, recon_guidance=a.upsampler4k_recon_guidance,
                          tile=a.upsampler4k_tile, tile_overlap=a.upsampler4k_overlap,
                          restore_low=a.upsampler4k_restore_low, progress=progress)
