"""Autoguidance from an early snapshot of the model itself (Karras et al. 2024, "Guiding a Diffusion Model with a Bad
Version of Itself").

Classifier-free guidance pushes samples away from the unconditional denoiser, which sharpens class adherence but
also pulls every sample toward the class's most typical image. Autoguidance pushes them away from a *weaker* denoiser
of the same condition instead::

    D = D(x | c) + (w - 1) (D(x | c) - D_guide(x | c))         (+ the CFG term, lit_edify.diffusion.samplers)

where the guide makes the same kind of errors as the model, only larger, so the difference points toward what the
model has learned beyond the guide. EDM2 uses a smaller, shorter-trained network; here the guide is the model's own
EMA weights at a fraction ``sampling.guide_at`` of training (the "reduced training" half of their recipe), which costs
no extra training: the module holds it as a frozen submodule ``guide`` (copies of ``net`` and ``embedder``, never in
the optimizer) that checkpoints and ``.safetensors`` exports carry like every other weight. It is filled once, by
:func:`maybe_take_snapshot` after optimizer step ``round(guide_at * total_steps)``, from the EMA callback's average
when one is attached, and written into that average too, so the EMA keeps it exactly (``lerp(a, a) == a``).
``guide.step`` is that step, or -1 while the snapshot has not been taken.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable

import torch
from torch import nn

from lit_edify.diffusion.edm import precondition

Tensor = torch.Tensor


class Guide(nn.Module):
    """Frozen copies of a module's U-Net and condition embedder, plus the training step they were taken at."""

    def __init__(self, net: nn.Module, embedder: nn.Module):
        super().__init__()
        self.net, self.embedder = copy.deepcopy(net), copy.deepcopy(embedder)
        self.requires_grad_(False)
        self.register_buffer("step", torch.tensor(-1.0))  # float: the EMA averages every buffer

    @property
    def taken(self) -> bool:
        return float(self.step) >= 0


def snapshot_step(guide_at: float, total_steps: int) -> int:
    """The optimizer step after which the guide is taken: ``round(guide_at * total_steps)``, at least 1."""
    return max(1, round(guide_at * total_steps))


def average_module(trainer) -> nn.Module | None:
    """The averaged copy of the LightningModule kept by a Lightning ``WeightAveraging`` callback (our EMA), if any."""
    from lightning.pytorch.callbacks import WeightAveraging

    for cb in trainer.callbacks:
        if isinstance(cb, WeightAveraging) and getattr(cb, "_average_model", None) is not None:
            return cb._average_model.module
    return None


@torch.no_grad()
def take_snapshot(module, source: nn.Module, step: int, also: nn.Module | None = None) -> None:
    """Copy ``source``'s ``net`` and ``embedder`` weights into ``module.guide`` (and ``also.guide``), at ``step``."""
    for target in (module, also) if also is not None else (module,):
        target.guide.net.load_state_dict(source.net.state_dict())
        target.guide.embedder.load_state_dict(source.embedder.state_dict())
        target.guide.step.fill_(float(step))


def maybe_take_snapshot(module, trainer, total_steps: int) -> bool:
    """Take the guide after the snapshot step (once; a resumed run that already has it keeps it). True if taken now."""
    if module.guide.taken or trainer.global_step != snapshot_step(module.cfg.sampling.guide_at, total_steps):
        return False
    avg = average_module(trainer)
    take_snapshot(module, avg if avg is not None else module, trainer.global_step, also=avg)
    return True


def guide_denoiser(module, captions: list[str], labels: tuple, extra: Tensor | None,
                   weight: float) -> Callable | None:
    """``guide(x, sigma) -> D_guide(x | captions, labels)`` for ``CFGDenoiser``, or None when ``weight`` is 1.

    ValueError if ``weight`` != 1 and the module has no guide; a warning (and None: plain CFG) if its snapshot was
    never taken (training stopped before ``guide_at``)."""
    if weight == 1.0:
        return None
    guide = getattr(module, "guide", None)
    if guide is None:
        raise ValueError(f"autoguidance {weight:g} needs a model trained with sampling.guide_at (a guide snapshot); "
                         "this one has none: sample with autoguidance 1")
    if not guide.taken:
        warnings.warn("autoguidance is off: the guide snapshot was never taken (training stopped before "
                      f"sampling.guide_at = {module.cfg.sampling.guide_at:g} of its steps)", stacklevel=3)
        return None
    context, mask = module.encode_conditions(captions, *labels, drop=False, embedder=guide.embedder)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        return precondition(guide.net, x, sigma, module.sigma_data, context=context, context_mask=mask, extra=extra)

    return denoise
