"""Text (+ optional example view) -> 360-degree HDR panorama (Edify Image Sec. 6.1).

1. Sequential inpainting (:func:`generate_views`): views of :func:`lit_edify.panorama.plan.view_plan` are generated
   one after another by the base with the inpainting ControlNet. Before each view, everything generated so far
   (an equirectangular canvas) is projected into the new view's coordinates; that overlap is the control's masked
   image (mask = the pixels nobody has seen yet). After sampling, the known overlap is kept as it was, so the last
   horizon view agrees with the first one (loop closure at the longitude wrap) and with every earlier view. The
   zenith and nadir views come last and see the overlap of all horizon views.
2. Assembly (:func:`lit_edify.panorama.plan.assemble`) at the requested size, in row bands, into a uint8 buffer.
3. LDR2HDR (:class:`lit_edify.modules.ldr2hdr.LDR2HDR`), tiled; the .exr / .hdr and a tone-mapped preview PNG are
   written atomically (:func:`write_outputs`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lit_edify.nn.controlnet import TASKS, inpaint_mask
from lit_edify.panorama.geometry import (View, equirect_directions, equirect_to_perspective, perspective_to_equirect,
                                         view_weight)
from lit_edify.panorama.metrics import boundary_ratio
from lit_edify.panorama.plan import assemble, view_plan

__all__ = ["SIZES", "PanoramaViews", "generate_views", "hdr_to_outputs", "inpaint_hint", "inpaint_sampler",
           "keep_known", "naive_assembly", "panorama", "tone_map"]
Tensor = torch.Tensor
SIZES = {"4k": (2048, 4096), "8k": (4096, 8192), "16k": (8192, 16384)}


@dataclass
class PanoramaViews:
    """Generated views (each (3, h, w) in [-1, 1]) with their cameras, and per-view overlap statistics."""
    views: list[View]
    images: list[Tensor]
    raw: list[Tensor] = field(default_factory=list)  # as sampled, before the known overlap was put back
    known: list[Tensor] = field(default_factory=list)  # (1, h, w) 1 where earlier content was projected in
    overlap_mad: list[float] = field(default_factory=list)  # mean |raw - earlier| over the overlap, [0, 1] units
    boundary: list[float] = field(default_factory=list)  # boundary_ratio of each view with an overlap


def inpaint_hint(image: Tensor, generate: Tensor, task: str) -> Tensor:
    """Inpainting control (1, 7, h, w): cat(image with 0 where generated, mask (1 = generate), task one-hot),
    the layout the inpainting ControlNet was trained on (DESIGN.md section 6)."""
    onehot = torch.zeros(1, len(TASKS), *image.shape[-2:])
    onehot[:, TASKS.index(task)] = 1
    return torch.cat([image * (1 - generate), generate, onehot], 1)


def keep_known(denoiser, known: Tensor, mask: Tensor):
    """A denoiser whose clean-image estimate keeps the known pixels: ``D'(x, sigma) = m * known + (1 - m) *
    D(x, sigma)`` (m = mask, 1 where known). Every solver step then pulls the known region towards the earlier
    content while the rest is generated around it (the inpainting ControlNet sees the same content as control)."""
    def d(x, sigma, **kwargs):
        return mask * known + (1 - mask) * denoiser(x, sigma, **kwargs)
    return d


def inpaint_sampler(base, inpaint, steps: int | None = None, guidance: float | None = None,
                    solver: str | None = None, replace_known: bool = True):
    """``sample(prompt, hint (1, 7, h, w), pitch_label, seed) -> (1, 3, h, w)`` in [-1, 1] for
    :func:`generate_views`: the base with the inpainting ControlNet (CFG over text and hint), and with
    ``replace_known`` the known overlap (hint channels 0-2 where the mask channel 3 is 0) kept while sampling
    (:func:`keep_known`)."""
    from dataclasses import replace

    from lit_edify.diffusion.plans import sample_plan
    from lit_edify.pipelines.controlled import controlled_stage

    def sample(prompt: str, hint: Tensor, pitch: int, seed: int) -> Tensor:
        hint = hint.to(base.device, torch.float32)
        with torch.no_grad():
            stage = controlled_stage(base, [prompt], [(inpaint, hint, 1.0)], steps=steps, guidance=guidance,
                                     pitch=[pitch])
            if replace_known:
                stage = replace(stage, denoiser=keep_known(stage.denoiser, hint[:, :3], 1 - inpaint_mask(hint)))
            g = torch.Generator(device=base.device).manual_seed(seed)
            x = sample_plan([stage], (1, 3, *hint.shape[-2:]), "cascade", solver or base.cfg.sampling.solver,
                            generator=g, device=base.device)
        return x.clamp(-1, 1)
    return sample


class _Canvas:
    """Equirectangular accumulation (tent-weighted mean) of the views generated so far, at a working size."""

    def __init__(self, size: tuple[int, int]):
        self.size = size
        self.d = equirect_directions(*size)
        self.num = torch.zeros(1, 3, *size)
        self.den = torch.zeros(1, 1, *size)

    def add(self, img: Tensor, view: View) -> None:
        w = view_weight(self.d, view, *img.shape[-2:])[None, None]
        warped, _ = perspective_to_equirect(img[None], view, self.size)
        self.num += warped * w
        self.den += w

    def project(self, view: View, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(content (1, 3, h, w), known (1, 1, h, w) in {0, 1}) of the canvas seen from ``view``."""
        img = self.num / self.den.clamp(min=1e-12)
        known = (self.den > 0).float()
        content = equirect_to_perspective(img, view, hw)
        return content, (equirect_to_perspective(known, view, hw) > 0.999).float()


