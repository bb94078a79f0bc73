"""Equirectangular <-> perspective warps, view plan coverage and assembly (Edify Image Sec. 6)."""
import math

import numpy as np
import py360convert
import torch

from lit_edify.panorama.geometry import (View, direction_to_lonlat, equirect_directions, equirect_to_perspective,
                                         lonlat_to_direction, perspective_directions, perspective_to_equirect,
                                         project_to_view, solid_angle_weights, wrap_pad)
from lit_edify.panorama.plan import (assemble, coverage_counts, covered_fraction, horizon_fov,
                                     ring_lowest_latitude, view_plan)


def field(d):
    """A smooth function of direction (no seam, no pole singularity), 3 channels: (1, 3, *d.shape[:-1])."""
    x, y, z = d.unbind(-1)
    return torch.stack([0.5 + 0.3 * x * y + 0.2 * z, 0.4 + 0.3 * (x * x - z), 0.5 + 0.25 * y * z - 0.2 * x], 0)[None]


def smooth_pano(h, w):
    return field(equirect_directions(h, w))


def test_directions_round_trip_and_conventions():
    lon = torch.tensor([0.0, math.pi / 2, -math.pi / 2, 1.0]); lat = torch.tensor([0.0, 0.0, 0.3, -1.2])
    d = lonlat_to_direction(lon, lat)
    assert torch.allclose(d[0], torch.tensor([0.0, 0.0, 1.0]))  # lon 0 = forward (z)
    assert torch.allclose(d[1], torch.tensor([1.0, 0.0, 0.0]), atol=1e-7)  # lon +90 = right (x)
    lo, la = direction_to_lonlat(d)
    assert torch.allclose(lo, lon, atol=1e-6) and torch.allclose(la, lat, atol=1e-6)
    # the view's centre ray is its optical axis; its top edge is pitch + fov_y/2 at the centre column
    v = View(0.7, 0.2, math.radians(60))
    dv = perspective_directions(v, 64, 64, dtype=torch.float64)
    c = (dv[31, 31] + dv[32, 32]) / 2
    lo, la = direction_to_lonlat(c / c.norm())
    assert abs(lo - 0.7) < 1e-6 and abs(la - 0.2) < 1e-6


def test_equirect_to_perspective_matches_the_field_exactly_sampled():
    """Sampling a smooth equirectangular image gives the field's value along the view's rays (interpolation
    error only), including views across the longitude wrap and over the poles."""
    pano = smooth_pano(512, 1024)
    for v in [View(math.pi, 0.0, 1.5), View(-3.0, 0.4, 1.2), View(0.3, math.pi / 2, 2.0), View(1.0, -1.4, 1.6)]:
        got = equirect_to_perspective(pano, v, (48, 64))
        want = field(perspective_directions(v, 48, 64))
        assert (got - want).abs().max() < 2e-3, v


def test_round_trip_perspective_equirect_perspective():
    """perspective -> equirectangular -> perspective: error < 1e-3 away from the borders."""
    v = View(math.pi - 0.2, 0.3, math.radians(80))  # straddles the longitude wrap
    img = field(perspective_directions(v, 96, 96, dtype=torch.float64)).float()
    pano, inside = perspective_to_equirect(img, v, (1024, 2048))
    back = equirect_to_perspective(pano, v, (96, 96))
    interior = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert (back[interior] - img[interior]).abs().max() < 1e-3
    assert 0.05 < inside.float().mean() < 0.2


def test_wrap_pad_is_circular_in_longitude_and_crosses_the_poles():
    x = torch.arange(4 * 8.0).view(1, 1, 4, 8)
    p = wrap_pad(x, 1)
    assert torch.equal(p[0, 0, 1:-1, 0], x[0, 0, :, -1]) and torch.equal(p[0, 0, 1:-1, -1], x[0, 0, :, 0])
    assert torch.equal(p[0, 0, 0, 1:-1], x[0, 0, 0].roll(4))  # beyond the top: the top row half a turn away
    # no seam: an equirectangular image of a smooth field sampled exactly at lon = pi is continuous
    pano = smooth_pano(64, 128)
    d = lonlat_to_direction(torch.tensor([[math.pi - 1e-4, -math.pi + 1e-4]]), torch.tensor([[0.3, 0.3]]))
    from lit_edify.panorama.geometry import sample_equirect
    s = sample_equirect(pano, d)
    assert (s[..., 0] - s[..., 1]).abs().max() < 1e-3


