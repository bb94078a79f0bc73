"""Controlled text -> image (Edify Image Sec. 5): one or several ControlNets on a frozen base, then optionally
the (uncontrolled) upsampler reused through the cascade or switch plan, as in :func:`text_to_image`.

Classifier-free guidance runs over text and hints together: the conditional branch gets the captions and the
hints, the unconditional one the dropped context and zero hints (what hint dropout trained the ControlNet on).
Several ControlNets add their residuals (each times its control weight) on the one base U-Net.
"""
from __future__ import annotations

from typing import Sequence

import torch

from lit_edify.diffusion.edm import precondition
from lit_edify.diffusion.plans import Stage, sample_plan
from lit_edify.diffusion.samplers import CFGDenoiser
from lit_edify.modules.controlnet import BaseMismatchError
from lit_edify.nn.controlnet import control_weight, sum_residuals

__all__ = ["controlled_stage", "controlled_text_to_image", "load_controlnet"]
Tensor = torch.Tensor


def load_controlnet(path: str, base, device: str = "cpu"):
    """A ControlNet checkpoint attached to ``base`` (a module from ``load_frozen_base``), in eval mode.

    The checkpoint's recorded base path is replaced by ``base``'s; the weights hash must still match
    (:class:`BaseMismatchError` names both hashes otherwise). Only registered classes are built (safe loader)."""
    from lit_edify.modules.controlnet import ControlNetModule
    from lit_edify.pipelines.checkpoints import CheckpointError, read_checkpoint

    cls, hparams, state, _ = read_checkpoint(path)
    if cls is not ControlNetModule:
        raise CheckpointError(f"{path} is a {cls.__name__} checkpoint, not a ControlNet (--controlnet-ckpt)")
    cn = ControlNetModule(**{**hparams, "base_ckpt": base.lit_edify_path})
    cn.load_state_dict(state)
    return cn.to(device).eval()


def _check_controls(base, controls: Sequence[tuple], n: int, shape: tuple[int, int]) -> None:
    """Every ControlNet was trained on ``base`` (same weights hash) and every hint is (n, C_hint, H, W)."""
    sha = getattr(base, "lit_edify_sha256", None)
    for i, (cn, hint, _) in enumerate(controls):
        if sha is None:
            from lit_edify.modules.controlnet import weights_sha256
            sha = base.lit_edify_sha256 = weights_sha256(base)
        if cn.hparams.base_sha256 != sha:
            raise BaseMismatchError(
                f"ControlNet {i} ({cn.hparams.hint}) was trained on a base with weights sha256 "
                f"{cn.hparams.base_sha256}, but the base given has sha256 {sha}; pass the base checkpoint it was "
                "trained on (--ckpt)")
        want = (n, cn.controlnet.hint_channels, *shape)
        if hint is None or tuple(hint.shape) != want:
            got = None if hint is None else tuple(hint.shape)
            raise ValueError(f"hint {i} ({cn.hparams.hint}) must be {want} (images x channels x the image size "
                             f"{shape}), got {got}; resize it to the image size (lit_edify.data_modules.hints.resize_hint)")


def controlled_stage(base, captions: list[str], controls: Sequence[tuple], *, pitch=None, dof=None,
                     media_type=None, steps: int | None = None, guidance: float | None = None,
                     factor: int = 1) -> Stage:
    """The base with ControlNets as one sampling Stage.

    controls: ``(ControlNetModule, hint (N, C_hint, H, W), weight (number or (N,)))`` triples; hints at the
    stage's image size. Returns a :class:`Stage` whose denoiser applies CFG over text and hints.
    """
    nz, sp, n, dev = base.cfg.noise, base.cfg.sampling, len(captions), base.device
    cond_ctx, cond_mask = base.encode_conditions(captions, pitch, dof, media_type, drop=False)
    unc_ctx, unc_mask = base.encode_conditions(captions, pitch, dof, media_type, drop=True)
    hints = [h.to(dev, torch.float32) for _, h, _ in controls]
    weights = torch.cat([control_weight(w, n, dev).view(n, 1) for _, _, w in controls], 1) if controls else None
    cond = {"context": cond_ctx, "context_mask": cond_mask}
    uncond = {"context": unc_ctx, "context_mask": unc_mask}
    if controls:
        cond |= {"hint": torch.cat(hints, 1), "weight": weights}
        uncond |= {"hint": torch.zeros_like(cond["hint"]), "weight": weights}
    splits = [cn.controlnet.hint_channels for cn, _, _ in controls]

    def net(x, c_noise, context, context_mask, hint=None, weight=None):
        residuals = [cn.controlnet(x, c_noise, context, context_mask, h, weight[:, i])
                     for i, ((cn, _, _), h) in enumerate(zip(controls, hint.split(splits, 1)))] if controls else []
        return base.net(x, c_noise, context, context_mask, control=sum_residuals(residuals))

    def denoiser(x, sigma, **c):
        return precondition(net, x, sigma, base.sigma_data, **c)

    scale = sp.guidance if guidance is None else guidance
    interval = sp.guidance_interval
    cfg = CFGDenoiser(denoiser, cond, uncond, scale, tuple(interval) if interval else None)
    return Stage(cfg, base.schedule, nz.sigma_min, nz.sigma_max, steps or sp.steps, factor=factor)


def controlled_text_to_image(base, captions: list[str], controls: Sequence[tuple], *, upsampler=None,
                             plan: str = "cascade", aspect: str = "1:1", seed: int = 0, steps: int | None = None,
                             upsampler_steps: int | None = None, solver: str | None = None,
                             guidance: float | None = None, upsampler_guidance: float | None = None,
                             pitch=None, dof=None, media_type=None, progress=None) -> Tensor:
    """Images for ``captions`` under the ControlNets ``controls`` (see :func:`controlled_stage`).

    base: the frozen base module every ControlNet was trained on (checked by weights hash); hints at
    ``base.image_shape(aspect)``. upsampler: optional, reused unchanged (cascade or switch plan).
    Returns (N, 3, H, W) in [-1, 1] at the upsampler's resolution when given, else the base's.
    """
    h, w = base.image_shape(aspect)
    _check_controls(base, controls, len(captions), (h, w))
    labels = dict(pitch=pitch, dof=dof, media_type=media_type)
    with torch.no_grad():
        stages = [controlled_stage(base, captions, controls, steps=steps, guidance=guidance, **labels)]
        if upsampler is not None:
            f = upsampler.hparams.factor
            if upsampler.image_shape(aspect) != (f * h, f * w):
                raise ValueError(f"upsampler shape {upsampler.image_shape(aspect)} for aspect {aspect} is not {f}x "
                                 f"the base shape {(h, w)}: check the resolutions and factor of the two models")
            stages.append(upsampler.stage(captions, steps=upsampler_steps, guidance=upsampler_guidance, factor=f,
                                          **labels))
        g = torch.Generator(device=base.device).manual_seed(seed)
        x = sample_plan(stages, (len(captions), 3, h, w), plan, solver or base.cfg.sampling.solver, generator=g,
                        device=base.device, progress=progress)
    return x.clamp(-1, 1)