def generate_views(sample, prompt: str, views: list[View], hw: tuple[int, int] = (32, 32),
                   canvas: tuple[int, int] = (128, 256), example: Tensor | None = None, loop_closure: bool = True,
                   keep_known: bool = True, seed: int = 0, progress=None) -> PanoramaViews:
    """Generate ``views`` in order (see the module docstring).

    sample(prompt, hint (1, 7, h, w), pitch_label, seed) -> (1, 3, h, w) in [-1, 1]: one inpainting sample.
    example: optional first view (3, h, w) in [-1, 1], used as given. loop_closure=False is the naive variant
    (each horizon view sees only its predecessor, the last one never sees the first). keep_known=False keeps
    the samples as drawn."""
    out = PanoramaViews(views, [])
    can, prev = _Canvas(canvas), None
    steps = range(len(views))
    for k in (progress(steps) if progress else steps):
        v = views[k]
        src = can if loop_closure or k >= len(views) - 2 or prev is None else prev
        content, known = src.project(v, hw) if k else (torch.zeros(1, 3, *hw), torch.zeros(1, 1, *hw))
        if k == 0 and example is not None:
            raw = example[None].float()
        else:
            task = "inpaint" if abs(v.pitch) > 1.0 else "outpaint"
            pitch = 0 if v.pitch > 1.0 else 2 if v.pitch < -1.0 else 1  # ascending / eye level / descending
            raw = sample(prompt, inpaint_hint(content, 1 - known, task), pitch, seed + 1000 * k).float().cpu()
        img = raw * (1 - known) + content * known if keep_known else raw
        if known.any():
            out.overlap_mad.append(float(((raw - content).abs() * known).sum() / (3 * known.sum()) / 2))
            if not known.all():
                out.boundary.append(boundary_ratio(img[0], known[0]))
        out.images.append(img[0])
        out.raw.append(raw[0])
        out.known.append(known[0])
        can.add(img[0], v)
        if not loop_closure:  # the naive variant: the next view sees only this one
            prev = _Canvas(canvas)
            prev.add(img[0], v)
    return out


def naive_assembly(views: list[View], images: list[Tensor], size: tuple[int, int]) -> Tensor:
    """Hard assembly (3, H, W): every pixel from the view whose tent weight is largest (no blending)."""
    d = equirect_directions(*size)
    w = torch.stack([view_weight(d, v, *img.shape[-2:]) for v, img in zip(views, images)])
    best = w.argmax(0)
    out = torch.zeros(3, *size)
    for k, (v, img) in enumerate(zip(views, images)):
        warped, _ = perspective_to_equirect(img[None], v, size)
        out += warped[0] * (best == k)
    return out


