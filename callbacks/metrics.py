"""Generation metrics during training, validation and test: FID, KID, CLIP score, prompt adherence.

:class:`GenerationMetrics` generates a fixed set of images (fixed prompts and seeds) with the weights
loaded at the end of a validation / test epoch, scores them with
:class:`lit_edify.metrics.GeneratorEvaluator`, logs the values (``val/fid``, ``val/kid_mean``,
``val/clip_score``, ``val/adherence/<attr>``, ``val/classifier_accuracy``, ... or ``test/...``) through
``pl_module.log`` (so they reach TensorBoard and can be monitored by checkpoints), and appends one
record per evaluation to a JSON file in ``trainer.log_dir``.

EMA: Lightning's ``WeightAveraging`` (``lit_edify.callbacks.ema.EMA``) swaps the averaged weights in on
``on_validation_epoch_start`` and back on ``on_validation_epoch_end``. This callback moves itself
before any WeightAveraging callback in ``trainer.callbacks`` so its ``on_validation_epoch_end`` runs
while the EMA weights are still loaded.

Frequency: metrics run every ``every_n_validations``-th validation during fit (how often validation
runs, in steps, is the Trainer's ``val_check_interval``), on every ``trainer.validate`` and
``trainer.test``, never during the sanity check.

Distributed: the reference set is read, and images generated and scored, on global rank 0 only,
from a fresh ``trainer.datamodule.<split>_dataloader()`` built there (for a datamodule that shards by
rank itself, that is rank 0's shard). Other ranks wait in a broadcast of the results, which all ranks
then log; only rank 0 writes the JSON file. Keep ``num_images`` small enough that generation on one
device finishes within the process-group timeout (30 min by default).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from lit_edify.metrics import GeneratorEvaluator
from lit_edify.metrics.fid import DEFAULT_CACHE_DIR

__all__ = ["GenerationMetrics"]


class GenerationMetrics(L.Callback):
    """Generate a fixed-seed image set and log FID / KID / CLIP score / adherence.

    Args:
        every_n_validations: during fit, evaluate on every n-th validation epoch (1 = each).
        num_images: images generated per evaluation.
        batch_size: images per ``generate`` call (batch b uses seed ``seed + b``).
        seed: base seed of generation (and of KID subsets / the classifier).
        steps, solver, guidance: passed to ``pl_module.generate`` (None: the module's defaults).
        fid, kid: compute FID / KID against the reference set (TF-Inception pool3 features).
        kid_subsets, kid_subset_size: KID subsets (subset size capped at the set sizes).
        clip_checkpoint: local open_clip weights (file or ``local-dir`` folder) for the CLIP score;
            None disables it. No CLIP weights exist offline: a missing path is an error at setup.
        clip_model: open_clip architecture name (or model-config JSON path) of ``clip_checkpoint``.
        adherence: None; "shapes": the shapes judge on ``lit_edify.data_modules.shapes.evaluation_prompts``
            (prompts then come from there, split ``adherence_split``); "classifier": accuracy of a
            small CNN trained (and cached) on the reference images with their captions as classes.
        adherence_split: "test" or "heldout" prompts for adherence="shapes".
        reference: "val" / "test" (the datamodule's dataloader of that split) or a folder of images
            (captions from sidecar .txt files).
        num_reference: use at most this many reference images (None: the whole split / folder).
        cache_dir: where reference Inception features and classifiers are cached.
        output_json: JSON file (a list of records) written in ``trainer.log_dir`` unless absolute.
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        num_images: int = 64,
        batch_size: int = 16,
        seed: int = 0,
        steps: int | None = None,
        solver: str | None = None,
        guidance: float | None = None,
        fid: bool = True,
        kid: bool = True,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        clip_checkpoint: str | None = None,
        clip_model: str = "ViT-B-32",
        adherence: Literal["shapes", "classifier"] | None = None,
        adherence_split: Literal["test", "heldout"] = "test",
        reference: str = "val",
        num_reference: int | None = None,
        cache_dir: str = DEFAULT_CACHE_DIR,
        output_json: str = "metrics.json",
    ):
        super().__init__()
        if every_n_validations < 1 or num_images < 2:
            raise ValueError("every_n_validations must be >= 1 and num_images >= 2 (FID needs two images)")
        if adherence not in (None, "shapes", "classifier"):
            raise ValueError(f"adherence must be None, 'shapes' or 'classifier', got {adherence!r}")
        self.every_n_validations, self.num_images, self.batch_size, self.seed = (
            every_n_validations, num_images, batch_size, seed)
        self.generate_kwargs = {k: v for k, v in {"steps": steps, "solver": solver, "guidance": guidance}.items()
                                if v is not None}
        self.fid, self.kid, self.kid_subsets, self.kid_subset_size = fid, kid, kid_subsets, kid_subset_size
        self.clip_checkpoint, self.clip_model = clip_checkpoint, clip_model
        self.adherence, self.adherence_split = adherence, adherence_split
        self.reference, self.num_reference = reference, num_reference
        self.cache_dir, self.output_json = cache_dir, output_json
        self._evaluator: GeneratorEvaluator | None = None
        self._prompts: list[dict] | None = None
        self._clip = None
        self._validations = 0

    # ---------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "generate"):
            raise TypeError(f"GenerationMetrics needs a module with generate(captions, ...); "
                            f"{type(pl_module).__name__} has none")
        cbs = list(trainer.callbacks)
        averaging = [i for i, cb in enumerate(cbs) if isinstance(cb, WeightAveraging)]
        me = next(i for i, cb in enumerate(cbs) if cb is self)
        if averaging and averaging[0] < me:  # run our epoch-end hook while the EMA weights are in
            cbs.insert(averaging[0], cbs.pop(me))
            trainer.callbacks = cbs  # a new list: the hook loop now running keeps the old one
        if self.clip_checkpoint is not None and trainer.is_global_zero and self._clip is None:
            from lit_edify.metrics import ClipScorer

            # fail at setup, not after the first epoch; moved to the module's device when used
            self._clip = ClipScorer.from_checkpoint(self.clip_checkpoint, self.clip_model, "cpu")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit":
            self._validations += 1
            if (self._validations - 1) % self.every_n_validations:
                return
        self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run(trainer, pl_module, "test")

    def state_dict(self) -> dict:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict) -> None:
        self._validations = int(state_dict.get("validations", 0))

    # ---------------------------------------------------------------- helpers
    def _reference_source(self, trainer: L.Trainer):
        ref = self.reference
        if ref in ("val", "test"):
            dm = trainer.datamodule
            if dm is not None and hasattr(dm, f"{ref}_dataloader"):
                return getattr(dm, f"{ref}_dataloader")()
            loaders = trainer.val_dataloaders if ref == "val" else trainer.test_dataloaders
            if loaders is None:
                raise ValueError(f"GenerationMetrics(reference={ref!r}) found no {ref} dataloader")
            return loaders
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"GenerationMetrics reference must be 'val', 'test' or an image folder; "
                                    f"{path} is not a folder")
        return str(path)

    def _get_evaluator(self, trainer: L.Trainer, pl_module: L.LightningModule) -> GeneratorEvaluator:
        if self._clip is not None:
            self._clip.to(pl_module.device)
        if self._evaluator is None:
            self._evaluator = GeneratorEvaluator(
                self._reference_source(trainer), fid=self.fid, kid=self.kid, clip=self._clip,
                adherence=self.adherence, num_reference=self.num_reference, cache_dir=self.cache_dir,
                kid_subsets=self.kid_subsets, kid_subset_size=self.kid_subset_size, seed=self.seed,
                device=pl_module.device).prepare()
            if self.adherence == "shapes":
                from lit_edify.data_modules.shapes import evaluation_prompts

                self._prompts = evaluation_prompts(n=self.num_images, seed=self.seed, split=self.adherence_split)
            else:
                self._prompts = self._evaluator.default_prompts(self.num_images)
        return self._evaluator

    def compute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Generate the fixed image set with the current weights and score it (no logging)."""
        evaluator = self._get_evaluator(trainer, pl_module)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                return evaluator.evaluate(pl_module.generate, self._prompts, batch_size=self.batch_size,
                                          seed=self.seed, **self.generate_kwargs)
        finally:
            pl_module.train(was_training)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        metrics = self.compute(trainer, pl_module) if trainer.is_global_zero else None
        metrics = trainer.strategy.broadcast(metrics, src=0)
        for name, value in metrics.items():
            if name != "num_images" and math.isfinite(value):
                pl_module.log(f"{stage}/{name}", float(value), on_step=False, on_epoch=True, sync_dist=False,
                              batch_size=1)
        if trainer.is_global_zero:
            self._append_json(trainer, {"stage": stage, "step": int(trainer.global_step),
                                        "epoch": int(trainer.current_epoch), **metrics})

    def _json_path(self, trainer: L.Trainer) -> Path:
        path = Path(self.output_json).expanduser()
        if not path.is_absolute():
            path = Path(trainer.log_dir or trainer.default_root_dir) / path
        return path

    def _append_json(self, trainer: L.Trainer, record: dict) -> None:
        path = self._json_path(trainer)
        records = []
        if path.is_file():
            try:
                records = json.loads(path.read_text())
            except json.JSONDecodeError:
                records = []
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        records.append(record)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(records, indent=1))
        os.replace(tmp, path)
