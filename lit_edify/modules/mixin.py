"""LaplacianDiffusionMixin: what every diffusion LightningModule of the suite shares.

A stage (base, upsampler, ...) is a U-Net denoiser at one resolution with its own noise range
[sigma_min, sigma_max], training distribution ln sigma ~ N(p_mean, p_std^2) and Laplacian attenuation
schedule (Sec. 2.2, 3). The mixin owns conditioning (frozen text encoder + camera / media tokens with
embedding dropout, Sec. 3.2), the EDM loss under the attenuated forward process with optional per-sample
weights (Sec. 3.5), logging per sigma bucket, the optimizer (AdamW, warmup then constant LR) and
classifier-free-guided sampling with whatever weights are loaded (the EMA callback swaps EMA weights in
for validation; checkpoints store EMA weights as ``state_dict``).
"""
from __future__ import annotations

import functools
import math
from collections import deque
from contextlib import contextmanager

import torch
from torch import nn

from lit_edify.aspect import bucket_shape
from lit_edify.diffusion.edm import LossLogvar, denoising_loss, precondition, sample_sigmas, uncertainty_weighted
from lit_edify.diffusion.laplacian import LaplacianSchedule
from lit_edify.diffusion.plans import Stage, sample_plan
from lit_edify.diffusion.samplers import CFGDenoiser, get_solver
from lit_edify.nn.conditioning import ConditionEmbedder, TextEncoder
from lit_edify.nn.presets import build_unet

from .autoguide import Guide, guide_denoiser, maybe_take_snapshot
from .config import DiffusionConfig, OptimConfig
from .registry import record_class

Tensor = torch.Tensor
LABELS = ("pitch", "dof", "media_type")
_TEXT_ENCODERS: dict[tuple[str, int], TextEncoder] = {}


def shared_text_encoder(name_or_path: str, max_length: int) -> TextEncoder:
    """One frozen encoder per (name, max_length) per process, shared by every module that asks for it."""
    key = (name_or_path, max_length)
    if key not in _TEXT_ENCODERS:
        _TEXT_ENCODERS[key] = TextEncoder(name_or_path, max_length=max_length)
    return _TEXT_ENCODERS[key]


