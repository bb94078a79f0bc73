"""LDR2HDR (Edify Image Sec. 6.1): a multi-scale U-Net that turns an LDR image (a generated panorama) into HDR.

The network first predicts a low-resolution HDR image (a small U-Net on the 4x area-downsampled input), then
concatenates its upsampled prediction with the full-resolution LDR input and predicts the full-resolution HDR.
Both predict log intensity (ln(radiance + 2^-10), exposure-relative: 1.0 = the LDR's clipping level), as residuals
over the linearised input. Training inputs come from HDR images through a virtual camera
(:class:`lit_edify.panorama.camera.VirtualCamera`: random exposure, clipping, CRF, 8-bit quantisation, JPEG).
As in HDRCNN, the output keeps the linearised input where it is not near saturation: ``alpha = clamp((max_c LDR -
tau) / (1 - tau), 0, 1)`` blends prediction and input, so unsaturated pixels are exactly the input inverted through
the sRGB curve and the network only invents what clipping destroyed (sun, bright clouds).

What it shares with the diffusion modules (:class:`lit_edify.modules.mixin.LaplacianDiffusionMixin`): the data
layer (LightningDataModules, here ``lit_edify.data_modules.hdr_data``), the EMA callback, the logging and sample
callbacks' conventions, the LightningCLI / ``lit-edify fit`` entry point, the safe checkpoint registry and the
optimiser (:class:`OptimConfig`, ``adamw_with_warmup``). Why it is not a diffusion model and does not use the
mixin: the mapping LDR -> HDR is nearly deterministic given the input (the report trains it as regression in log
space), there is no noise schedule, text conditioning or sampler, and it must run once over a 16K panorama in
tiles (:func:`tiled_hdr`), which a 30-step sampler could not afford.
"""
from __future__ import annotations

from dataclasses import asdict

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lit_edify.modules.config import OptimConfig, coerce
from lit_edify.modules.mixin import adamw_with_warmup, planned_steps
from lit_edify.modules.registry import record_class, register
from lit_edify.panorama.camera import LOG_EPS, VirtualCamera, hdr_metrics, inverse_crf, srgb_decode

__all__ = ["LDR2HDR", "LDR2HDRNet", "pitched_hdr", "tiled_hdr", "wrap_bilinear"]
Tensor = torch.Tensor


def log_linear(ldr: Tensor) -> Tensor:
    """ln of the LDR inverted through the sRGB curve (+ ``LOG_EPS``): the output wherever nothing is near saturation."""
    return (srgb_decode(ldr) + LOG_EPS).log()


def _block(ci: int, co: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1), nn.SiLU(), nn.Conv2d(co, co, 3, padding=1), nn.SiLU())