def tone_map(hdr: Tensor, exposure: float = 1.0) -> Tensor:
    """Preview: Reinhard x / (1 + x) of the exposed HDR (3, H, W), then sRGB-encoded, in [0, 1]."""
    from lit_edify.panorama.camera import srgb_encode

    x = hdr.float() * exposure
    return srgb_encode(x / (1 + x))


def hdr_to_outputs(log_hdr: Tensor, out: Path, preview_width: int = 2048, band: int = 512) -> dict:
    """Write ``out`` (.exr or .hdr), the other format next to it and ``<stem>.png`` (a tone-mapped preview at most
    ``preview_width`` wide) from a log HDR panorama (3, H, W) (float16 ok), each atomically. Linear values are
    made in row bands straight into one float32 (H, W, 3) buffer; returns the paths and the peak radiance."""
    from lit_edify.hdr_io import write_exr, write_hdr
    from lit_edify.io import save_image_atomic
    from lit_edify.panorama.camera import LOG_EPS

    _, h, w = log_hdr.shape
    lin = np.empty((h, w, 3), np.float32)
    for r in range(0, h, band):
        lin[r:r + band] = (log_hdr[:, r:r + band].float().exp() - LOG_EPS).clamp(min=0).permute(1, 2, 0).numpy()
    peak = float(lin.max())
    exr, rad = out.with_suffix(".exr"), out.with_suffix(".hdr")
    write_exr(exr, lin, half=peak <= 65504)
    write_hdr(rad, lin)
    del lin
    s = max(1, w // preview_width)
    small = log_hdr.float().exp() if s == 1 else _banded_pool(log_hdr, s)
    png = out.with_suffix(".png")
    save_image_atomic(tone_map(small), png)
    return {"exr": str(exr), "hdr": str(rad), "png": str(png), "peak": peak}


def _banded_pool(log_hdr: Tensor, s: int, band: int = 512) -> Tensor:
    """Linear HDR averaged over s x s blocks (3, H/s, W/s), computed in row bands."""
    band = band // s * s or s
    rows = [torch.nn.functional.avg_pool2d(log_hdr[None, :, r:r + band].float().exp(), s)[0]
            for r in range(0, log_hdr.shape[1], band)]
    return torch.cat(rows, 1)


def panorama(base, inpaint, ldr2hdr, prompt: str, size: str = "4k", out: str | Path = "pano.exr",
             example: Tensor | None = None, seed: int = 0, steps: int | None = None, guidance: float | None = None,
             n_views: int = 8, overlap: float = 0.5, pole_overlap_deg: float = 10.0, hdr_width: int | None = None,
             progress=None) -> dict:
    """The whole chain: views -> equirectangular LDR at ``size`` (4k | 8k | 16k) -> LDR2HDR -> files.

    base / inpaint: the frozen base and its inpainting ControlNet (``load_frozen_base``, ``load_controlnet``);
    ldr2hdr: an :class:`LDR2HDR`, run at ``hdr_width`` columns (default: its ``work_width``; the panorama's own
    width when neither is set) with its prediction upsampled to the panorama (``pitched_hdr``). Returns the output
    paths, the views, the overlap statistics and the seconds each part took."""
    if size not in SIZES:
        raise ValueError(f"unknown panorama size {size!r}; choose one of {list(SIZES)}")
    hw = base.image_shape("1:1")
    views = view_plan(n_views, overlap, pole_overlap_deg)
    sample = inpaint_sampler(base, inpaint, steps, guidance)
    t = [time.perf_counter()]
    gen = generate_views(sample, prompt, views, hw, example=example, seed=seed, progress=progress)
    t.append(time.perf_counter())
    full = SIZES[size]
    ldr = torch.empty(3, *full, dtype=torch.uint8)
    assemble(views, [(x + 1) / 2 for x in gen.images], full, out=ldr)
    t.append(time.perf_counter())
    log_hdr = ldr2hdr.to_hdr(ldr, tile=1024, halo=128, work_width=hdr_width)
    del ldr
    t.append(time.perf_counter())
    files = hdr_to_outputs(log_hdr, Path(out))
    t.append(time.perf_counter())
    seconds = dict(zip(("views", "assemble", "ldr2hdr", "write"), np.diff(t).tolist()))
    return {**files, "views": gen, "size": full, "overlap_mad": gen.overlap_mad, "seconds": seconds}