def lr_factor(step: int, warmup_steps: int, total_steps: int | None = None, decay_fraction: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer ``step`` (0-based): linear warmup to 1 over ``warmup_steps``, constant,
    then (``decay_fraction`` > 0 and ``total_steps`` known) linear decay reaching 0 at ``total_steps``."""
    f = min(1.0, (step + 1) / max(1, warmup_steps))
    if decay_fraction > 0 and total_steps:
        decay = max(1, round(decay_fraction * total_steps))
        f = min(f, max(0.0, (total_steps - step) / decay))
    return f


def planned_steps(module) -> int | None:
    """The attached trainer's total optimizer steps (``estimated_stepping_batches``), or None when there is no
    trainer or training is open-ended."""
    trainer = getattr(module, "_trainer", None)
    total = trainer.estimated_stepping_batches if trainer is not None else math.inf
    return int(total) if math.isfinite(total) else None


def adamw_with_warmup(groups: list[dict], optim: OptimConfig, total_steps: int | None = None) -> dict:
    """Lightning optimizer config: AdamW over parameter ``groups`` (a group without "lr" uses ``optim.lr``), linear
    warmup over ``optim.warmup_steps``, constant, then the optional final decay of ``optim.decay_fraction`` of
    ``total_steps`` (:func:`lr_factor`); ``optim.fused`` uses the fused kernel (CPU and CUDA: every tensor in one
    pass instead of ~10 ops per tensor)."""
    if optim.decay_fraction > 0 and not total_steps:
        raise ValueError("optim.decay_fraction > 0 needs a known number of training steps: set trainer.max_steps")
    params = [p for g in groups for p in g["params"]]
    fused = optim.fused and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    opt = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay,
                            fused=fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, functools.partial(lr_factor, warmup_steps=optim.warmup_steps, total_steps=total_steps,
                               decay_fraction=optim.decay_fraction))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LaplacianDiffusionMixin:
    """Mixed into ``lightning.LightningModule`` subclasses; call :meth:`init_diffusion` from ``__init__``."""

    net: nn.Module
    embedder: ConditionEmbedder
    schedule: LaplacianSchedule
    cfg: DiffusionConfig

    def init_diffusion(self, cfg: DiffusionConfig, extra_in_channels: int = 0) -> None:
        """Build the U-Net, text conditioning and Laplacian schedule from ``cfg`` (kept as ``self.cfg``)."""
        self.cfg = cfg
        net, noise, cond = cfg.net, cfg.noise, cfg.conditioning
        overrides = dict(net.overrides or {})
        if net.context_dim is not None:
            overrides["context_dim"] = net.context_dim
        self.net = build_unet(net.preset, extra_in_channels=extra_in_channels, **overrides)
        if net.channels_last:  # only 4-D (conv) weights change layout; oneDNN / cuDNN then run channels-last
            self.net.to(memory_format=torch.channels_last)
        net_multiple = self.net.resolution_multiple
        #: image sides are multiples of this (see image_shape); a 2-stage pair needs up.multiple == f * base.multiple
        self.resolution_multiple = noise.bucket_multiple or net_multiple
        if noise.resolution % net_multiple or self.resolution_multiple % net_multiple:
            raise ValueError(f"resolution {noise.resolution} and bucket multiple {self.resolution_multiple} must be "
                             f"multiples of {net_multiple} for U-Net preset {net.preset!r}")
        # The frozen encoder is kept out of the module tree: no EMA copy, no checkpoint weights, no DDP sync.
        object.__setattr__(self, "_text_encoder", shared_text_encoder(cond.text_encoder, cond.max_text_length))
        self.embedder = ConditionEmbedder(self._text_encoder.dim, self.net.context_dim, cond.num_pitch, cond.num_dof,
                                          cond.num_media, cond.p_drop_text, cond.p_drop_camera, cond.p_drop_media)
        #: frozen autoguidance guide (lit_edify.modules.autoguide), filled during training at sampling.guide_at
        self.guide = Guide(self.net, self.embedder) if cfg.sampling.guide_at is not None else None
        self.schedule = LaplacianSchedule(tuple(noise.band_factors), tuple(noise.band_cutoffs),
                                          tuple(noise.band_starts) if noise.band_starts else None,
                                          noise.schedule_shape)
        if self.schedule.cutoffs and noise.sigma_max < self.schedule.cutoffs[0]:
            raise ValueError(f"sigma_max={noise.sigma_max} is below the finest band cutoff {self.schedule.cutoffs[0]}: "
                             "the stage could never be entered from a lower resolution (DESIGN.md section 2)")
        self.sigma_data = noise.sigma_data
        self.loss_logvar = LossLogvar() if noise.learned_loss_weight else None
        get_solver(cfg.sampling.solver)  # an unknown solver fails now, not after training

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the module class for the safe loader and LightningCLI's resume (:func:`registry.record_class`)."""
        record_class(self, checkpoint)

    # ----------------------------------------------------------------------------------- conditioning
    def _labels(self, values, batch_size: int) -> Tensor:
        if values is None:
            return torch.full((batch_size,), -1, dtype=torch.long, device=self.device)
        return torch.as_tensor(values, dtype=torch.long, device=self.device).reshape(batch_size)

    def encode_conditions(self, captions: list[str], pitch=None, dof=None, media_type=None,
                          drop: bool | None = None, embedder: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Captions + labels -> cross-attention (context (B, L+3, D), mask (B, L+3) bool).

        drop=None: random embedding dropout in training mode; True: the unconditional context. ``embedder``: another
        condition embedder than ``self.embedder`` (the autoguidance guide's).
        """
        enc = self._text_encoder
        if enc.device != self.device:
            enc.to(self.device)
        # a compiled U-Net sees one context length: captions of another token count would recompile it (or trip
        # its size/stride guards), so it gets contexts padded to max_length (masked positions change nothing)
        tokens, mask = enc.encode(list(captions), pad_to_max_length=self.cfg.net.compile or None)
        b = len(captions)
        return (embedder or self.embedder)(tokens.to(self.device), mask.to(self.device), self._labels(pitch, b),
                                           self._labels(dof, b), self._labels(media_type, b), drop, drop, drop)

    def denoise(self, x: Tensor, sigma: Tensor, context: Tensor, context_mask: Tensor,
                extra: Tensor | None = None) -> Tensor:
        """D(x, sigma): the preconditioned U-Net (EDM). x (B, 3, H, W), sigma (B,) -> x0_hat (B, 3, H, W)."""
        return precondition(self.net, x, sigma, self.sigma_data, context=context, context_mask=context_mask,
                            extra=extra)

    def extra_input(self, batch: dict) -> Tensor | None:
        """Extra U-Net input channels for a training batch (control / low-res inputs); None by default."""
        return None

    # ----------------------------------------------------------------------------------- training
    def diffusion_loss(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Per-sample EDM loss (Eq. 1, 5) and the sigmas used. batch["image"]: (B, 3, H, W) in [-1, 1]."""
        x0 = batch["image"]
        b = x0.shape[0]
        context, mask = self.encode_conditions(batch["caption"], *(batch.get(k) for k in LABELS))
        nz = self.cfg.noise
        sigma = sample_sigmas(b, nz.p_mean, nz.p_std, nz.sigma_min, nz.sigma_max, device=self.device)
        extra = self.extra_input(batch)
        loss = denoising_loss(lambda x, s: self.denoise(x, s, context, mask, extra), x0, sigma, self.schedule,
                              self.sigma_data)
        return loss, sigma

    @contextmanager
    def seeded(self, seed: int):
        """Fork the RNG (CPU and this module's CUDA device) and seed it. Training seeds it from (step, micro-batch,
        rank), so the noise levels, noise and embedding dropout of a resumed run repeat the original exactly."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed % (2**63))
            yield

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        attached = self._trainer is not None
        rank, step = (self.trainer.global_rank, self.trainer.global_step) if attached else (0, 0)
        with self.seeded(1_000_003 * step + 7_919 * batch_idx + 104_729 * rank + 1):
            loss, sigma = self.diffusion_loss(batch)
        self._log_sigma_buckets(loss.detach(), sigma, "train")
        if "loss_weight" in batch:
            loss = loss * batch["loss_weight"].to(loss)
        self.log("train/loss", loss.mean(), prog_bar=True, batch_size=len(sigma))
        if getattr(self, "loss_logvar", None) is not None:  # what is optimised; train/loss stays the EDM loss
            return uncertainty_weighted(loss, self.loss_logvar(sigma)).mean()
        return loss.mean()

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Loss at fixed noise (seeded by batch index) so that validation curves are comparable."""
        with self.seeded(10_000 + batch_idx):
            loss, sigma = self.diffusion_loss(batch)
        self._log_sigma_buckets(loss, sigma, "val")
        self.log("val/loss", loss.mean(), prog_bar=True, batch_size=len(sigma), sync_dist=True)
        return loss.mean()

    def _log_sigma_buckets(self, loss: Tensor, sigma: Tensor, split: str) -> None:
        """Mean loss per decade of sigma, e.g. ``train/loss_sigma_1e-1`` for sigma in [0.1, 1).

        Validation: the mean over the epoch. Training: the mean over every sample of the decade in the last
        ``trainer.log_every_n_steps`` optimizer steps, logged each time Lightning writes step metrics, so a
        decade with few samples per batch still gives a smooth curve over steps. The per-step sums stay on
        the device; they are read back once per logging step.
        """
        if split != "train":
            decade = sigma.log10().floor()
            for d in decade.unique().tolist():
                sel = decade == d
                self.log(f"{split}/loss_sigma_1e{int(d)}", loss[sel].mean(), batch_size=int(sel.sum()),
                         on_step=False, on_epoch=True)
            return
        if self._trainer is None:
            return
        trainer = self.trainer
        lo, hi = (math.floor(math.log10(max(s, 1e-12))) for s in (self.cfg.noise.sigma_min, self.cfg.noise.sigma_max))
        idx = (sigma.detach().log10().floor() - lo).clamp(0, hi - lo).long()
        sums = torch.zeros(2, hi - lo + 1, device=loss.device)
        sums[0].index_add_(0, idx, loss.detach().float())
        sums[1].index_add_(0, idx, torch.ones_like(idx, dtype=sums.dtype))
        size = max(1, trainer.log_every_n_steps) * max(1, trainer.accumulate_grad_batches)  # in micro-batches
        window = getattr(self, "_sigma_window", None)
        if window is None or window.maxlen != size:
            window = self._sigma_window = deque(window or (), maxlen=size)
        window.append(sums)
        if not trainer._logger_connector.should_update_logs:  # as LearningRateMonitor does
            return
        total, count = torch.stack(tuple(window)).sum(0).tolist()
        for i, (s, c) in enumerate(zip(total, count)):
            if c > 0:
                self.log(f"train/loss_sigma_1e{lo + i}", s / c, batch_size=int(c), on_step=True, on_epoch=False)

    def dashboard_hparams(self) -> dict:
        """The hyperparameters of TensorBoard's HPARAMS tab (the full set stays in the run's hparams.yaml).

        ``batch_size`` is images per optimizer step (per-device batch x accumulation x devices)."""
        cfg, trainer = self.cfg, self.trainer
        nz, dm = cfg.noise, trainer.datamodule
        batch = getattr(dm, "batch_size", None) or (dm.hparams.get("batch_size") if dm is not None else None)
        out = {"unet": cfg.net.preset, "unet_overrides": cfg.net.overrides or None,
               "resolution": nz.resolution, "factor": self.hparams.get("factor"),
               "bands": list(nz.band_factors or []), "lr": cfg.optim.lr,
               "batch_size": batch * trainer.accumulate_grad_batches * trainer.world_size if batch else None,
               "sigma_min": nz.sigma_min, "sigma_max": nz.sigma_max, "p_mean": nz.p_mean,
               "p_std": nz.p_std, "guidance": cfg.sampling.guidance, "sample_steps": cfg.sampling.steps,
               "max_steps": trainer.max_steps if trainer.max_steps > 0 else None}
        return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in out.items() if v is not None}

    def on_validation_epoch_end(self) -> None:
        """TensorBoard: ``hp_metric`` = this validation's ``val/loss`` (same step); after the first validation,
        the HPARAMS summary: :meth:`dashboard_hparams` with hp_metric and the ``val/*`` metrics as columns."""
        trainer = self.trainer
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        self.log("hp_metric", trainer.callback_metrics["val/loss"], on_step=False, on_epoch=True)
        if getattr(self, "_hparams_summary_written", False) or not trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import TensorBoardLogger
        try:
            from torch.utils.tensorboard.summary import hparams
        except ImportError:  # tensorboardX only
            from tensorboardX.summary import hparams
        names = ["hp_metric"] + sorted(k for k in trainer.callback_metrics
                                       if k.startswith("val/") and "loss_sigma" not in k)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment._get_file_writer()  # as TensorBoardLogger.log_hyperparams does
                for summary in hparams(self.dashboard_hparams(), dict.fromkeys(names, 0.0)):
                    writer.add_summary(summary)
        self._hparams_summary_written = True

    def on_fit_start(self) -> None:
        """``compile=True``: compile the U-Net in place (``nn.Module.compile`` keeps the state_dict keys). A guide
        (``sampling.guide_at``) needs the run's total steps to know when to take its snapshot."""
        self._total_steps = planned_steps(self)
        if getattr(self, "guide", None) is not None and self._total_steps is None:
            raise ValueError("sampling.guide_at (autoguidance) needs a known number of training steps: set "
                             "trainer.max_steps")
        if self.cfg.net.compile:
            self.net.compile()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Take the autoguidance snapshot at ``sampling.guide_at`` of training (after the EMA's update)."""
        if getattr(self, "guide", None) is not None:
            maybe_take_snapshot(self, self.trainer, self._total_steps)

    def configure_optimizers(self):
        """AdamW with linear warmup then a constant learning rate (Sec. 3.5), optionally a final decay."""
        return adamw_with_warmup([{"params": [p for p in self.parameters() if p.requires_grad]}], self.cfg.optim,
                                 planned_steps(self))

    # ----------------------------------------------------------------------------------- sampling
    def image_shape(self, aspect: str = "1:1") -> tuple[int, int]:
        """(H, W) of this stage's images for an aspect bucket (see lit_edify.data_modules.buckets)."""
        return bucket_shape(aspect, self.cfg.noise.resolution, self.resolution_multiple)

    def stage(self, captions: list[str], *, pitch=None, dof=None, media_type=None, steps: int | None = None,
              guidance: float | None = None, factor: int = 1, extra: Tensor | None = None,
              autoguidance: float | None = None) -> Stage:
        """This module as one :class:`Stage` of a sampling plan, with classifier-free guidance and autoguidance
        (``guidance`` / ``autoguidance`` None: the ``sampling`` config's)."""
        nz, sp = self.cfg.noise, self.cfg.sampling
        cond_ctx, cond_mask = self.encode_conditions(captions, pitch, dof, media_type, drop=False)
        unc_ctx, unc_mask = self.encode_conditions(captions, pitch, dof, media_type, drop=True)
        cond = {"context": cond_ctx, "context_mask": cond_mask}
        uncond = {"context": unc_ctx, "context_mask": unc_mask}
        if extra is not None:
            cond["extra"] = uncond["extra"] = extra
        scale = sp.guidance if guidance is None else guidance
        interval = sp.guidance_interval
        weight = sp.autoguidance if autoguidance is None else autoguidance
        guide = guide_denoiser(self, captions, (pitch, dof, media_type), extra, weight)
        denoiser = CFGDenoiser(lambda x, s, **c: self.denoise(x, s, **c), cond, uncond, scale,
                               tuple(interval) if interval else None, guide=guide, guide_scale=weight)
        return Stage(denoiser, self.schedule, nz.sigma_min, nz.sigma_max, steps or sp.steps, factor=factor)

    @torch.no_grad()
    def generate(self, captions: list[str], *, pitch=None, dof=None, media_type=None, aspect: str = "1:1",
                 seed: int = 0, steps: int | None = None, solver: str | None = None,
                 guidance: float | None = None, autoguidance: float | None = None, progress=None) -> Tensor:
        """Text -> images with this stage alone (full noise range).

        Returns (N, 3, H, W) float in [-1, 1], H x W from :meth:`image_shape`. Deterministic given seed.
        """
        h, w = self.image_shape(aspect)
        st = self.stage(captions, pitch=pitch, dof=dof, media_type=media_type, steps=steps, guidance=guidance,
                        autoguidance=autoguidance)
        g = torch.Generator(device=self.device).manual_seed(seed)
        x = sample_plan([st], (len(captions), 3, h, w), "cascade", solver or self.cfg.sampling.solver,
                        generator=g, device=self.device, progress=progress)
        return x.clamp(-1, 1)

