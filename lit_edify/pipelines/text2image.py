"""Text -> base image (-> upsampled image): the inference chain of Edify Image Sec. 3.

``plan="cascade"``: the base samples fully, its output is upsampled and forward-diffused to the
upsampler's sigma_max, and the upsampler samples (Sec. 3). ``plan="switch"``: one trajectory that
leaves the base at the upsampler's band cutoff via the resolution switch (Sec. 2.2.4).
"""
from __future__ import annotations

import torch

from lit_edify.diffusion.plans import sample_plan
from lit_edify.pipelines.checkpoints import load_module

__all__ = ["load_module", "text_to_image"]


def text_to_image(base, captions: list[str], *, upsampler=None, plan: str = "cascade", aspect: str = "1:1",
                  seed: int = 0, steps: int | None = None, upsampler_steps: int | None = None,
                  solver: str | None = None, guidance: float | None = None, upsampler_guidance: float | None = None,
                  autoguidance: float | None = None, pitch=None, dof=None, media_type=None, progress=None) -> torch.Tensor:
    """Generate images for ``captions`` (one per caption).

    base / upsampler: modules with the LaplacianDiffusionMixin (BaseModel / Upsampler), on one device.
    guidance / autoguidance: the base's classifier-free guidance scale and autoguidance weight (None: its config's).
    Returns (N, 3, H, W) float in [-1, 1] at the upsampler's resolution when given, else the base's.
    """
    labels = dict(pitch=pitch, dof=dof, media_type=media_type)
    stages = [base.stage(captions, steps=steps, guidance=guidance, autoguidance=autoguidance, **labels)]
    if upsampler is not None:
        f = upsampler.hparams.factor
        h, w = base.image_shape(aspect)
        up_h, up_w = upsampler.image_shape(aspect)
        if (up_h, up_w) != (f * h, f * w):
            raise ValueError(f"upsampler shape {(up_h, up_w)} for aspect {aspect} is not {f}x the base shape {(h, w)}: "
                             "check the resolutions and factor of the two models")
        stages.append(upsampler.stage(captions, steps=upsampler_steps, guidance=upsampler_guidance, factor=f,
                                      **labels))
    h, w = base.image_shape(aspect)
    g = torch.Generator(device=base.device).manual_seed(seed)
    with torch.no_grad():
        x = sample_plan(stages, (len(captions), 3, h, w), plan, solver or base.cfg.sampling.solver, generator=g,
                        device=base.device, progress=progress)
    return x.clamp(-1, 1)
