"""Personalization finetuning (Edify Image Sec. 7): a base or upsampler learns new subjects / styles from a few
captioned images by training only a named subset of its cross-attention parameters.

The architecture is unchanged and the text encoder frozen: the module holds a copy of the checkpoint's U-Net
(``net``) and condition embedder (``embedder``), under the same state_dict names as the base, and only the
parameters that :func:`lit_edify.personalization.select_parameters` picks (default ``crossattn_kv``: the
key/value projections of the text context, ~3% of the paper U-Nets) get gradients. The loss is the base's
Laplacian EDM loss (the mixin's ``diffusion_loss``) with the base's noise range, schedule and embedding dropout.

Prior preservation (DreamBooth): with ``prior_images > 0`` the frozen model generates that many class images
from ``prior_prompts`` once, before the first step; they are cached on disk (``prior_cache``, keyed by the base
hash and the generation settings) and ``prior_ratio`` of them per concept image are appended to every training
batch with their captions, so the finetune keeps drawing what the base drew for ordinary prompts.

``lit-edify personalize export --ckpt run.ckpt --out concept.safetensors`` writes the trained tensors only
(:mod:`lit_edify.personalization`), tied to the base by its weights sha256.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch

from lit_edify.personalization import freeze_except, trainable_fraction

from .config import OptimConfig, SamplingConfig
from .controlnet import load_frozen_base, on_frozen_base
from .mixin import LABELS, LaplacianDiffusionMixin, adamw_with_warmup, planned_steps
from .registry import register

Tensor = torch.Tensor
__all__ = ["Personalize"]


@register
class Personalize(LaplacianDiffusionMixin, L.LightningModule):
    """Finetune a named parameter subset of a trained base / upsampler on concept images (report Sec. 7).

    Args:
        base_ckpt: trained base or upsampler checkpoint (``.ckpt`` / ``.safetensors``, safe loader).
        trainable: parameter-name patterns (regular expressions, or names of
            :data:`lit_edify.personalization.PATTERNS`); default the cross-attention key/value projections.
        concepts: the made-up names the captions use (recorded in the exported file).
        optim: AdamW with linear warmup over the trainable tensors (:class:`OptimConfig`).
        sampling: sampling defaults (:class:`SamplingConfig`); None = the base's.
        prior_prompts: captions of the class images for prior preservation (cycled).
        prior_images: number of class images the frozen model generates once (0: no prior preservation).
        prior_ratio: class images appended per concept image in each training batch.
        prior_cache: file of the cached class images (default: next to nothing -> kept in memory only).
        prior_steps, prior_seed: sampling steps (None: the base's) and seed of the class images.
        base_sha256: sha256 of the base weights; None = computed now (a checkpoint refuses any other base).
    """

    def __init__(self, base_ckpt: str, trainable: list[str] = ("crossattn_kv",), concepts: list[str] = (),
                 optim: OptimConfig = OptimConfig(lr=1e-4, weight_decay=0.0, warmup_steps=0),
                 sampling: SamplingConfig | None = None, prior_prompts: list[str] | None = None,
                 prior_images: int = 0, prior_ratio: float = 1.0, prior_cache: str | None = None,
                 prior_steps: int | None = None, prior_seed: int = 0, base_sha256: str | None = None):
        super().__init__()
        if prior_images < 0 or prior_ratio < 0:
            raise ValueError(f"prior_images and prior_ratio must be >= 0, got {prior_images}, {prior_ratio}")
        if prior_images and not prior_prompts:
            raise ValueError("prior_images > 0 needs prior_prompts (captions of the class images to generate)")
        # cached and frozen: this module trains copies of its net / embedder
        base = load_frozen_base(base_ckpt, base_sha256, "personalization")
        if prior_images and type(base).generate is not LaplacianDiffusionMixin.generate:
            raise ValueError(f"prior preservation generates class images from text alone; {type(base).__name__} "
                             "cannot (an upsampler needs a low-resolution input): set prior_images to 0")
        self.cfg = on_frozen_base(base, optim, sampling)
        self.save_hyperparameters({
            "base_ckpt": base.lit_edify_path, "trainable": list(trainable), "concepts": list(concepts),
            "optim": asdict(self.cfg.optim), "sampling": asdict(self.cfg.sampling),
            "prior_prompts": list(prior_prompts) if prior_prompts else None, "prior_images": prior_images,
            "prior_ratio": prior_ratio, "prior_cache": prior_cache, "prior_steps": prior_steps,
            "prior_seed": prior_seed, "base_sha256": base.lit_edify_sha256})
        self.net = copy.deepcopy(base.net).train()  # the frozen base is in eval mode; training is not
        self.embedder = copy.deepcopy(base.embedder).requires_grad_(False).train()  # its embedding dropout
        object.__setattr__(self, "_text_encoder", base._text_encoder)
        self.schedule, self.sigma_data = base.schedule, base.sigma_data
        self.resolution_multiple = base.resolution_multiple
        #: names (in ``net``) of the tensors that train; everything else is frozen
        self.trainable_names = freeze_except(self.net, self.hparams.trainable)
        self.trainable_fraction = trainable_fraction(self.net, self.hparams.trainable)
        self._prior: tuple[Tensor, list[str]] | None = None

    def trained_state(self) -> dict[str, Tensor]:
        """The trained tensors under the base's state_dict names (``net.<name>``): what a personalization file
        holds."""
        params = dict(self.net.named_parameters())
        return {f"net.{n}": params[n].detach() for n in self.trainable_names}

    # ----------------------------------------------------------------------------------- prior preservation
    def _prior_key(self) -> str:
        hp = self.hparams
        spec = [hp.base_sha256, list(hp.prior_prompts), hp.prior_images, hp.prior_steps, hp.prior_seed,
                asdict(self.cfg.sampling)]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()

    @torch.no_grad()
    def prior_images(self, progress=None) -> tuple[Tensor, list[str]]:
        """(images (N, 3, H, W) in [-1, 1], captions) of the class images: read from ``prior_cache`` when it holds
        the same base and settings, else generated by the (still unchanged) model in chunks and cached."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open, save_file

        from lit_edify.io import atomic_path

        hp, key = self.hparams, self._prior_key()
        n = hp.prior_images
        captions = [hp.prior_prompts[i % len(hp.prior_prompts)] for i in range(n)]
        cache = Path(hp.prior_cache) if hp.prior_cache else None
        if cache is not None and cache.is_file():
            try:
                with safe_open(str(cache), "pt") as f:
                    same = (f.metadata() or {}).get("key") == key
                if same:
                    return load_file(str(cache))["images"].float() / 127.5 - 1, captions
            except (SafetensorError, OSError, ValueError, KeyError):
                pass  # unreadable cache: regenerate and replace it
        was_training = self.training
        self.eval()
        chunks = []
        for i in range(0, n, 32):
            chunks.append(self.generate(captions[i:i + 32], seed=hp.prior_seed + i, steps=hp.prior_steps).cpu())
        self.train(was_training)
        images = torch.cat(chunks)
        if cache is not None:
            u8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            with atomic_path(cache) as tmp:
                save_file({"images": u8}, str(tmp), metadata={"key": key, "captions": json.dumps(captions)})
            images = u8.float() / 127.5 - 1  # the same values whether generated now or read back later
        return images, captions

    def on_fit_start(self) -> None:
        super().on_fit_start()
        dm = getattr(self.trainer, "datamodule", None)
        train_set = getattr(dm, "train_set", None)
        if train_set is not None and len(train_set) < 2:
            raise ValueError(f"personalization needs 3-20 captioned concept images; the training data has "
                             f"{len(train_set)}")
        if self.hparams.prior_images > 0 and self._prior is None:
            self._prior = self.prior_images()

    def _with_prior(self, batch: dict) -> dict:
        """The batch with ``ceil(prior_ratio * B)`` random class images (and captions, unknown labels) appended."""
        images, captions = self._prior
        b = batch["image"].shape[0]
        k = math.ceil(self.hparams.prior_ratio * b)
        if k == 0:
            return batch
        idx = torch.randint(len(captions), (k,)).tolist()
        out = {"image": torch.cat([batch["image"], images[idx].to(batch["image"])]),
               "caption": list(batch["caption"]) + [captions[i] for i in idx]}
        if "loss_weight" in batch:  # training_step weights the per-sample loss of the mixed batch
            batch["loss_weight"] = torch.cat([batch["loss_weight"].to(self.device),
                                              torch.ones(k, device=self.device)])
        for name in LABELS:
            if batch.get(name) is not None:
                values = torch.as_tensor(batch[name], device=self.device).reshape(b)
                out[name] = torch.cat([values, torch.full((k,), -1, dtype=values.dtype, device=self.device)])
        return out

    def diffusion_loss(self, batch: dict) -> tuple[Tensor, Tensor]:
        """The base's per-sample Laplacian EDM loss; in training, over the batch plus its class images."""
        if self.training and self._prior is not None:
            batch = self._with_prior(batch)
        return super().diffusion_loss(batch)

    def configure_optimizers(self):
        """AdamW over the selected tensors only: linear warmup, constant, optional final decay."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        return adamw_with_warmup([{"params": params}], self.cfg.optim, planned_steps(self))

