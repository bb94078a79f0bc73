"""Aesthetic-weighted training (Edify Image report, Sec. 3.5).

"After 1.5M iterations, we use aesthetic weighted training, in which loss per sample is multiplied
by a normalized aesthetic score computed using an aesthetic model."

:class:`AestheticWeighting` implements the switch. Contract with the diffusion LightningModules:
their ``training_step`` computes a per-sample loss ``(B,)`` and, when the batch dict has
``"loss_weight"`` (float ``(B,)``), multiplies by it before the mean. From
``trainer.global_step >= start_step`` this callback puts ``batch["loss_weight"]`` in every training
batch; before that it adds nothing (plain, unweighted training).

Where the weights come from:

* ``scorer=None`` (default): ``batch[key]`` (``"aesthetic"``), which the data modules already
  normalise to mean 1 over the training set (from ``metadata.jsonl`` / a dataset column; 1.0 for
  samples without a score).
* ``scorer=...``: an aesthetic model applied to ``batch["image"]`` (float ``(B, 3, H, W)`` in
  ``[-1, 1]``) that returns scores ``(B,)`` or ``(B, 1)``, higher = better, expected positive
  (negative scores are clamped to 0 with a warning). Weights are ``score / dataset_mean``; the
  dataset mean is computed once, the first time it is needed, by scoring ``mean_batches`` batches
  of a fresh pass over ``trainer.train_dataloader`` (``None``: the whole epoch), and stored in the
  callback's checkpoint state, so a resumed run reuses it. Two ways to name the model:

  - a TorchScript file: ``scorer="/path/to/aesthetic.pt"`` (``torch.jit.save`` output), or a
    ``torch.export`` program ``"/path/to/aesthetic.pt2"`` (``torch.export.save``; export it with a
    dynamic batch dimension);
  - a Python class: ``scorer="my_pkg.module:MyScorer"`` plus ``scorer_checkpoint="/path/weights"``
    (a ``state_dict`` saved with ``torch.save`` or a ``.safetensors`` file); the class is built
    with no arguments and then loads the weights.

  No aesthetic-predictor weights ship with this project: a scorer path that does not exist is a
  ``FileNotFoundError`` at construction time, never a silent weight of 1.
"""

from __future__ import annotations

import importlib
import math
import os
import warnings

import lightning as L
import torch

__all__ = ["AestheticWeighting", "load_scorer"]


def load_scorer(scorer: str, checkpoint: str | None = None) -> torch.nn.Module:
    """Load an aesthetic scorer (see the module docstring for the two forms).

    Raises:
        FileNotFoundError: the TorchScript file or the checkpoint does not exist.
        ValueError: ``"module:Class"`` given without ``checkpoint``.
        ImportError: the module or class cannot be imported.
    """
    if ":" in scorer and not os.path.exists(scorer):
        module_name, _, cls_name = scorer.partition(":")
        if checkpoint is None:
            raise ValueError(
                f"scorer {scorer!r} names a Python class; also give scorer_checkpoint=<path to its weights> "
                "(an untrained scorer would make the weights meaningless)"
            )
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(
                f"aesthetic scorer checkpoint {checkpoint!r} not found; no aesthetic-predictor weights ship "
                "with lit-edify: train or download one and point scorer_checkpoint at it, or drop "
                "`scorer` to use the per-sample `aesthetic` scores from the dataset metadata"
            )
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError) as exc:
            raise ImportError(f"cannot import aesthetic scorer class {scorer!r}: {exc}") from exc
        model = cls()
        if checkpoint.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(checkpoint)
        else:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model.eval()
    if not os.path.isfile(scorer):
        raise FileNotFoundError(
            f"aesthetic scorer {scorer!r} not found; no aesthetic-predictor weights ship with lit-edify. "
            "Give a TorchScript file (torch.jit.save) or 'module:Class' with scorer_checkpoint, or drop "
            "`scorer` to use the per-sample `aesthetic` scores from the dataset metadata"
        )
    if scorer.endswith(".pt2"):
        return torch.export.load(scorer).module()
    return torch.jit.load(scorer, map_location="cpu").eval()


