"""ControlNet training on a frozen base (Edify Image Sec. 5): only the control encoder learns.

The base (or upsampler) checkpoint is loaded by path (:func:`load_frozen_base`, the safe loader) and frozen:
no gradients, not in the optimizer, not in the EMA and not in this module's state_dict. The module is tied
to it by the checkpoint path and the sha256 of its weights (``base_sha256`` hyper-parameter), and refuses a
base whose weights hash differently. The loss is the base's Laplacian EDM loss (the mixin's
``diffusion_loss``) with the ControlNet residuals added inside the denoiser; the hint is zeroed with
probability ``p_drop_hint`` (and the base's text / camera / media dropout is applied) so that classifier-free
guidance over text and hint works at sampling time.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

from lit_edify.diffusion.edm import denoising_loss, precondition, sample_sigmas
from lit_edify.diffusion.plans import sample_plan
from lit_edify.nn.controlnet import HINT_CHANNELS, ControlNet, check_hint_type, inpaint_mask

from .config import DiffusionConfig, OptimConfig, SamplingConfig, coerce
from .mixin import LABELS, LaplacianDiffusionMixin, adamw_with_warmup, planned_steps
from .registry import register

Tensor = torch.Tensor
__all__ = ["ControlNetModule", "BaseMismatchError", "load_frozen_base", "weights_sha256"]
_BASES: dict[tuple, L.LightningModule] = {}


class BaseMismatchError(ValueError):
    """A ControlNet paired with a base whose weights are not the ones it was trained on."""


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over the module's state_dict (sorted names, dtypes, shapes and raw bytes): identifies a base."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def load_frozen_base(path: str | Path, expected_sha256: str | None = None,
                     trained: str = "ControlNet") -> L.LightningModule:
    """A trained base / upsampler from a ``.ckpt`` or ``.safetensors`` file (safe loader), frozen, in eval mode,
    with ``lit_edify_sha256`` (weights hash) and ``lit_edify_path`` (absolute path) set. Cached per process by
    (resolved path, mtime, size): ControlNets that name the same file share one copy. ``expected_sha256``: the hash
    of the base the ``trained`` module (a ControlNet, a personalization) was trained on; another raises
    :class:`BaseMismatchError` naming both."""
    from lit_edify.pipelines.checkpoints import load_module

    p = Path(path).resolve()
    key = (str(p), p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
    if key is None or key not in _BASES:  # a missing file: load_module raises FileNotFoundError with advice
        # LightningCLI builds this module with its config as the "given" hyper-parameters (a context variable);
        # without clearing it, the base's save_hyperparameters() would record the ControlNet's config.
        token = _given_hyperparameters.set(None)
        try:
            base = load_module(p).requires_grad_(False).eval()
        finally:
            _given_hyperparameters.reset(token)
        if isinstance(base, ControlNetModule):
            raise ValueError(f"{path} is a ControlNet checkpoint; base_ckpt must be a base or upsampler checkpoint")
        base.lit_edify_sha256 = weights_sha256(base)
        base.lit_edify_path = str(p)
        _BASES[key] = base
    base = _BASES[key]
    if expected_sha256 is not None and expected_sha256 != base.lit_edify_sha256:
        raise BaseMismatchError(
            f"base checkpoint {path} has weights sha256 {base.lit_edify_sha256} but this {trained} was trained on a "
            f"base with sha256 {expected_sha256}; pass the base checkpoint it was trained on (--ckpt / base_ckpt) or "
            f"retrain the {trained} on this base")
    return base


def on_frozen_base(base, optim, sampling) -> DiffusionConfig:
    """The configuration of a module trained on a frozen ``base``: the base's net / noise / conditioning groups,
    the module's own ``optim`` and ``sampling`` (None: the base's sampling defaults)."""
    return replace(base.cfg, optim=coerce(OptimConfig, optim),
                   sampling=coerce(SamplingConfig, sampling if sampling is not None else base.cfg.sampling))


class _Frozen:
    """Holds the frozen base outside the module tree; deep copies (the EMA's AveragedModel) share it."""

    def __init__(self, module: L.LightningModule):
        self.module = module

    def __deepcopy__(self, memo: dict) -> _Frozen:
        return self


@register
class ControlNetModule(LaplacianDiffusionMixin, L.LightningModule):
    """A ControlNet trained on a frozen base (report Sec. 5).

    Args:
        base_ckpt: trained base or upsampler checkpoint (``.ckpt`` / ``.safetensors``).
        hint: control type, one of ``canny``, ``hed``, ``depth``, ``inpaint`` (see ``lit_edify.data_modules.hints``).
        p_drop_hint: probability of zeroing a sample's hint in training (guidance over the hint).
        control_weight: default control weight at sampling.
        hint_hidden: width of the hint block (default: the U-Net's first-level width).
        optim: AdamW with linear warmup (:class:`OptimConfig`, as the base).
        projection_lr_scale: learning-rate multiplier of the zero-initialised projections and the hint block's
            last conv (the parts that start at zero).
        sampling: sampling defaults (:class:`SamplingConfig`); None = the base's.
        known_weight: ``inpaint`` only: loss weight of the pixels the mask keeps, relative to the generated ones
            (a weighted mean per sample, :func:`~lit_edify.diffusion.edm.denoising_loss`); 1 = the base's loss.
        base_sha256: sha256 of the base's weights (:func:`weights_sha256`); None = computed now and stored,
            so the checkpoint refuses any other base.
    """

    def __init__(self, base_ckpt: str, hint: str = "canny", p_drop_hint: float = 0.1, control_weight: float = 1.0,
                 hint_hidden: int | None = None, optim: OptimConfig = OptimConfig(weight_decay=0.0, warmup_steps=100),
                 projection_lr_scale: float = 1.0, sampling: SamplingConfig | None = None,
                 known_weight: float = 1.0, base_sha256: str | None = None):
        super().__init__()
        check_hint_type(hint)
        if not 0.0 <= p_drop_hint <= 1.0:
            raise ValueError(f"p_drop_hint must be in [0, 1], got {p_drop_hint}")
        if not known_weight > 0:
            raise ValueError(f"known_weight must be > 0, got {known_weight}")
        if known_weight != 1.0 and hint != "inpaint":
            raise ValueError(f"known_weight weights the pixels an inpainting mask keeps; a {hint!r} ControlNet has "
                             "no mask: leave it at 1")
        base = load_frozen_base(base_ckpt, base_sha256, "ControlNet")
        self.cfg = on_frozen_base(base, optim, sampling)
        self.save_hyperparameters({
            "base_ckpt": base.lit_edify_path,  # absolute: the checkpoint loads from any working directory
            "hint": hint, "p_drop_hint": p_drop_hint, "control_weight": control_weight, "hint_hidden": hint_hidden,
            "optim": asdict(self.cfg.optim), "projection_lr_scale": projection_lr_scale,
            "sampling": asdict(self.cfg.sampling), "known_weight": known_weight,
            "base_sha256": base.lit_edify_sha256})
        self._frozen = _Frozen(base)
        self.schedule, self.sigma_data = base.schedule, base.sigma_data
        self.resolution_multiple = base.resolution_multiple
        self.controlnet = ControlNet(base.net, HINT_CHANNELS[hint], hint_hidden)

    # the frozen base and its conditioning, outside the module tree (no state_dict / EMA / optimizer entries)
    @property
    def base(self) -> L.LightningModule:
        """The frozen base module, moved to this module's device on first use there."""
        base = self._frozen.module
        if base.device != self.device:
            base.to(self.device)
        return base

    @property
    def embedder(self):
        return self.base.embedder

    @property
    def _text_encoder(self):
        return self._frozen.module._text_encoder

    # ----------------------------------------------------------------------------------- denoiser
    def controlled_net(self, x: Tensor, c_noise: Tensor, context: Tensor, context_mask: Tensor | None = None,
                       extra: Tensor | None = None, hint: Tensor | None = None,
                       weight: float | Tensor = 1.0) -> Tensor:
        """Raw network F of the base with this ControlNet's residuals; hint (B, C_hint, H, W) at pixel size."""
        residuals = self.controlnet(x, c_noise, context, context_mask, hint, weight, extra=extra)
        return self.base.net(x, c_noise, context, context_mask, extra, control=residuals)

    def denoise(self, x: Tensor, sigma: Tensor, context: Tensor, context_mask: Tensor, extra: Tensor | None = None,
                hint: Tensor | None = None, weight: float | Tensor | None = None) -> Tensor:
        """Controlled D(x, sigma) (EDM preconditioning). hint None = the base denoiser alone."""
        if hint is None:
            return self.base.denoise(x, sigma, context, context_mask, extra)
        weight = self.hparams.control_weight if weight is None else weight
        return precondition(self.controlled_net, x, sigma, self.sigma_data, context=context,
                            context_mask=context_mask, extra=extra, hint=hint, weight=weight)

    # ----------------------------------------------------------------------------------- training
    def training_hint(self, batch: dict) -> Tensor:
        """batch["hint"] (B, C_hint, H, W) with each sample zeroed with probability p_drop_hint in training."""
        if "hint" not in batch:
            raise KeyError(f"the batch has no 'hint': wrap the data in lit_edify.data_modules.hints.HintDataModule with "
                           f"hint={self.hparams.hint!r} (see recipes/tiny/controlnet_{self.hparams.hint}.yaml)")
        hint = batch["hint"].to(self.device, torch.float32)
        if self.training and self.hparams.p_drop_hint > 0:
            keep = torch.rand(hint.shape[0], device=hint.device) >= self.hparams.p_drop_hint
            hint = hint * keep.view(-1, 1, 1, 1).to(hint.dtype)
        return hint

    def _training_conditions(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Context with the base's per-group dropout probabilities (the frozen embedder is in eval mode)."""
        b, emb = len(batch["caption"]), self.embedder
        drops = [torch.rand(b, device=self.device) < p if self.training else False
                 for p in (emb.p_drop_text, emb.p_drop_camera, emb.p_drop_media)]
        tokens, mask = self._text_encoder.to(self.device).encode(list(batch["caption"]))
        labels = [self._labels(batch.get(k), b) for k in LABELS]
        return emb(tokens.to(self.device), mask.to(self.device), *labels, *drops)

    def diffusion_loss(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Per-sample Laplacian EDM loss of the controlled denoiser (the base's loss) and the sigmas used."""
        x0, nz = batch["image"], self.cfg.noise
        context, mask = self._training_conditions(batch)
        hint = self.training_hint(batch)
        sigma = sample_sigmas(x0.shape[0], nz.p_mean, nz.p_std, nz.sigma_min, nz.sigma_max, device=self.device)
        weight = None
        if self.hparams.known_weight != 1.0:  # a dropped hint is all zero: a constant weight, the plain loss
            generate = inpaint_mask(hint)
            weight = generate + self.hparams.known_weight * (1 - generate)
        return denoising_loss(lambda x, s: self.denoise(x, s, context, mask, hint=hint), x0, sigma, self.schedule,
                              self.sigma_data, pixel_weight=weight), sigma

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        kind = getattr(dm, "hint", None)
        if kind is not None and kind != self.hparams.hint:
            raise ValueError(f"the data gives {kind!r} hints but this ControlNet is configured for "
                             f"{self.hparams.hint!r}; set the same hint type in model and data")

    def configure_optimizers(self):
        """AdamW over the ControlNet only (the base has no trainable parameters), zero-initialised layers at
        ``lr * projection_lr_scale``; linear warmup, constant, optional final decay."""
        lr, cn = self.cfg.optim.lr, self.controlnet
        zero = {id(p) for m in (*cn.zero_convs, cn.mid_out, cn.hint_block.convs[-1]) for p in m.parameters()}
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) not in zero], "lr": lr},
                  {"params": [p for p in params if id(p) in zero], "lr": lr * self.hparams.projection_lr_scale}]
        return adamw_with_warmup(groups, self.cfg.optim, planned_steps(self))

    # ----------------------------------------------------------------------------------- sampling
    def stage(self, captions: list[str], *, hint: Tensor | None = None, weight: float | Tensor | None = None,
              pitch=None, dof=None, media_type=None, steps: int | None = None, guidance: float | None = None,
              factor: int = 1, extra: Tensor | None = None):
        """This ControlNet on its base as one sampling Stage (CFG over text and hint, see pipelines.controlled)."""
        from lit_edify.pipelines.controlled import controlled_stage

        weight = self.hparams.control_weight if weight is None else weight
        return controlled_stage(self.base, captions, [(self, hint, weight)], pitch=pitch, dof=dof,
                                media_type=media_type, steps=steps or self.cfg.sampling.steps,
                                guidance=self.cfg.sampling.guidance if guidance is None else guidance, factor=factor)

    @torch.no_grad()
    def generate(self, captions: list[str], *, hint: Tensor | None = None, weight: float | Tensor | None = None,
                 pitch=None, dof=None, media_type=None, aspect: str = "1:1", seed: int = 0,
                 steps: int | None = None, solver: str | None = None, guidance: float | None = None,
                 progress=None) -> Tensor:
        """Controlled text -> image with the base alone; hint (N, C_hint, H, W) at the image size of ``aspect``
        (:meth:`image_shape`). Returns (N, 3, H, W) in [-1, 1]."""
        if hint is None:
            raise TypeError(f"ControlNetModule.generate needs hint=(N, {HINT_CHANNELS[self.hparams.hint]}, H, W) "
                            "(see lit_edify.data_modules.hints); use the base module for uncontrolled samples")
        h, w = self.image_shape(aspect)
        st = self.stage(captions, hint=hint.to(self.device), weight=weight, pitch=pitch, dof=dof,
                        media_type=media_type, steps=steps, guidance=guidance)
        g = torch.Generator(device=self.device).manual_seed(seed)
        x = sample_plan([st], (len(captions), 3, h, w), "cascade", solver or self.cfg.sampling.solver,
                        generator=g, device=self.device, progress=progress)
        return x.clamp(-1, 1)
