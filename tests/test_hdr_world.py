"""Procedural HDR world: one radiance function for the panorama and every perspective view."""
import math

import numpy as np
import torch

from lit_edify.data_modules.hdr_world import (COLOURS, SKIES, Scene, Shape, radiance, random_scene, render_equirect,
                                              render_view)
from lit_edify.panorama.geometry import View, lonlat_to_direction, equirect_lonlat


def test_equirect_and_perspective_renders_are_the_same_function():
    scene = random_scene(np.random.default_rng(3))
    scene.clouds = 0.5
    h, w = 32, 64
    pano = render_equirect(scene, h, w, ss=1)
    lon, lat = equirect_lonlat(h, w, dtype=torch.float64)
    for i, j in [(5, 7), (16, 40), (20, 63), (0, 0)]:
        v = View(float(lon[0, j]), float(lat[i, 0]), math.radians(60))
        view = render_view(scene, v, 33, 33, ss=1)  # odd size: the centre pixel looks along the optical axis
        assert torch.allclose(view[:, 16, 16], pano[:, i, j], rtol=1e-5, atol=1e-6)


def test_sun_is_2_to_the_ratio_times_the_horizon_sky():
    for ratio in (15.0, 19.0):
        s = Scene(sky="blue", sun_lon=30, sun_lat=20, sun_ratio_log2=ratio)
        d = lonlat_to_direction(torch.tensor(math.radians(30), dtype=torch.float64),
                                torch.tensor(math.radians(20), dtype=torch.float64))
        peak = radiance(d, s).max()
        hor = float(torch.tensor(SKIES["blue"][0]).mean())
        assert abs(math.log2(float(peak) / hor) - ratio) < 0.01
        # the sky far from the sun stays near 1 (about 19 stops below the sun at ratio 19)
        far = radiance(lonlat_to_direction(torch.tensor(math.radians(-150.0), dtype=torch.float64),
                                           torch.tensor(0.5, dtype=torch.float64)), s)
        assert float(far.max()) < 1.1


def test_shapes_at_their_directions_and_caption():
    s = Scene(sun_lon=-120, shapes=[Shape("square", "red", 90.0, 10.0, 10.0, "to the right")])
    d = lambda lon, lat: lonlat_to_direction(torch.tensor(math.radians(lon), dtype=torch.float64),
                                             torch.tensor(math.radians(lat), dtype=torch.float64))
    light = 0.6 + 0.8 * math.sin(math.radians(s.sun_lat))
    assert torch.allclose(radiance(d(90, 10), s), torch.tensor(COLOURS["red"], dtype=torch.float64) * light)
    assert not torch.allclose(radiance(d(-90, 10), s), torch.tensor(COLOURS["red"], dtype=torch.float64) * light)
    assert "a red square to the right" in s.caption()
    g = radiance(d(0, -30), s)
    assert float(g.max()) < 0.5  # ground below the horizon, darker than the sky
