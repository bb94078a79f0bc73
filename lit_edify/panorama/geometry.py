"""Equirectangular <-> perspective geometry (Edify Image Sec. 6), plain torch, pure functions (py360convert's
``e2p`` / ``p2e`` style: tensors and angles in, tensors out, no state).

Conventions (all angles in radians):
* World directions are unit vectors (x, y, z): y up, z forward (longitude 0), x right (longitude +pi/2).
  ``lon = atan2(x, z)`` in [-pi, pi), ``lat = asin(y)`` in [-pi/2, pi/2].
* An equirectangular image (B, C, H, W) has pixel centres at ``lon = (j + 0.5) / W * 2pi - pi`` and
  ``lat = pi/2 - (i + 0.5) / H * pi``: column 0 and column W-1 are neighbours on the sphere (longitude wrap).
* A perspective view is (yaw, pitch, fov): yaw is the longitude of its optical axis, pitch its latitude (up
  positive), fov the horizontal field of view; square pixels, so ``tan(fov_y/2) = tan(fov/2) * h / w``. The
  camera ray of pixel (i, j) is ``(xs, ys, 1)`` with ``xs = ((j + 0.5) / w * 2 - 1) tan(fov/2)`` and
  ``ys = -((i + 0.5) / h * 2 - 1) tan(fov_y/2)``, turned to the world by ``R_y(yaw) R_x(pitch)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["View", "camera_to_world", "equirect_directions", "equirect_to_perspective", "lonlat_to_direction",
           "direction_to_lonlat", "perspective_directions", "perspective_to_equirect", "project_to_view", "sample_view",
           "solid_angle_weights", "view_weight", "wrap_pad"]
Tensor = torch.Tensor


@dataclass(frozen=True)
class View:
    """One perspective camera: yaw / pitch of the optical axis and horizontal field of view (radians)."""
    yaw: float
    pitch: float
    fov: float

    def tan_half(self, h: int, w: int) -> tuple[float, float]:
        """(tan(fov_x / 2), tan(fov_y / 2)) for an h x w image with square pixels."""
        tx = math.tan(self.fov / 2)
        return tx, tx * h / w


def lonlat_to_direction(lon: Tensor, lat: Tensor) -> Tensor:
    """Unit directions (..., 3) = (cos(lat) sin(lon), sin(lat), cos(lat) cos(lon))."""
    return torch.stack([lat.cos() * lon.sin(), lat.sin(), lat.cos() * lon.cos()], -1)


def direction_to_lonlat(d: Tensor) -> tuple[Tensor, Tensor]:
    """(lon, lat) of directions (..., 3) (need not be unit length): lon = atan2(x, z), lat = atan2(y, |xz|)."""
    x, y, z = d.unbind(-1)
    return torch.atan2(x, z), torch.atan2(y, torch.hypot(x, z))


def equirect_lonlat(h: int, w: int, rows: slice = slice(None), device=None, dtype=torch.float32):
    """Longitude (1, W) and latitude (R, 1) of the pixel centres of an h x w equirectangular image (rows ``rows``)."""
    lon = (torch.arange(w, device=device, dtype=torch.float64) + 0.5) / w * 2 * math.pi - math.pi
    lat = math.pi / 2 - (torch.arange(h, device=device, dtype=torch.float64)[rows] + 0.5) / h * math.pi
    return lon.to(dtype)[None, :], lat.to(dtype)[:, None]


def equirect_directions(h: int, w: int, rows: slice = slice(None), device=None, dtype=torch.float32) -> Tensor:
    """World directions (R, W, 3) of the pixel centres of an h x w equirectangular image (rows ``rows``)."""
    lon, lat = equirect_lonlat(h, w, rows, device, dtype)
    return lonlat_to_direction(lon.expand(lat.shape[0], -1), lat.expand(-1, w))


def _rotation(view: View, dtype=torch.float32, device=None) -> Tensor:
    """R = R_y(yaw) R_x(pitch): camera axes -> world; R @ (0, 0, 1) is the optical axis."""
    cy, sy, cp, sp = math.cos(view.yaw), math.sin(view.yaw), math.cos(view.pitch), math.sin(view.pitch)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rx = torch.tensor([[1, 0, 0], [0, cp, sp], [0, -sp, cp]], dtype=torch.float64)
    return (ry @ rx).to(device=device, dtype=dtype)


def camera_to_world(d_cam: Tensor, view: View) -> Tensor:
    """Camera-frame rays (..., 3) -> world directions (..., 3) (not normalised)."""
    return d_cam @ _rotation(view, d_cam.dtype, d_cam.device).T


def perspective_directions(view: View, h: int, w: int, device=None, dtype=torch.float32) -> Tensor:
    """Unit world directions (h, w, 3) of the pixel centres of an h x w view."""
    tx, ty = view.tan_half(h, w)
    xs = ((torch.arange(w, device=device, dtype=dtype) + 0.5) / w * 2 - 1) * tx
    ys = -((torch.arange(h, device=device, dtype=dtype) + 0.5) / h * 2 - 1) * ty
    d = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=device, dtype=dtype)], -1)
    d = camera_to_world(d, view)
    return d / d.norm(dim=-1, keepdim=True)


def project_to_view(d: Tensor, view: View, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Where world directions d (..., 3) land in an h x w view.

    Returns ``(xy, inside)``: normalised image coordinates (..., 2) in grid_sample's align_corners=False
    convention (-1 / +1 = the outer image edges) and a bool mask (...) of rays in front of the camera that
    land inside the image."""
    tx, ty = view.tan_half(h, w)
    c = d @ _rotation(view, d.dtype, d.device)  # world -> camera: R^T d, as row vectors
    z = c[..., 2]
    zs = torch.where(z > 1e-6, z, torch.ones_like(z))
    gx, gy = c[..., 0] / zs / tx, -c[..., 1] / zs / ty
    inside = (z > 1e-6) & (gx.abs() <= 1) & (gy.abs() <= 1)
    return torch.stack([gx, gy], -1), inside


