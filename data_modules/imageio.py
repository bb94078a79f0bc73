"""Robust image reading for training data.

Everything a user's image folder can throw at a data loader ends here as either a correct RGB image
or a :class:`BadSample` exception with a short, human-readable reason:

* zero-byte, corrupt, truncated files, unreadable headers -> :class:`BadSample`;
* images above ``max_pixels`` (decompression-bomb guard, checked from the header before any pixel
  is decoded) -> :class:`BadSample`;
* EXIF orientation is applied (sizes reported by :func:`read_size` are the *displayed* sizes);
* CMYK, YCbCr, LAB, 1-bit, greyscale, 16-bit / 32-bit integer and float greyscale, palette images
  are converted to 8-bit RGB; images with alpha (RGBA, LA, palette with transparency) are
  composited on a white background.

Pixels leave this module as float tensors ``(3, H, W)`` in ``[-1, 1]`` (:func:`to_tensor`).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "BadSample",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "read_size",
    "load_rgb",
    "fit_to_shape",
    "to_tensor",
    "load_tensor",
]

#: File extensions treated as images when scanning folders (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

#: Default decompression-bomb guard: 100 megapixels (e.g. 12 000 x 8 333).
DEFAULT_MAX_PIXELS = 100_000_000

_WHITE = (255, 255, 255)
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_AXES = {5, 6, 7, 8}

Source = str | os.PathLike | bytes | BinaryIO | Image.Image


class BadSample(Exception):
    """An input that cannot become a training sample; ``str(exc)`` is the reason."""


def _open(src: Source) -> Image.Image:
    """Open an image lazily (header only) from a path, raw bytes or a binary file object."""
    if isinstance(src, (bytes, bytearray)):
        if len(src) == 0:
            raise BadSample("empty file (0 bytes)")
        src = io.BytesIO(src)
    elif isinstance(src, (str, os.PathLike)):
        try:
            if os.path.getsize(src) == 0:
                raise BadSample("empty file (0 bytes)")
        except OSError as exc:
            raise BadSample(f"cannot read file: {exc.strerror or exc}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(src)
    except UnidentifiedImageError:
        raise BadSample("not a recognised image (corrupt or unsupported format)") from None
    except Image.DecompressionBombError as exc:
        raise BadSample(f"too large: {exc} (Pillow's decompression-bomb guard)") from None
    except Exception as exc:  # any decoder error in the header is a bad file, never a crash
        raise BadSample(f"unreadable header: {type(exc).__name__}: {exc}") from None


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not make the image bad: ignore the orientation
        return 1


def _check_pixels(w: int, h: int, max_pixels: int | None) -> None:
    if w <= 0 or h <= 0:
        raise BadSample(f"invalid size {w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        raise BadSample(
            f"too large: {w}x{h} = {w * h / 1e6:.1f} MP exceeds max_pixels={max_pixels / 1e6:.1f} MP "
            "(decompression-bomb guard; raise max_pixels if the image is genuine)"
        )


def read_size(src: Source, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Displayed ``(width, height)`` of an image, from its header only (no pixel decoding).

    EXIF orientations 5-8 swap the stored width and height.

    Raises:
        BadSample: empty/corrupt/unrecognised file or size above ``max_pixels``.
    """
    img = _open(src)
    try:
        w, h = img.size
        _check_pixels(w, h, max_pixels)
        if _orientation(img) in _SWAPS_AXES:
            w, h = h, w
        return w, h
    finally:
        img.close()


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float single-channel image -> 8-bit "L", scaled by the value range."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scale = 65535.0
    elif img.mode == "F":
        finite = arr[np.isfinite(arr)]
        top = float(finite.max()) if finite.size else 1.0
        scale = 1.0 if top <= 1.0 else (255.0 if top <= 255.0 else 65535.0)
    else:  # "I": 32-bit int container, in practice 8- or 16-bit data
        top = int(arr.max()) if arr.size else 0
        scale = 255.0 if top <= 255 else (65535.0 if top <= 65535 else float(top))
    out = np.nan_to_num(arr.astype(np.float64) / scale, nan=0.0).clip(0.0, 1.0)
    return Image.fromarray(np.round(out * 255.0).astype(np.uint8), mode="L")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        img, mode = _to_8bit_grey(img), "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode == "RGB" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, _WHITE)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(
    src: Source,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Fully decode an image as 8-bit RGB, upright (EXIF orientation applied), alpha on white.

    Args:
        src: path, raw bytes, binary file object, or an already decoded ``PIL`` image (then only
            the mode conversion is done).
        max_pixels: decompression-bomb guard on the stored size (``None``: only Pillow's own guard).
        draft_size: optional ``(width, height)`` in *displayed* orientation that the result must
            still cover; lets JPEG decoding downscale by 1/2, 1/4 or 1/8 on the fly (much faster
            for large photos). The returned image is then smaller than the file's full size.

    Returns:
        a loaded ``PIL.Image.Image`` in mode ``"RGB"``.

    Raises:
        BadSample: any failure (truncated data, corrupt stream, too large, ...), with the reason.
    """
    if isinstance(src, Image.Image):  # already decoded (e.g. by a streaming loader): convert only
        return _to_rgb(src)
    img = _open(src)
    try:
        w, h = img.size
        _check_pixels(w, h, max_pixels)
        orientation = _orientation(img)
        if draft_size is not None and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
            dw, dh = draft_size
            if orientation in _SWAPS_AXES:
                dw, dh = dh, dw
            scale = max(dw / w, dh / h)
            if scale < 1.0:
                img.draft(img.mode, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        out = ImageOps.exif_transpose(img) if orientation != 1 else img
        out = _to_rgb(out)
        if out is not img:
            img.close()
        return out
    except BadSample:
        img.close()
        raise
    except Exception as exc:  # truncated/corrupt pixel data, decoder errors, MemoryError, ...
        img.close()
        msg = str(exc) or type(exc).__name__
        reason = "truncated file" if "truncated" in msg.lower() else f"cannot decode: {type(exc).__name__}: {msg}"
        raise BadSample(reason) from None


def fit_to_shape(img: Image.Image, shape: tuple[int, int]) -> Image.Image:
    """Resize to cover ``shape = (H, W)`` preserving the aspect ratio, then center-crop to it.

    The crop is applied in source coordinates within a single antialiased bicubic resize, so large
    images are never resized in full before cropping.
    """
    H, W = shape
    w, h = img.size
    if (w, h) == (W, H):
        return img
    scale = max(W / w, H / h)
    cw, ch = min(w, W / scale), min(h, H / scale)  # crop size in source pixels
    left, top = max(0.0, (w - cw) / 2.0), max(0.0, (h - ch) / 2.0)
    box = (left, top, min(float(w), left + cw), min(float(h), top + ch))
    return img.resize((W, H), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB ``PIL`` image -> float32 tensor ``(3, H, W)`` in ``[-1, 1]``."""
    if img.mode != "RGB":
        raise ValueError(f"to_tensor expects an RGB image, got mode {img.mode!r}; use load_rgb first")
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def load_tensor(src: Source, shape: tuple[int, int], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode, orient, convert, resize/center-crop to ``shape = (H, W)``.

    Returns:
        float32 tensor ``(3, H, W)`` in ``[-1, 1]``.

    Raises:
        BadSample: the file cannot become a sample (see :func:`load_rgb`).
    """
    H, W = shape
    return to_tensor(fit_to_shape(load_rgb(src, max_pixels, draft_size=(W, H)), shape))
