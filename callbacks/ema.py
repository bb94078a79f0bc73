"""EMA of the weights on Lightning's WeightAveraging, with an EDM-style half-life counted in images.

The decay per optimizer step is ``beta = 0.5 ** (images_per_step / halflife_images)`` where
``images_per_step`` is the global batch (batch x devices x nodes x gradient accumulation), so the
average does not depend on how the batch is split. As in EDM, an optional ramp-up limits the
half-life to ``rampup_ratio * images_seen`` early in training. WeightAveraging swaps the EMA weights
in for validation (and so for the metric and sample callbacks that run there), copies them into the
model when training ends, and stores them as the checkpoint's ``state_dict`` (the raw weights go to
``current_model_state``), so resuming restores both. A step whose update the non-finite guard
(lit_edify.callbacks.nonfinite) skipped leaves the average and ``images_seen`` unchanged.
Frozen parameters (``requires_grad=False``: a personalization's untouched U-Net, an autoguidance guide) never change,
so their average is their value: they are left out of the update instead of being averaged with themselves.
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import WeightAveraging

from .nonfinite import step_skipped


class EMA(WeightAveraging):
    """Exponential moving average of all parameters and buffers.

    Args:
        halflife_images: half-life of the average, in training images (EDM: 500k for ImageNet-64).
        rampup_ratio: if set, half-life = min(halflife_images, rampup_ratio * images_seen) (EDM: 0.05).
        device: where the averaged copy lives (default: the model's device; "cpu" saves GPU memory).
    """

    def __init__(self, halflife_images: float = 500_000, rampup_ratio: float | None = 0.05,
                 device: str | None = None):
        if halflife_images <= 0:
            raise ValueError(f"halflife_images must be > 0, got {halflife_images}")
        super().__init__(device=device, use_buffers=True, multi_avg_fn=self._lerp)
        self.halflife_images, self.rampup_ratio = float(halflife_images), rampup_ratio
        self.images_seen = 0
        self._beta = 0.0

    def decay(self, images_per_step: int) -> float:
        """beta for the next update, after ``images_per_step`` more images (updates images_seen)."""
        self.images_seen += images_per_step
        halflife = self.halflife_images
        if self.rampup_ratio is not None:
            halflife = min(halflife, self.rampup_ratio * self.images_seen)
        return 0.5 ** (images_per_step / max(halflife, 1e-8))

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._frozen_ptrs = None  # a new average model: its frozen parameters are found again
        super().setup(trainer, pl_module, stage)

    def _frozen(self) -> set[int]:
        """Storage addresses of the averaged copy's frozen parameters (computed once)."""
        if getattr(self, "_frozen_ptrs", None) is None:
            module = self._average_model.module
            self._frozen_ptrs = {p.data_ptr() for p in module.parameters() if not p.requires_grad}
        return self._frozen_ptrs

    def _lerp(self, averaged: list, current: list, num_averaged) -> None:
        # num_averaged == 0 is AveragedModel's own first copy; afterwards move towards the current weights
        frozen = self._frozen()
        if frozen:  # lerp(a, a) == a: a frozen parameter equals its average, so skip it
            keep = [i for i, a in enumerate(averaged) if a.data_ptr() not in frozen]
            averaged, current = [averaged[i] for i in keep], [current[i] for i in keep]
        torch._foreach_lerp_(averaged, current, 1.0 - self._beta)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        if trainer.global_step > self._latest_update_step and step_skipped(trainer):
            self._latest_update_step = trainer.global_step  # no weight update this step: no EMA update either
            return
        if trainer.global_step > self._latest_update_step:
            local = batch["image"].shape[0] if isinstance(batch, dict) else len(batch)
            per_step = local * trainer.world_size * trainer.accumulate_grad_batches
            self._beta = self.decay(per_step)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "images_seen": self.images_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.images_seen = state_dict.get("images_seen", 0)
