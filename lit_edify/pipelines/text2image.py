"""Text -> base image (-> upsampled image): the inference chain of Edify Image Sec. 3.

``plan="cascade"``: the base samples fully, its output is upsampled and forward-diffused to the
upsampler's sigma_max, and the upsampler samples (Sec. 3). ``plan="switch"``: one trajectory that
leaves the base at the upsampler's band cutoff via the resolution switch (Sec. 2.2.4).
"""
from __future__ import annotations

from pathlib import Path

import torch

from lit_edify.diffusion.plans import sample_plan


def text_to_image(base, captions: list[str], *, upsampler=None, plan: str = "cascade", aspect: str = "1:1",
                  seed: int = 0, steps: int | None = None, upsampler_steps: int | None = None,
                  solver: str | None = None, guidance: float | None = None, upsampler_guidance: float | None = None,
                  pitch=None, dof=None, media_type=None, progress=None) -> torch.Tensor:
    """Generate images for ``captions`` (one per caption).

    base / upsampler: modules with the LaplacianDiffusionMixin (BaseModel / Upsampler), on one device.
    Returns (N, 3, H, W) float in [-1, 1] at the upsampler's resolution when given, else the base's.
    """
    labels = dict(pitch=pitch, dof=dof, media_type=media_type)
    stages = [base.stage(captions, steps=steps, guidance=guidance, **labels)]
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
        x = sample_plan(stages, (len(captions), 3, h, w), plan, solver or base.hparams.sample_solver, generator=g,
                        device=base.device, progress=progress)
    return x.clamp(-1, 1)


def load_module(path: str | Path, map_location: str = "cpu"):
    """Load a lit-edify LightningModule checkpoint (.ckpt), with the weights it was saved with (EMA when trained
    with the EMA callback). Raises FileNotFoundError with advice when the file is missing."""
    import importlib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found: train one with "
                                "`lit-edify fit --config recipes/tiny/base32.yaml` (checkpoints land in "
                                "<log_dir>/checkpoints/) or pass the right --ckpt path")
    meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    target = meta.get("lit_edify_class")
    if target is None:
        raise ValueError(f"{path} was not written by a lit-edify module (no 'lit_edify_class' entry)")
    module_name, cls_name = target.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), cls_name)
    hparams = {k: v for k, v in meta["hyper_parameters"].items() if not k.startswith("_")}  # LightningCLI extras
    model = cls(**hparams)
    model.load_state_dict(meta["state_dict"])
    return model.to(map_location).eval()