class LowUNet(nn.Module):
    """Two-level U-Net on the low-resolution input (total stride 4)."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.e0, self.e1, self.mid = _block(cin, width), _block(width, 2 * width), _block(2 * width, 4 * width)
        self.d1, self.d0 = _block(6 * width, 2 * width), _block(3 * width, width)
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        e0 = self.e0(x)
        e1 = self.e1(F.avg_pool2d(e0, 2))
        m = self.mid(F.avg_pool2d(e1, 2))
        d1 = self.d1(torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), e1], 1))
        d0 = self.d0(torch.cat([F.interpolate(d1, scale_factor=2.0, mode="nearest"), e0], 1))
        return self.out(d0)


class LDR2HDRNet(nn.Module):
    """LDR (B, 3, H, W) in [0, 1], H and W multiples of 16 -> (log HDR (B, 3, H, W), low-res log HDR
    (B, 3, H/4, W/4)); log HDR = ln(exposure-relative radiance + 2^-10)."""

    factor = 4
    out_scale = 8.0  # heads predict log / 8: the sun is ~12 (natural log) above the clipping level
    stride = 16  # factor x the low U-Net's stride: tiles must start on multiples of this

    def __init__(self, width: int = 24, high_width: int = 24, tau: float = 0.9):
        super().__init__()
        self.tau = tau
        self.low = LowUNet(6, width)
        self.high = nn.Sequential(nn.Conv2d(9, high_width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(high_width, high_width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(high_width, 3, 3, padding=1))
        for head in (self.low.out, self.high[-1]):  # start as the identity over the linearised input
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, ldr: Tensor) -> tuple[Tensor, Tensor]:
        log_lin = log_linear(ldr)
        x = torch.cat([ldr * 2 - 1, log_lin / 4], 1)
        low_x = F.avg_pool2d(x, self.factor)
        low = self.out_scale * self.low(low_x) + F.avg_pool2d(log_lin, self.factor)
        up = F.interpolate(low, scale_factor=float(self.factor), mode="bilinear", align_corners=False)
        high = self.out_scale * self.high(torch.cat([x, up / 4], 1)) + up
        alpha = self.alpha(ldr)
        return alpha * high + (1 - alpha) * log_lin, low

    def alpha(self, ldr: Tensor) -> Tensor:
        """Blend weight (B, 1, H, W) of the prediction: 0 below ``tau`` (the output is the linearised input), 1 at
        clipping."""
        return ((ldr.max(-3, keepdim=True).values - self.tau) / (1 - self.tau)).clamp(0, 1)


def tiled_hdr(net: LDR2HDRNet, ldr: Tensor, tile: int = 512, halo: int = 128, wrap_x: bool = True,
              out: Tensor | None = None, progress=None) -> Tensor:
    """Run ``net`` over an LDR image (3, H, W) (uint8 0..255 or float [0, 1]) tile by tile; returns the log HDR
    (3, H, W) in ``out`` (default float16; preallocate to bound memory). Each tile sees ``halo`` extra pixels on
    every side (wrapping around in x when ``wrap_x``, as an equirectangular panorama does); with a halo at least
    the network's receptive field the result equals the untiled output. Tiles with no pixel above ``net.tau`` skip
    the network: there the output is the linearised input by construction. H and W must be multiples of 16."""
    c, h, w = ldr.shape
    s = net.stride
    if h % s or w % s or tile % s or halo % s:
        raise ValueError(f"image {h}x{w}, tile {tile} and halo {halo} must be multiples of {s}")
    out = torch.empty(3, h, w, dtype=torch.float16) if out is None else out
    dev = next(net.parameters()).device
    tiles = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
    for y, x in (progress(tiles) if progress else tiles):
        y0, y1 = max(0, y - halo), min(h, y + tile + halo)
        if wrap_x:
            cols = torch.arange(x - halo, min(w, x + tile) + halo) % w
            src = ldr[:, y0:y1][:, :, cols]
            x0 = halo
        else:
            xa, xb = max(0, x - halo), min(w, x + tile + halo)
            src, x0 = ldr[:, y0:y1, xa:xb], x - xa
        src = _unit(src)
        th, tw = min(tile, h - y), min(tile, w - x)
        core = src[:, y - y0:y - y0 + th, x0:x0 + tw]
        if float(core.max()) <= net.tau:  # nothing near saturation: the output is the linearised input, exactly
            pred = log_linear(core)
        else:
            with torch.no_grad():
                pred = net(src[None].to(dev))[0][0].cpu()[:, y - y0:y - y0 + th, x0:x0 + tw]
        out[:, y:y + th, x:x + tw] = pred.to(out.dtype)
    return out


def wrap_bilinear(lo: Tensor, s: int, y: int, x: int, th: int, tw: int) -> Tensor:
    """Rows ``y:y+th`` and columns ``x:x+tw`` of ``lo`` (C, h, w) upsampled ``s`` times bilinearly between pixel
    centres (as ``F.interpolate(..., align_corners=False)``), clamped at the top and bottom rows and wrapping around
    in x as an equirectangular panorama does."""
    h, w = lo.shape[-2:]
    fy = ((torch.arange(y, y + th, dtype=torch.float64) + 0.5) / s - 0.5).clamp(0, h - 1)
    fx = (torch.arange(x, x + tw, dtype=torch.float64) + 0.5) / s - 0.5
    y0, x0 = fy.floor(), fx.floor()
    wy, wx = (fy - y0).to(lo.dtype)[:, None], (fx - x0).to(lo.dtype)
    y0, x0 = y0.long(), x0.long()
    y1, x1, x0 = (y0 + 1).clamp(max=h - 1), (x0 + 1) % w, x0 % w
    top, bottom = lo[:, y0], lo[:, y1]
    top = top[:, :, x0] * (1 - wx) + top[:, :, x1] * wx
    bottom = bottom[:, :, x0] * (1 - wx) + bottom[:, :, x1] * wx
    return top * (1 - wy) + bottom * wy


def pitched_hdr(net: LDR2HDRNet, ldr: Tensor, work_width: int, tile: int = 512, halo: int = 128,
                out: Tensor | None = None, progress=None) -> Tensor:
    """Log HDR (3, H, W) of an equirectangular LDR panorama (3, H, W) wider than the network was trained at: the
    network runs on the panorama area-averaged to ``work_width`` columns (the pixel pitch it learned sun sizes and
    glows at), and what it adds to the linearised input there (its residual, 0 wherever the small image is not near
    saturation) is upsampled bilinearly, wrapping in longitude, and added where the full-size input is near
    saturation: ``log HDR = log(linearised LDR) + alpha(LDR) * up(residual)``. Unsaturated pixels stay exactly the
    linearised input; memory is bounded by the small image and one ``tile`` x ``tile`` block."""
    h, w = ldr.shape[-2:]
    if work_width <= 0 or w % work_width or h % (w // work_width):
        raise ValueError(f"panorama {h}x{w} does not divide into {work_width} columns: choose a working width that "
                         "divides the panorama's width (and its height by the same factor)")
    s = w // work_width
    if h // s % net.stride:
        raise ValueError(f"the working size {h // s}x{work_width} must be a multiple of {net.stride}")
    out = torch.empty(3, h, w, dtype=torch.float16) if out is None else out
    band = max(1, tile // s) * s
    small = torch.cat([F.avg_pool2d(_unit(ldr[None, :, r:r + band]), s)[0] for r in range(0, h, band)], 1)
    pred = tiled_hdr(net, small, tile, halo, wrap_x=True, out=torch.empty(small.shape))
    residual = pred - log_linear(small)
    tiles = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
    for y, x in (progress(tiles) if progress else tiles):
        src = _unit(ldr[:, y:y + tile, x:x + tile])
        lin, alpha = log_linear(src), net.alpha(src)
        if float(alpha.max()) > 0:
            lin = lin + alpha * wrap_bilinear(residual, s, y, x, *src.shape[-2:])
        out[:, y:y + tile, x:x + tile] = lin.to(out.dtype)
    return out


def _unit(ldr: Tensor) -> Tensor:
    return ldr.float() / 255 if ldr.dtype == torch.uint8 else ldr.float()


#: LDR2HDR's optimiser defaults (a group given as a dict updates these)
OPTIM = OptimConfig(lr=2e-3, warmup_steps=50)


@register
class LDR2HDR(L.LightningModule):
    """LDR -> HDR training: batches hold ``image`` (B, 3, H, W) linear radiance (any scale: the virtual camera
    exposes it); loss = L1 of log HDR at full resolution + ``low_weight`` x L1 at the low resolution, both
    averaged over the saturated pixels (elsewhere the output is the linearised input by construction) with weights
    1 + log radiance above the clipping level.

    Args:
        width / high_width: channels of the low-resolution U-Net / the full-resolution head.
        tau: saturation level above which the output is predicted (below: the linearised input).
        low_weight: weight of the low-resolution loss.
        work_width: panorama width (columns for 360 degrees) at which :meth:`to_hdr` runs the network on wider
            panoramas (:func:`pitched_hdr`); set it to the training panoramas' width, since sun sizes and glows are
            per-pixel quantities. None: always at the input's own size.
        camera: :class:`VirtualCamera` arguments (dict).
        optim: :class:`OptimConfig` (or its dict).
    """

    def __init__(self, width: int = 24, high_width: int = 24, tau: float = 0.9, low_weight: float = 0.5,
                 work_width: int | None = None, camera: dict | None = None, optim: OptimConfig = OPTIM,
                 seed: int = 0):
        super().__init__()
        optim = coerce(OptimConfig, optim, OPTIM)  # a dict (YAML, checkpoint) updates this module's defaults
        self.save_hyperparameters({"width": width, "high_width": high_width, "tau": tau, "low_weight": low_weight,
                                   "work_width": work_width, "camera": dict(camera or {}), "optim": asdict(optim),
                                   "seed": seed})
        if work_width is not None and (work_width <= 0 or work_width % LDR2HDRNet.stride):
            raise ValueError(f"work_width {work_width} must be a positive multiple of {LDR2HDRNet.stride}")
        self.optim = optim
        self.camera = VirtualCamera(**(camera or {}))
        self.net = LDR2HDRNet(width, high_width, tau)
        self.rng = np.random.default_rng(seed)

    def forward(self, ldr: Tensor) -> Tensor:
        """LDR (B, 3, H, W) in [0, 1] -> HDR (B, 3, H, W) linear, exposure-relative."""
        return (self.net(ldr)[0].exp() - LOG_EPS).clamp(min=0)

    def loss(self, hdr: Tensor, rng: np.random.Generator | None) -> tuple[Tensor, Tensor]:
        ldr, target = self.camera.expose(hdr.float().cpu(), rng)
        ldr, target = ldr.to(self.device), target.to(self.device)
        pred, low = self.net(ldr)
        log_t = (target + LOG_EPS).log()
        err = (pred - log_t).abs()
        sat = (ldr.max(1, keepdim=True).values > self.net.tau).expand_as(err).float()
        low_t = (F.avg_pool2d(target, self.net.factor) + LOG_EPS).log()
        low_sat = F.max_pool2d(sat, self.net.factor)
        # Unsaturated pixels are the linearised input by construction: the loss covers the saturated ones, each
        # weighted by 1 + its log radiance above the clipping level, so the few sun pixels (log ~ 10) are not
        # outvoted by the many barely-clipped ones (measured: sun peak error -13 -> -2 stops in 300 steps).
        w, w_low = sat * (1 + log_t.clamp(min=0)), low_sat * (1 + low_t.clamp(min=0))
        loss = (err * w).sum() / w.sum().clamp(min=1)
        loss = loss + self.hparams.low_weight * ((low - low_t).abs() * w_low).sum() / w_low.sum().clamp(min=1)
        return loss, err.mean().detach()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, full = self.loss(batch["image"], self.rng)
        self.log_dict({"train/loss": loss, "train/log_l1": full}, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        hdr = batch["image"].float()
        ldr, target = self.camera.expose(hdr.cpu(), None)
        pred = self(ldr.to(self.device)).cpu()
        m = hdr_metrics(pred, target, ldr)
        base = hdr_metrics(inverse_crf(ldr), target, ldr)
        self.log_dict({"val/log_l1": m["log_l1"], "val/mu_psnr": m["mu_psnr"], "val/log_l1_inverse_crf":
                       base["log_l1"]}, batch_size=hdr.shape[0])

    def configure_optimizers(self):
        return adamw_with_warmup([{"params": list(self.net.parameters())}], self.optim, planned_steps(self))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        record_class(self, checkpoint)

    @torch.no_grad()
    def to_hdr(self, ldr: Tensor, tile: int = 512, halo: int = 128, wrap_x: bool = True, progress=None,
               work_width: int | None = None) -> Tensor:
        """Log HDR (3, H, W) float16 of an LDR panorama (3, H, W) (uint8 or float [0, 1]), tiled; H, W multiples
        of 16 (see :func:`tiled_hdr`). A panorama wider than ``work_width`` (default: the hyperparameter) is
        converted at that width and its prediction upsampled (:func:`pitched_hdr`, which needs ``wrap_x``)."""
        work = work_width or self.hparams.get("work_width")
        if work and ldr.shape[-1] > work:
            if not wrap_x:
                raise ValueError("a working width applies to equirectangular panoramas (wrap_x=True) only")
            return pitched_hdr(self.net.eval(), ldr, work, tile, halo, progress=progress)
        return tiled_hdr(self.net.eval(), ldr, tile, halo, wrap_x, progress=progress)

