"""Judge for the shapes dataset: reads colour, background, shape, pitch, dof and media type back
from an image, so prompt adherence of generated samples can be scored (:func:`adherence`).

How it reads an image (``(3, H, W)`` float in [-1, 1]; resized so the short side is 32 px first):

1. **Pixel labels.** Every pixel gets the nearest palette entry: object colours (at three shading
   levels) and background colours (sky and ground tints).
2. **Object colour**: the object colour with the most pixels. In two-shape scenes that is the
   largest shape (the shapes have different colours), which is what the labels describe.
3. **Shape**: the pixels of that colour form the object mask; for each shape a template with the
   same area and centroid is drawn and the template with the best IoU wins.
4. **Pitch** (best effort): the horizon is the strongest step of mean background luminance across
   the three possible horizon heights.
5. **Background**: the median sky colour (above the horizon) and ground colour (below) are compared
   with every background colour's sky and ground tints.
6. **Depth of field** (best effort): mean absolute high-pass (pixel minus its 3x3 mean) luminance on
   background pixels away from the object and the horizon; a sharp texture is "deep".
7. **Media type** (best effort): photography objects are shaded (bright top left, dark bottom right),
   illustrations are flat: the correlation of object luminance with ``x + y`` decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .shapes_render import (BACKGROUND_COLORS, CONCEPT_SHAPE, CONCEPT_STYLE, HATCH_SPACING, HORIZON, OBJECT_COLORS,
                            SHADING, SHAPE_AREA, SHAPES, ZORB_ARM, ground_color)

__all__ = ["judge_image", "adherence", "hatch_amplitude", "ATTRIBUTES", "JUDGE_SIZE", "DOF_THRESHOLD",
           "HATCH_THRESHOLD"]

ATTRIBUTES: tuple[str, ...] = ("color", "background", "shape", "pitch", "dof", "media_type")
JUDGE_SIZE = 32  # images are resized to this short side before judging
DOF_THRESHOLD = 2.0  # texture energy (RMS grey levels above the noise floor) from which dof = deep
HATCH_THRESHOLD = 20.0  # amplitude (grey levels) of the object's stripe frequency from which it is hatched


def _palette() -> tuple[np.ndarray, list[tuple[str, str]]]:
    rgb, names = [], []
    for name, c in OBJECT_COLORS.items():
        for f in (1 - SHADING, 1.0, 1 + SHADING):
            rgb.append(np.clip(np.asarray(c, dtype=np.float64) * f, 0, 255))
            names.append(("object", name))
    for name, c in BACKGROUND_COLORS.items():
        rgb.append(np.asarray(c, dtype=np.float64))
        names.append(("background", name))
        rgb.append(np.asarray(ground_color(name)))
        names.append(("background", name))
    return np.stack(rgb), names


_PALETTE, _PALETTE_NAMES = _palette()


def _to_numpy_255(img: torch.Tensor | np.ndarray) -> np.ndarray:
    t = torch.as_tensor(img).detach().to("cpu", torch.float32)
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"judge expects one image of shape (3, H, W) in [-1, 1], got shape {tuple(t.shape)}")
    h, w = t.shape[1:]
    scale = JUDGE_SIZE / min(h, w)
    if scale != 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        mode = "area" if scale < 1 else "bilinear"
        kw = {} if mode == "area" else {"align_corners": False}
        t = F.interpolate(t[None], size=size, mode=mode, **kw)[0]
    return ((t.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy().astype(np.float64)


def _shape_template(shape: str, size: float, cx: float, cy: float, hw: tuple[int, int]) -> np.ndarray:
    y, x = np.mgrid[0 : hw[0], 0 : hw[1]] + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return np.hypot(dx, dy) <= size
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= size
    if shape == CONCEPT_SHAPE:
        t = ZORB_ARM * size
        return ((np.abs(dx) <= size) & (np.abs(dy) <= t)) | ((np.abs(dx) <= t) & (np.abs(dy) <= size))
    k = 1 / math.sqrt(5)
    return np.maximum(dy - size, np.maximum((-2 * dx - dy - size) * k, (2 * dx - dy - size) * k)) <= 0


def _classify_shape(mask: np.ndarray, shapes: tuple[str, ...] = SHAPES) -> str:
    area = mask.sum()
    if area < 3:
        return shapes[0]
    ys, xs = np.nonzero(mask)
    my, mx = ys.mean() + 0.5, xs.mean() + 0.5
    best, best_iou = shapes[0], -1.0
    for shape in shapes:
        size = math.sqrt(area / SHAPE_AREA[shape])
        cy = my - size / 3 if shape == "triangle" else my  # triangle centroid is size/3 below box centre
        tmpl = _shape_template(shape, size, mx, cy, mask.shape)
        iou = (tmpl & mask).sum() / max((tmpl | mask).sum(), 1)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def _majority3(mask: np.ndarray) -> np.ndarray:
    """3x3 majority filter: removes isolated pixels and fills pinholes."""
    p = np.pad(mask.astype(np.int32), 1)
    h, w = mask.shape
    s = sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3))
    return s >= 5


def _erode(mask: np.ndarray, r: int, border: bool = False) -> np.ndarray:
    """Binary erosion by a (2r+1)^2 square; outside the image counts as ``border``."""
    h, w = mask.shape
    p = np.pad(mask, r, constant_values=border)
    out = np.ones_like(mask)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            out &= p[i : i + h, j : j + w]
    return out


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    return ~_erode(~mask, r, border=True)


def hatch_amplitude(lum: np.ndarray, region: np.ndarray) -> float:
    """Amplitude (grey levels) of the luminance's Fourier component at the vexa stripe frequency (stripes along
    x + y = const, :data:`HATCH_SPACING` apart) over ``region``; 0 for fewer than 8 pixels. A square wave between
    luminances a and b has amplitude 2 |a - b| / pi; a flat or linearly shaded fill about 0."""
    if region.sum() < 8:
        return 0.0
    h, w = lum.shape
    s = min(h, w)
    yy, xx = np.nonzero(region)
    u = ((xx + 0.5) + (yy + 0.5)) / (s * math.sqrt(2))
    v = lum[region] - lum[region].mean()
    return float(2 * abs(np.mean(v * np.exp(-2j * math.pi * u / HATCH_SPACING))))


def judge_image(img: torch.Tensor | np.ndarray, concepts: bool = False) -> dict[str, Any]:
    """Read the labels of one shapes image.

    Args:
        img: ``(3, H, W)`` float image in [-1, 1] (any size and aspect ratio).
        concepts: also read the personalization concepts: the shape may be :data:`CONCEPT_SHAPE` (the object
            mask is closed over 2 pixels first, which bridges hatch stripes) and ``"style"`` is
            :data:`CONCEPT_STYLE` when the object's stripe amplitude (:func:`hatch_amplitude`) exceeds
            :data:`HATCH_THRESHOLD`, else ``"none"``.

    Returns:
        ``{"color": str, "shape": str, "background": str, "pitch": int, "dof": int,
        "media_type": int}`` with the names / codes of :mod:`lit_edify.data_modules.shapes_render` (and
        ``"style"`` with ``concepts``).
    """
    rgb = _to_numpy_255(img)
    h, w, _ = rgb.shape
    d2 = ((rgb[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    label = d2.argmin(-1)
    kinds = np.array([k == "object" for k, _ in _PALETTE_NAMES])
    names = [n for _, n in _PALETTE_NAMES]
    is_obj = kinds[label]
    lum = rgb.mean(-1)

    # object colour and mask
    counts = {c: 0 for c in OBJECT_COLORS}
    for idx in np.unique(label[is_obj]):
        counts[names[idx]] += int((label == idx).sum())
    color = max(counts, key=counts.get)
    col_ids = [i for i, n in enumerate(_PALETTE_NAMES) if n == ("object", color)]
    mask = _majority3(np.isin(label, col_ids))
    if concepts:
        mask = _erode(_dilate(mask, 2), 2)
    shape = _classify_shape(mask, SHAPES + (CONCEPT_SHAPE,) if concepts else SHAPES)

    # pitch: strongest background-luminance step at the three possible horizon heights
    # background: away from every object pixel (also skips outlines and anti-aliased borders)
    bg = ~_dilate(_majority3(is_obj) | is_obj, 2)
    band = max(2, round(0.15 * h))
    steps = []
    for frac in HORIZON:
        yc = round(frac * h)
        above, below = bg[max(0, yc - band) : yc], bg[yc : yc + band]
        if above.sum() < 3 or below.sum() < 3:
            steps.append(0.0)
            continue
        la = lum[max(0, yc - band) : yc][above].mean()
        lb = lum[yc : yc + band][below].mean()
        steps.append(abs(lb - la))
    pitch = int(np.argmax(steps))
    yh = round(HORIZON[pitch] * h)

    # background: median sky and ground colours against each background's two tints
    rows = np.arange(h)[:, None]
    sky, grd = bg & (rows < yh - 1), bg & (rows > yh)
    med_sky = np.median(rgb[sky], axis=0) if sky.sum() else None
    med_grd = np.median(rgb[grd], axis=0) if grd.sum() else None
    cost = {}
    for name, c in BACKGROUND_COLORS.items():
        cst = 0.0
        if med_sky is not None:
            cst += sky.sum() * np.linalg.norm(med_sky - np.asarray(c))
        if med_grd is not None:
            cst += grd.sum() * np.linalg.norm(med_grd - np.asarray(ground_color(name)))
        cost[name] = cst
    background = min(cost, key=cost.get)

    # depth of field: texture energy (pixel minus its 5x5 mean) on the background, minus the same
    # energy inside the object (flat or smoothly shaded there), which estimates the noise floor
    p = np.pad(lum, 2, mode="edge")
    hp = lum - sum(p[i : i + h, j : j + w] for i in range(5) for j in range(5)) / 25
    far = _erode(bg, 2) & (np.abs(rows + 0.5 - HORIZON[pitch] * h) > 3.5)
    core = _erode(mask, 3)
    energy = 0.0
    if far.sum() >= 8:
        floor = float((hp[core] ** 2).mean()) if core.sum() >= 4 else 0.0
        energy = math.sqrt(max(0.0, float((hp[far] ** 2).mean()) - floor))
    dof = int(energy > DOF_THRESHOLD)

    # media type: shading (photography) vs flat fill (illustration)
    core = _erode(mask, 1)
    media_type = 1
    if core.sum() >= 6:
        yy, xx = np.nonzero(core)
        v = lum[core]
        t = (xx + yy).astype(np.float64)
        if v.std() > 1e-6 and t.std() > 0:
            corr = float(np.corrcoef(v, t)[0, 1])
            media_type = 0 if corr < -0.5 else 1
    out = {"color": color, "shape": shape, "background": background, "pitch": pitch, "dof": dof,
           "media_type": media_type}
    if concepts:
        amp = hatch_amplitude(lum, _erode(mask, 1))
        out["style"] = CONCEPT_STYLE if amp > HATCH_THRESHOLD else "none"
    return out


def adherence(images: torch.Tensor | Sequence[torch.Tensor], prompts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Score images against the labels of their prompts.

    Args:
        images: ``(N, 3, H, W)`` float tensor in [-1, 1], or a sequence of ``(3, H, W)`` tensors
            (mixed aspect ratios).
        prompts: ``N`` dicts with the label keys of :data:`ATTRIBUTES` (as made by
            :func:`lit_edify.data_modules.shapes.evaluation_prompts`); missing keys are not scored.

    Returns:
        ``{attr: accuracy in [0, 1]}`` for every attribute scored, ``"all"``: fraction with colour,
        background and shape all right, ``"n"``: N, and ``f"{attr}_correct"``: counts.
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    correct = {a: 0 for a in ATTRIBUTES}
    scored = {a: 0 for a in ATTRIBUTES}
    all_right = 0
    for img, prompt in zip(images, prompts):
        got = judge_image(img)
        ok = {}
        for a in ATTRIBUTES:
            if a in prompt:
                scored[a] += 1
                ok[a] = got[a] == prompt[a]
                correct[a] += int(ok[a])
        all_right += int(all(ok.get(a, False) for a in ("color", "background", "shape")))
    n = len(prompts)
    out: dict[str, Any] = {a: correct[a] / scored[a] for a in ATTRIBUTES if scored[a]}
    out.update({f"{a}_correct": correct[a] for a in ATTRIBUTES if scored[a]})
    out["all"] = all_right / n if n else 0.0
    out["n"] = n
    return out