def wrap_pad(pano: Tensor, p: int) -> Tensor:
    """Pad an equirectangular image (B, C, H, W) by ``p`` pixels: circularly in longitude (no seam) and across
    the poles in latitude (the row beyond the top is the top row half a turn away; needs an even W)."""
    w = pano.shape[-1]
    top = pano[..., :p, :].flip(-2).roll(w // 2, -1)
    bottom = pano[..., -p:, :].flip(-2).roll(w // 2, -1)
    x = torch.cat([top, pano, bottom], -2)
    return torch.cat([x[..., -p:], x, x[..., :p]], -1)


def sample_equirect(pano: Tensor, d: Tensor, mode: str = "bilinear") -> Tensor:
    """Values (B, C, *d.shape[:-1]) of an equirectangular image (B, C, H, W) along world directions d (h, w, 3),
    interpolated with no seam at the longitude wrap or the poles."""
    b, _, h, w = pano.shape
    p = 2
    lon, lat = direction_to_lonlat(d)
    u = (lon + math.pi) / (2 * math.pi) * w - 0.5 + p  # continuous pixel index in the padded image
    v = (math.pi / 2 - lat) / math.pi * h - 0.5 + p
    grid = torch.stack([(2 * u + 1) / (w + 2 * p) - 1, (2 * v + 1) / (h + 2 * p) - 1], -1)
    grid = grid.to(pano.dtype if pano.is_floating_point() else torch.float32)
    src = wrap_pad(pano, p)
    src = src if src.is_floating_point() else src.float()
    return F.grid_sample(src, grid[None].expand(b, *grid.shape), mode=mode, padding_mode="border", align_corners=False)


def equirect_to_perspective(pano: Tensor, view: View, out_hw: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Perspective view (B, C, h, w) of an equirectangular image (B, C, H, W) (``e2p``)."""
    return sample_equirect(pano, perspective_directions(view, *out_hw, device=pano.device), mode)


def sample_view(img: Tensor, view: View, d: Tensor, mode: str = "bilinear") -> Tensor:
    """Values (C, *d.shape[:-1]) of a perspective image (C, h, w) along world directions d (R, W, 3); 0 where
    the ray misses the view."""
    xy, inside = project_to_view(d, view, *img.shape[-2:])
    src = img[None] if img.is_floating_point() else img[None].float()
    out = F.grid_sample(src, xy[None].to(src.dtype), mode=mode, padding_mode="border", align_corners=False)[0]
    return out * inside.to(out.dtype)


def perspective_to_equirect(img: Tensor, view: View, out_hw: tuple[int, int], rows: slice = slice(None),
                            mode: str = "bilinear") -> tuple[Tensor, Tensor]:
    """A perspective view (B, C, h, w) warped into equirectangular coordinates (``p2e``).

    Returns ``(pano (B, C, R, W), inside (R, W) bool)`` for the rows ``rows`` of an ``out_hw`` = (H, W) image
    (all rows by default; row bands keep 16K assemblies in bounded memory); outside the view the values are 0."""
    d = equirect_directions(*out_hw, rows=rows, device=img.device)
    xy, inside = project_to_view(d, view, *img.shape[-2:])
    src = img if img.is_floating_point() else img.float()
    out = F.grid_sample(src, xy[None].expand(img.shape[0], *xy.shape).to(src.dtype), mode=mode,
                        padding_mode="border", align_corners=False)
    return out * inside.to(out.dtype), inside


def view_weight(d: Tensor, view: View, h: int, w: int) -> Tensor:
    """Blending weight (...) of a view along directions d (..., 3): a tent ``(1 - |x|)(1 - |y|)`` over its
    normalised image coordinates, 1 at the centre, 0 at and beyond the image border (feathered seams)."""
    xy, inside = project_to_view(d, view, h, w)
    t = (1 - xy.abs()).clamp(min=0).prod(-1)
    return t * inside.to(t.dtype)


def solid_angle_weights(h: int, w: int, dtype=torch.float64) -> Tensor:
    """Exact solid angle (H, 1) of each pixel of an h x w equirectangular image (same for every column):
    ``(sin(lat_top) - sin(lat_bottom)) * 2pi / W``; the H x W pixels sum to 4pi."""
    edges = math.pi / 2 - torch.arange(h + 1, dtype=torch.float64) / h * math.pi
    return ((edges[:-1].sin() - edges[1:].sin()) * 2 * math.pi / w).to(dtype)[:, None]
