"""Aspect-ratio buckets (report Sec. 3.4): the five bucket ratios and the pixel shape of each at a resolution.

Pure geometry shared by the models (sampling shapes) and the data modules (bucketing); it lives in the library
so that ``lit_edify.modules`` need not import the data layer.
"""
from __future__ import annotations

import math

__all__ = ["ASPECT_RATIOS", "bucket_shape", "nearest_bucket"]

#: Bucket name -> (width, height) ratio; the report's five buckets (Sec. 3.4).
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "16:9": (16, 9),
    "9:16": (9, 16),
}

# In bucket_shape a relative error in the aspect ratio costs this many times more than the same
# relative error in the area: the aspect ratio is what defines a bucket.
_ASPECT_WEIGHT = 2.0


def _check_aspect(aspect: str) -> tuple[int, int]:
    if aspect not in ASPECT_RATIOS:
        valid = ", ".join(repr(a) for a in ASPECT_RATIOS)
        raise ValueError(f"unknown aspect ratio {aspect!r}; valid aspect ratios are {valid}")
    return ASPECT_RATIOS[aspect]


def bucket_shape(aspect: str, resolution: int, multiple: int = 32) -> tuple[int, int]:
    """Pixel shape ``(H, W)`` of the aspect bucket ``aspect`` at ``resolution``.

    ``H * W`` is close to ``resolution ** 2``, ``W / H`` close to the bucket's width:height ratio and
    both are multiples of ``multiple``. The 1:1 bucket is exactly ``(resolution, resolution)``.

    The shape is computed in units of ``multiple`` from ``n = resolution // multiple`` alone, so
    scaling both arguments by an integer ``k`` scales the shape by ``k``:
    ``bucket_shape(a, k * r, k * m) == (k * H, k * W)`` (an upsampler at 4x the base resolution gets
    exactly 4x the base shape when its ``multiple`` is 4x the base one). Portrait buckets are exact
    transposes of their landscape twins (``bucket_shape("3:4", ...) == bucket_shape("4:3", ...)[::-1]``).

    With few units (``n`` small) the ratio can only be approximated coarsely; e.g. at
    ``resolution=multiple`` every bucket is ``(multiple, multiple)``.

    Args:
        aspect: a key of :data:`ASPECT_RATIOS`, e.g. ``"16:9"``.
        resolution: side of the equivalent square image, in pixels; a positive multiple of ``multiple``.
        multiple: both output sides are multiples of this (e.g. 32 for a U-Net that downsamples 32x).

    Returns:
        ``(H, W)``, Python ints.

    Raises:
        ValueError: unknown ``aspect``, non-positive sizes, or ``resolution`` not a multiple of
            ``multiple``.
    """
    rw, rh = _check_aspect(aspect)
    if not isinstance(resolution, int) or not isinstance(multiple, int):
        raise ValueError(f"resolution and multiple must be ints, got {resolution!r}, {multiple!r}")
    if multiple <= 0 or resolution <= 0:
        raise ValueError(f"resolution and multiple must be positive, got {resolution}, {multiple}")
    if resolution % multiple:
        raise ValueError(
            f"resolution {resolution} is not a multiple of {multiple}; choose a resolution divisible "
            f"by `multiple` (e.g. {max(multiple, resolution // multiple * multiple)})"
        )
    n = resolution // multiple
    if rw == rh:
        return resolution, resolution
    if rw < rh:  # portrait: transpose of the landscape twin, so the two always match exactly
        w, h = bucket_shape(f"{rh}:{rw}", resolution, multiple)
        return h, w

    ratio = rw / rh
    ideal_h, ideal_w = n / math.sqrt(ratio), n * math.sqrt(ratio)
    best: tuple[float, int, int] | None = None
    for h in range(max(1, math.floor(ideal_h) - 1), math.ceil(ideal_h) + 2):
        for w in range(max(h, math.floor(ideal_w) - 1), math.ceil(ideal_w) + 2):
            cost = abs(math.log(h * w / (n * n))) + _ASPECT_WEIGHT * abs(math.log((w / h) / ratio))
            cand = (round(cost, 12), h, w)  # rounding makes ties break on (h, w), not on fp noise
            if best is None or cand < best:
                best = cand
    assert best is not None
    _, h, w = best
    return h * multiple, w * multiple


def nearest_bucket(width: int | float, height: int | float) -> str:
    """Name of the bucket whose ratio is closest to ``width / height`` in log aspect ratio.

    Args:
        width, height: image size in pixels (positive).

    Returns:
        a key of :data:`ASPECT_RATIOS`. Ties go to the bucket listed first.
    """
    if not (width > 0 and height > 0):
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    log_r = math.log(width / height)
    return min(ASPECT_RATIOS, key=lambda a: abs(log_r - math.log(ASPECT_RATIOS[a][0] / ASPECT_RATIOS[a][1])))
