"""Procedural shapes scenes: vocabulary, scene sampling and a resolution-free numpy renderer.

A scene is one or two simple shapes of named colours on a textured, two-tone background:

* **pitch** (camera, Sec. 3.2 / 3.6.2 of the report) is drawn as the horizon, the edge between the
  background colour ("sky") and a lighter/darker tint of it ("ground"): pitch 0 = *ascending*
  (camera looks up, horizon low, at 3/4 of the height), 1 = *eye level* (middle), 2 = *descending*
  (camera looks down, horizon high, at 1/4 of the height).
* **depth of field**: the background carries a fine texture; dof 1 = *deep* (sharp texture),
  dof 0 = *shallow* (the same texture Gaussian-blurred, which leaves only soft blobs).
* **media type**: 0 = *photography* (objects shaded as if lit from the top left), 1 = *illustration*
  (flat colours with a dark outline).

Everything is defined in units of the image's short side and rendered with signed distance functions
(anti-aliased coverage, no supersampling), so one :class:`ShapeScene` renders at any resolution; at an
integer multiple of a resolution (with ``multiple`` scaled alike) the pixel grid is exactly that
multiple. Shapes are axis-aligned: a circle of radius ``size``, a square and an upright triangle
inscribed in a ``2 * size`` box; ``size`` is a fraction of the short side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .buckets import bucket_shape

__all__ = [
    "OBJECT_COLORS", "BACKGROUND_COLORS", "SHAPES", "HELDOUT_PAIRS", "PITCH_NAMES", "DOF_NAMES",
    "MEDIA_NAMES", "HORIZON", "SHAPE_AREA", "ShapeObject", "ShapeScene", "ground_color", "sample_scene", "render",
    "caption_short", "caption_long", "CONCEPT_SHAPE", "CONCEPT_STYLE",
]

#: Object colours (name -> sRGB 0..255): six well separated hues.
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "yellow": (240, 215, 35),
    "green": (40, 180, 60),
    "cyan": (35, 200, 215),
    "blue": (40, 75, 225),
    "magenta": (215, 50, 200),
}
#: Background colours: names share no word with the object colours.
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "grey": (128, 128, 128),
    "white": (235, 235, 230),
    "brown": (120, 75, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Personalization concepts (report Sec. 7), never in the base data: a plus-shaped cross called "zorb" and a
#: hatch texture style called "vexa" (dark diagonal stripes over the objects).
CONCEPT_SHAPE = "zorb"
CONCEPT_STYLE = "vexa"
ZORB_ARM = 0.4  # half-thickness of the zorb's two bars, in units of its size
HATCH_SPACING = 0.25  # vexa: distance between the diagonal stripes, short-side units (8 px at 32 px)
HATCH_WIDTH = 0.09  # vexa: width of each dark stripe, short-side units (about 3 px at 32 px)
#: Area of each shape in units of size**2 (size = half-extent of its box).
SHAPE_AREA: dict[str, float] = {"circle": math.pi, "square": 4.0, "triangle": 2.0,
                                CONCEPT_SHAPE: 8 * ZORB_ARM - 4 * ZORB_ARM**2}
#: (colour, shape) pairs never shown in the train/val/test splits; only in split "heldout".
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (("green", "triangle"), ("yellow", "circle"), ("blue", "square"))
PITCH_NAMES: tuple[str, ...] = ("ascending", "eye level", "descending")
#: Horizon height (fraction of the image height from the top) per pitch label.
HORIZON: tuple[float, ...] = (0.75, 0.5, 0.25)
DOF_NAMES: tuple[str, ...] = ("shallow", "deep")
MEDIA_NAMES: tuple[str, ...] = ("photography", "illustration")

GROUND_SHIFT = 36.0  # ground tint: +-36 grey levels from the sky colour
TEXTURE_FINE = 24.0  # amplitude (grey levels) of the fine, dof-dependent texture
TEXTURE_BLOB = 10.0  # amplitude of the coarse blobs (survive the blur)
DOF_BLUR = 0.08  # Gaussian sigma of the shallow-dof blur, in short-side units
SHADING = 0.16  # photography: brightness varies by +-16% across an object
OUTLINE = 0.035  # illustration: outline width, short-side units
OUTLINE_COLOR = (15.0, 15.0, 15.0)
SIZE_RANGE = (0.24, 0.40)  # single object: half-extent, fraction of the short side
SIZE_RANGE_TWO = ((0.20, 0.28), (0.13, 0.17))  # primary / secondary object in two-shape scenes
LARGE_FROM = 0.31  # size word: "large" at or above, else "small"


def ground_color(background: str) -> tuple[float, float, float]:
    """Ground tint of a background colour: darker for light colours, lighter for dark ones (0..255)."""
    rgb = np.asarray(BACKGROUND_COLORS[background], dtype=np.float64)
    shift = -GROUND_SHIFT if rgb.mean() >= 100 else GROUND_SHIFT
    return tuple(np.clip(rgb + shift, 0, 255).tolist())


@dataclass(frozen=True)
class ShapeObject:
    """One shape. ``cx, cy``: box centre as fractions of the image width / height;
    ``size``: half-extent of its box as a fraction of the image's short side."""

    color: str
    shape: str
    cx: float
    cy: float
    size: float


