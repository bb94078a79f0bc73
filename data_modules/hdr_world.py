"""Procedural HDR world: an analytic radiance function of direction, so the equirectangular panorama and any
perspective view of one scene are renders of the same function (exact, no resampling between them).

A scene is a sky (horizon-to-zenith colour gradient), a sun 2^15 - 2^19 times brighter than the sky at the
horizon with a forward-scattering glow that grows with its intensity, optional clouds lit by the sun, a ground
below the horizon and a few coloured shapes (circle, square, triangle) standing on the horizon at known
directions, with a caption naming them and their directions ("in front" = longitude 0, "to the right" = +90 deg,
"behind" = 180 deg, "to the left" = -90 deg; conventions of :mod:`lit_edify.panorama.geometry`). Radiance is
linear RGB, about 1 for the sky at the horizon.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from lit_edify.panorama.geometry import (View, equirect_directions, lonlat_to_direction, perspective_directions)

__all__ = ["COLOURS", "DIRECTIONS", "Scene", "Shape", "radiance", "random_scene", "render_equirect", "render_view"]
Tensor = torch.Tensor

COLOURS = {"red": (0.8, 0.08, 0.06), "green": (0.1, 0.65, 0.12), "blue": (0.08, 0.15, 0.85),
           "yellow": (0.85, 0.75, 0.08), "white": (0.85, 0.85, 0.85), "black": (0.03, 0.03, 0.03)}
DIRECTIONS = {"in front": 0.0, "to the right": 90.0, "behind": 180.0, "to the left": -90.0}
SKIES = {"blue": ((0.55, 0.75, 1.0), (0.15, 0.35, 0.9)), "orange": ((1.0, 0.6, 0.3), (0.35, 0.3, 0.6)),
         "grey": ((0.8, 0.8, 0.82), (0.55, 0.56, 0.6))}
GROUNDS = {"green grass": (0.08, 0.16, 0.04), "sand": (0.3, 0.25, 0.15), "grey stone": (0.14, 0.14, 0.14)}


@dataclass
class Shape:
    """A flat coloured shape facing the viewer at (lon, lat) degrees, angular radius ``size`` degrees."""
    kind: str  # circle | square | triangle
    colour: str
    lon: float
    lat: float
    size: float
    where: str = ""


@dataclass
class Scene:
    sky: str = "blue"
    ground: str = "green grass"
    sun_lon: float = 40.0  # degrees
    sun_lat: float = 30.0
    sun_ratio_log2: float = 17.0  # sun radiance / sky radiance at the horizon, log2
    sun_radius: float = 2.0  # degrees
    clouds: float = 0.0  # cloud cover in [0, 1]
    seed: int = 0
    shapes: list[Shape] = field(default_factory=list)

    def caption(self) -> str:
        parts = [f"a {s.colour} {s.kind} {s.where}" for s in self.shapes]
        sky = f"a {'cloudy' if self.clouds > 0.3 else 'clear'} {self.sky} sky with the sun over {self.ground}"
        return sky + (", " + " and ".join(parts) if parts else "")


def random_scene(rng: np.random.Generator, n_shapes: tuple[int, int] = (1, 3)) -> Scene:
    """A random scene: sky and ground kind, sun direction and intensity (2^15 - 2^19 of the sky), clouds, and
    1-3 shapes at distinct compass directions."""
    where = list(DIRECTIONS)
    rng.shuffle(where)
    shapes = [Shape(str(rng.choice(["circle", "square", "triangle"])), str(rng.choice(list(COLOURS))),
                    DIRECTIONS[w] + float(rng.uniform(-10, 10)), float(rng.uniform(6, 14)), float(rng.uniform(8, 14)), w)
              for w in where[: int(rng.integers(n_shapes[0], n_shapes[1] + 1))]]
    return Scene(str(rng.choice(list(SKIES))), str(rng.choice(list(GROUNDS))), float(rng.uniform(-180, 180)),
                 float(rng.uniform(5, 70)), float(rng.uniform(15, 19)), float(rng.uniform(1.5, 3)),
                 float(rng.choice([0.0, rng.uniform(0.2, 0.7)])), int(rng.integers(1 << 30)), shapes)


def _noise(d: Tensor, seed: int) -> Tensor:
    """Smooth pseudo-random field on the sphere in [0, 1] (a sum of random plane waves, fbm-like)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(d.shape[:-1], dtype=d.dtype)
    for octave in range(4):
        k = torch.randn(6, 3, generator=g, dtype=d.dtype) * 3 * 2 ** octave
        ph = torch.rand(6, generator=g, dtype=d.dtype) * 2 * math.pi
        out += (d @ k.T + ph).sin().mean(-1) * 0.5 ** octave
    return (out * 0.9 + 0.5).clamp(0, 1)