def test_agrees_with_py360convert():
    """Golden reference: py360convert.e2p. Its pixel grid spans the field of view corner to corner
    (linspace(-tan, tan, w)), ours centre to centre, so its fov is set to give the same rays; its u is our yaw
    in degrees, its v our pitch."""
    rng = np.random.default_rng(0)
    e = rng.random((64, 128, 3)).astype(np.float32)
    e = np.asarray(torch.nn.functional.interpolate(torch.from_numpy(e).permute(2, 0, 1)[None], (256, 512),
                                                   mode="bicubic", align_corners=False)[0].permute(1, 2, 0))
    hw, fov = (40, 40), math.radians(70)
    for yaw, pitch in [(0.0, 0.0), (1.2, 0.3), (-2.5, -0.6)]:
        fov_ref = 2 * math.atan(math.tan(fov / 2) * (hw[1] - 1) / hw[1])
        ref = py360convert.e2p(e, math.degrees(fov_ref), math.degrees(yaw), math.degrees(pitch), hw)
        ours = equirect_to_perspective(torch.from_numpy(e).permute(2, 0, 1)[None], View(yaw, pitch, fov), hw)
        diff = np.abs(ours[0].permute(1, 2, 0).numpy() - ref)
        assert diff.mean() < 2e-3 and diff.max() < 3e-2, (yaw, pitch, diff.mean(), diff.max())


def test_solid_angle_weights_sum_to_the_sphere():
    sa = solid_angle_weights(7, 10)
    assert abs(float(sa.sum()) * 10 - 4 * math.pi) < 1e-12
    assert abs(float(sa[0, 0]) - 2 * math.pi * (1 - math.cos(math.pi / 7)) / 10) < 1e-12  # polar cap / W


def test_view_plan_covers_the_sphere_with_the_configured_overlap():
    n, overlap, pole = 8, 0.5, 10.0
    views = view_plan(n, overlap, pole)
    assert len(views) == n + 2 and views[-2].pitch == math.pi / 2 and views[-1].pitch == -math.pi / 2
    counts = coverage_counts(views, 32, 32, (256, 512))
    assert covered_fraction(counts) == 1.0
    # horizon neighbours share exactly `overlap` of the field of view along the horizon
    fov = horizon_fov(n, overlap)
    assert abs((fov - 2 * math.pi / n) / fov - overlap) < 1e-12
    lon = torch.linspace(-math.pi, math.pi, 3601)[:-1]
    d0 = lonlat_to_direction(lon, torch.zeros_like(lon))
    a, b = (project_to_view(d0, v, 32, 32)[1] for v in views[:2])
    shared = float((a & b).float().sum() / a.float().sum())
    assert abs(shared - overlap) < 2e-3
    # the zenith / nadir views cover a band of at least pole_overlap degrees below the ring's lowest latitude
    lat0 = ring_lowest_latitude(n, fov)
    for sign, pv in ((1, views[-2]), (-1, views[-1])):
        lats = sign * torch.linspace(lat0 - math.radians(pole), math.pi / 2, 50)
        d = lonlat_to_direction(lon[None, :].expand(50, -1), lats[:, None].expand(-1, lon.numel()))
        assert bool(project_to_view(d, pv, 32, 32)[1].all())
    # ... and the ring covers every longitude up to lat0 (so the band is seen twice)
    d = lonlat_to_direction(lon, torch.full_like(lon, lat0 - 1e-4))
    assert bool(sum(project_to_view(d, v, 32, 32)[1].long() for v in views[:n]).min() >= 1)


def test_assembly_of_exact_views_reproduces_the_field_without_seam():
    views = view_plan(8, 0.5, 10.0)
    imgs = [field(perspective_directions(v, 64, 64))[0] for v in views]
    pano = assemble(views, imgs, (128, 256), band=40)
    want = smooth_pano(128, 256)[0]
    assert (pano - want).abs().max() < 0.02
    seam = (pano[..., 0] - pano[..., -1]).abs().mean()
    inner = (pano[..., 1:] - pano[..., :-1]).abs().mean()
    assert seam / inner < 1.2
    u8 = assemble(views, imgs, (128, 256), band=64, out=torch.empty(3, 128, 256, dtype=torch.uint8))
    assert (u8.float() / 255 - pano.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