@dataclass(frozen=True)
class ShapeScene:
    """A full scene; ``objects[0]`` is the primary (largest) shape that the labels describe.
    ``texture``: 11 floats (frequencies, angles, phases) of the background texture."""

    aspect: str
    background: str
    pitch: int
    dof: int
    media_type: int
    objects: tuple[ShapeObject, ...]
    texture: tuple[float, ...] = field(default=(4.0, 0.3, 0.0, 0.0, 4.5, 0.0, 1.5, 0.5, 0.0, 0.0, 0.0))
    style: str | None = None  #: None or CONCEPT_STYLE (hatched objects)


def _position_words(cx: float, cy: float) -> str:
    col = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
    row = "top" if cy < 0.4 else "bottom" if cy > 0.6 else ""
    if row and col:
        return f"near the {row} {col}"
    if row:
        return f"near the {row}"
    if col:
        return f"on the {col}"
    return "in the center"


def _size_word(size: float) -> str:
    return "large" if size >= LARGE_FROM else "small"


def caption_short(scene: ShapeScene) -> str:
    """E.g. ``"a red circle"`` or ``"a red circle and a blue square"``."""
    return " and ".join(f"a {o.color} {o.shape}" for o in scene.objects)


def caption_long(scene: ShapeScene) -> str:
    """E.g. ``"a large red circle near the top left on a white background"`` (``", in vexa style"`` appended for
    a styled scene)."""
    parts = [f"a {_size_word(o.size)} {o.color} {o.shape} {_position_words(o.cx, o.cy)}" for o in scene.objects]
    style = f", in {scene.style} style" if scene.style else ""
    return f"{' and '.join(parts)} on a {scene.background} background{style}"


def _extents(aspect: str) -> tuple[float, float]:
    """Image width and height in short-side units (from the 64-unit bucket grid, so exact enough)."""
    h, w = bucket_shape(aspect, 64, 1)
    s = min(h, w)
    return w / s, h / s


def _place(rng: np.random.Generator, size: float, ew: float, eh: float) -> tuple[float, float]:
    cx = rng.uniform(size, ew - size) / ew
    cy = rng.uniform(size, eh - size) / eh
    return float(cx), float(cy)


def _overlap(a: ShapeObject, b: ShapeObject, ew: float, eh: float, margin: float = 0.04) -> bool:
    dx = abs(a.cx - b.cx) * ew
    dy = abs(a.cy - b.cy) * eh
    reach = a.size + b.size + margin
    return dx < reach and dy < reach