def _shape_mask(d: Tensor, s: Shape) -> Tensor:
    """1 inside the shape (gnomonic coordinates around its centre), else 0."""
    lon, lat = math.radians(s.lon), math.radians(s.lat)
    c = lonlat_to_direction(torch.tensor(lon, dtype=d.dtype), torch.tensor(lat, dtype=d.dtype))
    east = torch.tensor([math.cos(lon), 0.0, -math.sin(lon)], dtype=d.dtype)
    north = torch.linalg.cross(c, east)
    z = d @ c
    zs = torch.where(z > 1e-3, z, torch.ones_like(z))
    x, y = (d @ east) / zs / math.tan(math.radians(s.size)), (d @ north) / zs / math.tan(math.radians(s.size))
    front = z > 1e-3
    if s.kind == "circle":
        m = x * x + y * y <= 1
    elif s.kind == "square":
        m = (x.abs() <= 0.8) & (y.abs() <= 0.8)
    else:  # triangle pointing up
        m = (y >= -0.7) & (y <= 1 - 1.7 * x.abs() * 1.15)
    return (m & front).to(d.dtype)


def radiance(d: Tensor, scene: Scene) -> Tensor:
    """Linear RGB radiance (..., 3) along unit directions d (..., 3) (float64 recommended)."""
    y = d[..., 1:2]
    hor, zen = (torch.tensor(c, dtype=d.dtype) for c in SKIES[scene.sky])
    t = y.clamp(min=0).sqrt()
    sky = hor * (1 - t) + zen * t
    sun_d = lonlat_to_direction(torch.tensor(math.radians(scene.sun_lon), dtype=d.dtype),
                                torch.tensor(math.radians(scene.sun_lat), dtype=d.dtype))
    ang = torch.acos((d @ sun_d).clamp(-1, 1))[..., None]
    sun_i = 2.0 ** scene.sun_ratio_log2 * float(hor.mean())
    sun_col = torch.tensor((1.0, 0.95, 0.85), dtype=d.dtype)
    glow = sun_i * 2e-4 * torch.exp(-ang / 0.06) * sun_col  # forward scattering: wider when the sun is brighter
    if scene.clouds > 0:
        n = _noise(d, scene.seed)[..., None]
        cover = ((n - (1 - scene.clouds)) / 0.15).clamp(0, 1) * (y > 0).to(d.dtype)
        lit = 1.2 + 4 * torch.exp(-ang / 0.4)
        sky = sky * (1 - cover) + cover * lit * torch.tensor((0.95, 0.95, 0.97), dtype=d.dtype)
    sky = sky + glow + (ang <= math.radians(scene.sun_radius)).to(d.dtype) * sun_i * sun_col
    ground = torch.tensor(GROUNDS[scene.ground], dtype=d.dtype) * (1 + 2 * math.sin(math.radians(scene.sun_lat)))
    ground = ground * (1 + 0.3 * _noise(d * 4, scene.seed + 1)[..., None])
    haze = torch.exp(-y.abs() / 0.03) * 0.5 * hor  # bright haze at the horizon line
    out = torch.where(y >= 0, sky, ground) + haze
    light = 0.6 + 0.8 * math.sin(math.radians(scene.sun_lat))
    for s in scene.shapes:
        m = _shape_mask(d, s)[..., None]
        out = out * (1 - m) + m * torch.tensor(COLOURS[s.colour], dtype=d.dtype) * light
    return out


def _supersample(dirs_fn, h: int, w: int, ss: int) -> Tensor:
    """Mean radiance over ss x ss sub-pixel directions: dirs_fn(H, W) -> (H, W, 3) at ss x resolution."""
    d = dirs_fn(h * ss, w * ss)
    return d.view(h, ss, w, ss, -1).mean((1, 3))


def render_equirect(scene: Scene, h: int, w: int, ss: int = 2) -> Tensor:
    """Equirectangular HDR render (3, h, w) float32, ``ss`` x ``ss`` samples per pixel."""
    img = _supersample(lambda hh, ww: radiance(equirect_directions(hh, ww, dtype=torch.float64), scene), h, w, ss)
    return img.permute(2, 0, 1).float()


def render_view(scene: Scene, view: View, h: int, w: int, ss: int = 2) -> Tensor:
    """Perspective HDR render (3, h, w) float32 of the same scene."""
    img = _supersample(lambda hh, ww: radiance(perspective_directions(view, hh, ww, dtype=torch.float64), scene),
                       h, w, ss)
    return img.permute(2, 0, 1).float()
