"""Virtual camera (HDR -> LDR, HDRCNN / ExpandNet style) for training LDR2HDR, and the HDR metrics it is judged by.

An LDR image is what a camera makes of scene radiance: scale by an exposure, clip at white, apply a camera
response curve (CRF), quantise to 8 bits, maybe JPEG-compress. Radiance is *exposure-relative*: 1.0 is the
clipping level of the exposure the LDR was taken at. Absolute luminance needs the exposure (metadata or a
``--exposure`` scale); no network can recover it from pixels alone.

Images here are (B, 3, H, W) float tensors: HDR linear >= 0, LDR in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["VirtualCamera", "dynamic_range_stops", "gamma_crf", "hdr_metrics", "inverse_crf", "log_l1",
           "luminance", "mu_law", "mu_law_psnr", "srgb_decode", "srgb_encode"]
Tensor = torch.Tensor
LOG_EPS = 1.0 / 1024  # log-space floor: 10 stops below the clipping level


def srgb_encode(x: Tensor) -> Tensor:
    """IEC 61966-2-1 sRGB transfer function, linear [0, 1] -> encoded [0, 1]."""
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def srgb_decode(y: Tensor) -> Tensor:
    """Inverse of :func:`srgb_encode`, encoded [0, 1] -> linear [0, 1]."""
    y = y.clamp(0, 1)
    return torch.where(y <= 0.04045, y / 12.92, ((y + 0.055) / 1.055) ** 2.4)


def gamma_crf(x: Tensor, gamma: float | Tensor) -> Tensor:
    """A gamma camera response x^(1/gamma) on [0, 1]."""
    return x.clamp(0, 1) ** (1 / gamma)


def inverse_crf(ldr: Tensor) -> Tensor:
    """The baseline LDR -> HDR: invert the (sRGB) camera curve; clipped pixels stay at 1."""
    return srgb_decode(ldr)


def luminance(x: Tensor) -> Tensor:
    """Rec. 709 luminance (B, 1, H, W) of linear RGB (B, 3, H, W)."""
    w = torch.tensor([0.2126, 0.7152, 0.0722], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def auto_exposure(hdr: Tensor, key: float = 0.18) -> Tensor:
    """Per-image scale (B, 1, 1, 1) that maps the geometric-mean luminance to ``key`` (Reinhard's key value)."""
    lum = luminance(hdr).clamp(min=1e-6)
    return key / lum.log().mean((1, 2, 3), keepdim=True).exp()


@dataclass
class VirtualCamera:
    """Random HDR -> LDR conversion for training (and the fixed sRGB camera for evaluation with ``eval()``).

    exposure_stops: range of extra exposure (stops) around auto exposure; gamma: CRF gamma range (the sRGB curve
    when ``srgb_p`` hits); jpeg_p / jpeg_quality: chance and quality range of JPEG compression."""
    exposure_stops: tuple[float, float] = (-1.5, 1.5)
    srgb_p: float = 0.5
    gamma: tuple[float, float] = (2.0, 2.4)
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (75, 98)
    key: float = 0.18

    def expose(self, hdr: Tensor, rng: np.random.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(ldr (B, 3, H, W) in [0, 1], exposed HDR target (B, 3, H, W)). ``rng=None`` is the deterministic
        evaluation camera: auto exposure, sRGB curve, 8 bits, no JPEG."""
        b = hdr.shape[0]
        scale = auto_exposure(hdr, self.key)
        if rng is not None:
            stops = torch.tensor(rng.uniform(*self.exposure_stops, b), dtype=hdr.dtype).view(b, 1, 1, 1)
            scale = scale * 2.0 ** stops
        target = hdr * scale
        clipped = target.clamp(0, 1)
        if rng is None:
            ldr = srgb_encode(clipped)
        else:
            ldr = torch.stack([srgb_encode(c) if rng.random() < self.srgb_p else gamma_crf(c, rng.uniform(*self.gamma))
                               for c in clipped])
        ldr = (ldr * 255).round() / 255
        if rng is not None:
            ldr = torch.stack([_jpeg(x, int(rng.integers(*self.jpeg_quality))) if rng.random() < self.jpeg_p else x
                               for x in ldr])
        return ldr, target


def _jpeg(x: Tensor, quality: int) -> Tensor:
    """JPEG round trip of one (3, H, W) image in [0, 1] (OpenCV)."""
    import cv2

    u8 = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)[..., ::-1]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).to(x.dtype) / 255


# --------------------------------------------------------------------------------------------------- metrics
def log_l1(pred: Tensor, true: Tensor) -> float:
    """Mean |ln(pred + eps) - ln(true + eps)| (eps = 2^-10 of the clipping level)."""
    return float(((pred + LOG_EPS).log() - (true + LOG_EPS).log()).abs().mean())


def mu_law(x: Tensor, mu: float = 5000.0) -> Tensor:
    """mu-law tone mapping ln(1 + mu x) / ln(1 + mu) of x in [0, 1] (Kalantari & Ramamoorthi 2017)."""
    return torch.log1p(mu * x.clamp(0, 1)) / math.log1p(mu)


def mu_law_psnr(pred: Tensor, true: Tensor, mu: float = 5000.0) -> float:
    """PSNR (dB) of mu-law tone-mapped images, both divided by the true image's maximum."""
    m = true.max()
    mse = float(((mu_law(pred / m, mu) - mu_law(true / m, mu)) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-20))


def dynamic_range_stops(hdr: Tensor, low_percentile: float = 1.0) -> float:
    """log2(max luminance / the ``low_percentile``-th percentile of luminance)."""
    lum = luminance(hdr).flatten().double()
    lo = torch.quantile(lum[:: max(1, lum.numel() // 1_000_000)], low_percentile / 100).clamp(min=1e-8)
    return float(torch.log2(lum.max().clamp(min=1e-8) / lo))


def hdr_metrics(pred: Tensor, true: Tensor, ldr: Tensor, saturation: float = 0.95) -> dict[str, float]:
    """Acceptance figures of one image (1, 3, H, W): log L1, mu-law PSNR, dynamic range error (stops), peak
    error (stops) and the mean relative difference to the linearised input on unsaturated pixels."""
    unsat = (ldr.max(1, keepdim=True).values < saturation).expand_as(ldr)
    lin = inverse_crf(ldr)
    rel = ((pred - lin).abs() / lin.clamp(min=LOG_EPS))[unsat & (lin > 0.01)]
    return {"log_l1": log_l1(pred, true), "mu_psnr": mu_law_psnr(pred, true),
            "dr_err_stops": dynamic_range_stops(pred) - dynamic_range_stops(true),
            "peak_err_stops": math.log2(float(luminance(pred).max()) / float(luminance(true).max())),
            "unsat_rel_err": float(rel.mean()) if rel.numel() else 0.0}