def sample_scene(
    rng: np.random.Generator,
    aspect: str,
    pairs: list[tuple[str, str]],
    *,
    two_shapes: bool = False,
    secondary_pairs: list[tuple[str, str]] | None = None,
    pitch: int | None = None,
    dof: int | None = None,
    media_type: int | None = None,
    background: str | None = None,
    style: str | None = None,
) -> ShapeScene:
    """Draw a random scene.

    Args:
        rng: numpy generator (the only source of randomness: same state -> same scene).
        aspect: bucket name; object positions are drawn so the shapes fit inside this aspect.
        pairs: allowed (colour, shape) pairs of the primary object (``(colour, shape)`` of the labels).
        two_shapes: add a second object of another colour with at most 60% of the first one's area,
            not overlapping it (dropped if no free spot is found in 50 tries).
        secondary_pairs: allowed pairs of the second object (default: ``pairs``).
        pitch, dof, media_type, background: fix these labels instead of drawing them.
        style: None, or :data:`CONCEPT_STYLE` for hatched objects (personalization data only).
    """
    color, shape = pairs[int(rng.integers(len(pairs)))]
    bg = background if background is not None else list(BACKGROUND_COLORS)[int(rng.integers(len(BACKGROUND_COLORS)))]
    pitch = int(rng.integers(3)) if pitch is None else int(pitch)
    dof = int(rng.integers(2)) if dof is None else int(dof)
    media_type = int(rng.integers(2)) if media_type is None else int(media_type)
    ew, eh = _extents(aspect)
    lo, hi = SIZE_RANGE_TWO[0] if two_shapes else SIZE_RANGE
    size = float(rng.uniform(lo, hi))
    objects = [ShapeObject(color, shape, *_place(rng, size, ew, eh), size)]
    if two_shapes:
        cands = [p for p in (secondary_pairs if secondary_pairs is not None else pairs) if p[0] != color]
        c2, s2 = cands[int(rng.integers(len(cands)))]
        # the second shape covers at most 60% of the first one's area, so the primary is the largest
        cap = math.sqrt(0.6 * SHAPE_AREA[shape] * size**2 / SHAPE_AREA[s2])
        size2 = min(float(rng.uniform(*SIZE_RANGE_TWO[1])), cap)
        for _ in range(50):
            second = ShapeObject(c2, s2, *_place(rng, size2, ew, eh), size2)
            if not _overlap(objects[0], second, ew, eh):
                objects.append(second)
                break
    tex = (
        rng.uniform(3.5, 4.5), rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi),
        rng.uniform(4.0, 5.0), rng.uniform(0, 2 * math.pi),
        rng.uniform(1.0, 2.0), rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi),
        rng.uniform(0, 2 * math.pi),
    )
    return ShapeScene(aspect, bg, pitch, dof, media_type, tuple(objects), tuple(float(t) for t in tex), style)


def _sdf(o: ShapeObject, x: np.ndarray, y: np.ndarray, ew: float, eh: float) -> np.ndarray:
    """Signed distance (short-side units, negative inside) of an object at points (x, y)."""
    dx, dy, s = x - o.cx * ew, y - o.cy * eh, o.size
    if o.shape == "circle":
        return np.hypot(dx, dy) - s
    if o.shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - s
    if o.shape == "triangle":  # apex (0, -s), base corners (+-s, s)
        k = 1.0 / math.sqrt(5.0)
        return np.maximum(dy - s, np.maximum((-2 * dx - dy - s) * k, (2 * dx - dy - s) * k))
    if o.shape == CONCEPT_SHAPE:  # plus sign: union of a horizontal and a vertical bar of half-thickness ARM * s
        t = ZORB_ARM * s
        return np.minimum(np.maximum(np.abs(dx) - s, np.abs(dy) - t), np.maximum(np.abs(dx) - t, np.abs(dy) - s))
    raise ValueError(f"unknown shape {o.shape!r}; known shapes are {SHAPES + (CONCEPT_SHAPE,)}")