class AestheticWeighting(L.Callback):
    """Sets ``batch["loss_weight"]`` (float32 ``(B,)``, mean 1 over the dataset) from ``start_step`` on.

    Args:
        start_step: first ``trainer.global_step`` with weighted loss (report: 1.5M).
        scorer: ``None`` (use ``batch[key]``), a TorchScript / ``.pt2`` path, or ``"module:Class"``.
        scorer_checkpoint: weights for the ``"module:Class"`` form.
        key: batch key of the precomputed, normalised weights.
        mean_batches: batches scored to estimate the dataset mean of scorer outputs (``None``: one epoch).

    Raises:
        FileNotFoundError: at construction, for a missing scorer file or checkpoint.
    """

    def __init__(
        self,
        start_step: int = 1_500_000,
        scorer: str | None = None,
        key: str = "aesthetic",
        scorer_checkpoint: str | None = None,
        mean_batches: int | None = 100,
    ) -> None:
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.start_step = int(start_step)
        self.key = key
        self.mean_batches = mean_batches
        self.scorer = load_scorer(scorer, scorer_checkpoint) if scorer is not None else None
        for p in self.scorer.parameters() if self.scorer is not None else ():
            p.requires_grad_(False)
        self.dataset_mean: float | None = None
        self._warned_negative = False

    # -------------------------------------------------------------- scorer
    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Raw scores ``(B,)`` float32 of images ``(B, 3, H, W)`` in ``[-1, 1]`` (negatives clamped to 0)."""
        assert self.scorer is not None
        self.scorer.to(images.device)
        out = self.scorer(images).float().reshape(images.shape[0], -1)
        if out.shape[1] != 1:
            raise ValueError(f"aesthetic scorer must return one score per image, got shape {tuple(out.shape)}")
        out = out[:, 0]
        if not torch.isfinite(out).all():
            raise ValueError("aesthetic scorer returned NaN/inf scores; check the scorer and its input range [-1, 1]")
        if (out < 0).any():
            if not self._warned_negative:
                warnings.warn(
                    "aesthetic scorer returned negative scores; they are clamped to 0 (zero loss weight)", stacklevel=2
                )
                self._warned_negative = True
            out = out.clamp_min(0.0)
        return out

    def _estimate_mean(self, trainer: L.Trainer, device: torch.device) -> float:
        loader = trainer.train_dataloader
        if loader is None:
            raise RuntimeError("AestheticWeighting needs trainer.train_dataloader to estimate the score mean")
        total, count = 0.0, 0
        for i, batch in enumerate(loader):
            if self.mean_batches is not None and i >= self.mean_batches:
                break
            if isinstance(batch, dict):
                batch.pop("_data_report", None)
            images = batch["image"].to(device)
            s = self.score(images)
            total += float(s.double().sum())
            count += s.numel()
        if count == 0 or not total > 0:
            raise ValueError("aesthetic scorer gave no positive scores on the training data; cannot normalise")
        return total / count

    # -------------------------------------------------------------- hook
    def weights(self, trainer: L.Trainer, batch: dict) -> torch.Tensor:
        """Normalised weights ``(B,)`` float32 for ``batch`` (does not check ``start_step``)."""
        if self.scorer is None:
            if self.key not in batch:
                raise KeyError(
                    f"AestheticWeighting: the batch has no {self.key!r} key; use a data module that provides "
                    "normalised aesthetic scores (e.g. ImageTextDataModule with an `aesthetic` column) or give a scorer"
                )
            return torch.as_tensor(batch[self.key]).to(torch.float32).reshape(-1)
        images = batch["image"]
        if self.dataset_mean is None:
            self.dataset_mean = self._estimate_mean(trainer, images.device)
        return self.score(images) / self.dataset_mean

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step < self.start_step or not isinstance(batch, dict):
            return
        w = self.weights(trainer, batch)
        if "image" in batch and torch.is_tensor(batch["image"]):
            w = w.to(batch["image"].device)
        if w.numel() and not math.isfinite(float(w.sum())):
            raise ValueError("aesthetic weights contain NaN/inf; check the `aesthetic` scores in the data")
        batch["loss_weight"] = w

    # -------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict:
        return {"dataset_mean": self.dataset_mean}

    def load_state_dict(self, state_dict: dict) -> None:
        self.dataset_mean = state_dict.get("dataset_mean")
