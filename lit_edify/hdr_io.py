"""HDR image files: OpenEXR (``.exr``, via the OpenEXR bindings) and Radiance (``.hdr``, via OpenCV).

Arrays are (H, W, 3) float32 linear RGB, finite and >= 0 (:func:`check_hdr` says which pixel is not). Every
write is atomic (:mod:`lit_edify.io`): a crash leaves nothing under the output name.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lit_edify.io import atomic_path

__all__ = ["HDR_SUFFIXES", "HDRError", "check_hdr", "list_hdr_files", "read_hdr", "write_exr", "write_hdr",
           "write_hdr_any"]
HDR_SUFFIXES = (".exr", ".hdr")


class HDRError(ValueError):
    """An HDR file or array that cannot be used (unreadable, wrong shape, NaN / infinite / negative values)."""


def check_hdr(arr: np.ndarray, name: str = "HDR image", noise: float = 0.01) -> np.ndarray:
    """``arr`` as (H, W, 3) float32 after checking it is finite and non-negative (HDRError naming the first bad
    pixel otherwise). Negative values come from broken tone mappers or ringing filters, NaN from divisions.
    Negatives no larger than ``noise`` x the image's 99th percentile are filter round-off (real EXRs have them:
    blender-data's night.exr goes down to -0.0033 with a 99th percentile of 0.64) and are clamped to 0 in a copy."""
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise HDRError(f"{name}: expected an (H, W, 3) RGB image, got shape {tuple(arr.shape)}")
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr)
    sub = arr[:: max(1, arr.shape[0] // 256), :: max(1, arr.shape[1] // 512)]  # percentile of a subsample
    sub = sub[np.isfinite(sub)]
    tiny = noise * float(np.percentile(np.abs(sub), 99)) if sub.size else 0.0
    for what, bad in (("NaN or infinite", ~finite), ("negative", arr < -tiny)):
        if bad.any():
            y, x, c = (int(i[0]) for i in np.nonzero(bad))
            raise HDRError(f"{name}: {int(bad.sum())} {what} value(s), first at row {y}, column {x}, channel {c} "
                           f"({arr[y, x, c]}); HDR radiance must be finite and >= 0: fix or clip the source")
    return np.maximum(arr, 0) if (arr < 0).any() else arr


def read_hdr(path: str | os.PathLike) -> np.ndarray:
    """An .exr / .hdr file as checked (H, W, 3) float32 linear RGB."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in HDR_SUFFIXES:
        raise HDRError(f"{path}: not an HDR file (suffix {suffix!r}); use one of {list(HDR_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such HDR file")
    if suffix == ".exr":
        import OpenEXR

        try:
            with OpenEXR.File(str(path)) as f:
                ch = f.channels()
                if "RGB" in ch or "RGBA" in ch:
                    arr = np.asarray((ch.get("RGB") or ch["RGBA"]).pixels)[..., :3]
                elif all(k in ch for k in "RGB"):
                    arr = np.stack([np.asarray(ch[k].pixels) for k in "RGB"], -1)
                elif "Y" in ch:
                    arr = np.repeat(np.asarray(ch["Y"].pixels)[..., None], 3, -1)
                else:
                    raise HDRError(f"{path}: no RGB or Y channels (has {sorted(ch)})")
        except HDRError:
            raise
        except Exception as exc:  # noqa: BLE001 - the bindings raise plain RuntimeErrors on broken files
            raise HDRError(f"{path}: not a readable OpenEXR file ({exc})") from exc
    else:
        import cv2

        bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
        if bgr is None or bgr.ndim != 3:
            raise HDRError(f"{path}: not a readable Radiance .hdr file")
        arr = bgr[..., ::-1]
    return check_hdr(np.ascontiguousarray(arr, dtype=np.float32), str(path))


def write_exr(path: str | os.PathLike, arr: np.ndarray, half: bool = True) -> None:
    """Write (H, W, 3) linear RGB as OpenEXR (half floats by default: 16 stops of precision per value and
    range to 65504; ``half=False`` for float32), ZIP-compressed, atomically."""
    import OpenEXR

    arr = check_hdr(arr, str(path))
    if half:
        if arr.max(initial=0) > 65504:
            raise HDRError(f"{path}: values up to {arr.max():.4g} overflow half floats (max 65504); "
                           "write with half=False")
        arr = arr.astype(np.float16)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with atomic_path(path) as tmp:
        with OpenEXR.File(header, {"RGB": np.ascontiguousarray(arr)}) as f:
            f.write(str(tmp))


def write_hdr(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write (H, W, 3) linear RGB as Radiance RGBE (.hdr, 8-bit shared exponent: about 1% precision), atomically."""
    import cv2

    arr = check_hdr(arr, str(path))
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(arr[..., ::-1], dtype=np.float32)):
            raise HDRError(f"{path}: OpenCV could not write the Radiance file")


def write_hdr_any(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write by suffix: .exr (half floats) or .hdr."""
    suffix = Path(path).suffix.lower()
    if suffix == ".exr":
        write_exr(path, arr)
    elif suffix == ".hdr":
        write_hdr(path, arr)
    else:
        raise HDRError(f"{path}: unknown HDR suffix {suffix!r}; use one of {list(HDR_SUFFIXES)}")


def list_hdr_files(folder: str | os.PathLike) -> list[Path]:
    """The .exr / .hdr files of a folder (recursively), sorted; HDRError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of HDR images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in HDR_SUFFIXES and p.is_file())
    if not files:
        raise HDRError(f"{folder}: no .exr or .hdr files")
    return files