def _texture(scene: ShapeScene, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Background texture (grey levels). Shallow dof = the exact Gaussian blur of the deep texture:
    each plane wave of frequency f (cycles per short side) is scaled by exp(-2 pi^2 sigma^2 f^2)."""
    f1, a1, p1, p2, f2, p3, f3, a3, p4, p5, a2 = scene.texture
    sigma2 = 0.0 if scene.dof == 1 else DOF_BLUR**2

    def att(f2sum: float) -> float:
        return math.exp(-2 * math.pi**2 * sigma2 * f2sum)

    u = x * math.cos(a1) + y * math.sin(a1)
    v = -x * math.sin(a1) + y * math.cos(a1)
    w = x * math.cos(a2) + y * math.sin(a2)
    fine = 0.6 * att(2 * f1**2) * np.sin(2 * math.pi * f1 * u + p1) * np.sin(2 * math.pi * f1 * v + p2)
    fine += 0.4 * att(f2**2) * np.sin(2 * math.pi * f2 * w + p3)
    u3 = x * math.cos(a3) + y * math.sin(a3)
    v3 = -x * math.sin(a3) + y * math.cos(a3)
    blob = att(2 * f3**2) * np.sin(2 * math.pi * f3 * u3 + p4) * np.sin(2 * math.pi * f3 * v3 + p5)
    return TEXTURE_FINE * fine + TEXTURE_BLOB * blob


def render(scene: ShapeScene, resolution: int, aspect: str | None = None, multiple: int = 8) -> dict[str, np.ndarray]:
    """Render ``scene`` at ``bucket_shape(aspect, resolution, multiple)``.

    Deterministic: the same (scene, resolution, aspect, multiple) gives identical arrays.

    Args:
        scene: the scene.
        resolution, multiple: as in :func:`~lit_edify.data_modules.buckets.bucket_shape`.
        aspect: defaults to ``scene.aspect`` (another aspect may crop shapes at the border).

    Returns:
        dict of float32 numpy arrays, ``(H, W) = bucket_shape(...)``:

        * ``image`` (3, H, W) in [-1, 1];
        * ``depth`` (1, H, W) in [-1, 1], nearness: 1 = near, -1 = far (sky);
        * ``edge`` (1, H, W) in [-1, 1]: 1 on object outlines and the visible horizon, -1 elsewhere;
        * ``mask`` (1, H, W) in {0, 1}: 1 inside any object.
    """
    aspect = scene.aspect if aspect is None else aspect
    hpx, wpx = bucket_shape(aspect, resolution, multiple)
    s_px = min(hpx, wpx)
    px = 1.0 / s_px
    ew, eh = wpx / s_px, hpx / s_px
    x = ((np.arange(wpx) + 0.5) * px)[None, :]
    y = ((np.arange(hpx) + 0.5) * px)[:, None]
    x, y = np.broadcast_to(x, (hpx, wpx)), np.broadcast_to(y, (hpx, wpx))

    yh = HORIZON[scene.pitch] * eh
    ground = np.clip(0.5 + (y - yh) / px, 0.0, 1.0)[..., None]  # coverage of the ground below the horizon
    sky_rgb = np.asarray(BACKGROUND_COLORS[scene.background], dtype=np.float64)
    img = sky_rgb * (1 - ground) + np.asarray(ground_color(scene.background)) * ground
    img = img + _texture(scene, x, y)[..., None]
    near = -1.0 + 0.8 * np.clip((y - yh) / max(eh - yh, 1e-6), 0.0, 1.0)
    depth = -1.0 * (1 - ground[..., 0]) + near * ground[..., 0]
    edge = np.clip(0.5 - (np.abs(y - yh) - 0.5 * px) / px, 0.0, 1.0)
    mask = np.zeros((hpx, wpx), dtype=bool)

    for o in reversed(scene.objects):  # primary drawn last (on top)
        d = _sdf(o, x, y, ew, eh)
        cov = np.clip(0.5 - d / px, 0.0, 1.0)
        base = np.asarray(OBJECT_COLORS[o.color], dtype=np.float64)
        if scene.media_type == 0:  # photography: lit from the top left
            g = np.clip(-((x - o.cx * ew) + (y - o.cy * eh)) / (math.sqrt(2) * o.size), -1, 1)
            fill = base * (1 + SHADING * g)[..., None]
        else:
            fill = np.broadcast_to(base, img.shape)
        if scene.style == CONCEPT_STYLE:  # dark stripes along x + y = const, anti-aliased like the outlines
            dist = np.abs(np.mod((x + y) / math.sqrt(2), HATCH_SPACING) - HATCH_SPACING / 2) - HATCH_WIDTH / 2
            stripe = np.clip(0.5 - dist / px, 0.0, 1.0)[..., None]
            fill = fill * (1 - stripe) + np.asarray(OUTLINE_COLOR) * stripe
        img = img * (1 - cov[..., None]) + fill * cov[..., None]
        if scene.media_type == 1:
            oc = np.clip(0.5 - (np.abs(d) - 0.5 * OUTLINE) / px, 0.0, 1.0)[..., None]
            img = img * (1 - oc) + np.asarray(OUTLINE_COLOR) * oc
        depth = depth * (1 - cov) + min(1.0, 0.2 + 1.6 * o.size) * cov
        line = np.clip(0.5 - (np.abs(d) - 0.5 * px) / px, 0.0, 1.0)
        edge = np.maximum(edge * (1 - cov), line)
        mask |= d <= 0

    img = np.clip(img, 0.0, 255.0) / 127.5 - 1.0
    return {
        "image": np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32),
        "depth": depth[None].astype(np.float32),
        "edge": (2.0 * edge - 1.0)[None].astype(np.float32),
        "mask": mask[None].astype(np.float32),
    }
