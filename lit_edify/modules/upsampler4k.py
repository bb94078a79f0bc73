"""The 4K upsampler (Edify Image Sec. 4): the 1K generator fine-tuned with a low-resolution ControlNet.

* Initialisation: the U-Net and conditioning of a trained 1K upsampler checkpoint, with the noise range rescaled
  to the new resolution by the per-resolution sigma rule (DESIGN.md section 2: going up by ``factor`` multiplies
  sigma by ``factor``): ``sigma_min``, ``sigma_max``, the band cutoffs and starts times ``factor``, ``p_mean`` +
  ``ln(factor)``, ``resolution`` times ``factor``. Without the ControlNet this *is* the SDEdit baseline of the
  report (resize, forward-diffuse at sigma_max, denoise with the 1K model).
* A ControlNet (``lit_edify.nn.controlnet``) whose hint is the clean low-resolution input ``up(x_low, factor)``;
  its zero projections make a fresh Upsampler4K exactly that baseline. Base U-Net and ControlNet are trained
  together (unlike the hint ControlNets of Sec. 5, the base is not frozen).
* Sampling (:meth:`Upsampler4K.upsample`): the cascade entry ``up(x_low) + sigma_max * eps``, reconstruction
  guidance (``lit_edify.diffusion.guidance``) and tiled denoising with the positional encoding in global
  coordinates (``lit_edify.diffusion.tiled``), so memory is set by the tile, not the output.
"""
from __future__ import annotations

import math
from dataclasses import replace

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

from lit_edify.diffusion.edm import denoising_loss, precondition, sample_sigmas
from lit_edify.diffusion.guidance import ReconstructionGuidance
from lit_edify.diffusion.laplacian import down, up
from lit_edify.diffusion.plans import Stage, sample_plan
from lit_edify.diffusion.tiled import TiledDenoiser
from lit_edify.nn.controlnet import ControlNet

from .config import (ConditioningConfig, DiffusionConfig, NetConfig, NoiseConfig, OptimConfig, SamplingConfig,
                     coerce)
from .mixin import LaplacianDiffusionMixin
from .registry import register

Tensor = torch.Tensor
__all__ = ["Upsampler4K", "rescale_noise"]


def rescale_noise(noise: NoiseConfig, factor: int) -> NoiseConfig:
    """A stage's noise configuration at ``factor`` x its resolution (per-resolution sigma rule, Eq. 7): every
    sigma (range, band cutoffs and starts) times ``factor``, ``p_mean`` + ln(factor), ``resolution`` times factor."""
    f = float(factor)
    return replace(noise, resolution=noise.resolution * factor, sigma_min=noise.sigma_min * f,
                   sigma_max=noise.sigma_max * f, p_mean=noise.p_mean + math.log(f),
                   band_cutoffs=[c * f for c in noise.band_cutoffs],
                   band_starts=None if noise.band_starts is None else [s * f for s in noise.band_starts],
                   bucket_multiple=None if noise.bucket_multiple is None else noise.bucket_multiple * factor)


def _load_1k(path: str):
    """The 1K stage to start from (safe loader), built outside LightningCLI's given-hyper-parameters context."""
    from lit_edify.pipelines.checkpoints import load_module

    token = _given_hyperparameters.set(None)
    try:
        return load_module(path)
    finally:
        _given_hyperparameters.reset(token)


@register
class Upsampler4K(LaplacianDiffusionMixin, L.LightningModule):
    """4K upsampler (report Sec. 4): U-Net + ControlNet on the clean low-resolution image, both trained.

    Args:
        upsampler_ckpt: the trained 1K upsampler (``.ckpt`` / ``.safetensors``) to start from; its U-Net,
            embedder and conditioning are copied and its noise range rescaled by ``factor`` (the groups given are
            then ignored). None: build from the ``net`` / ``noise`` / ``conditioning`` groups (what a saved
            Upsampler4K checkpoint holds).
        factor: resolution ratio to the input (4: 1K -> 4K).
        optim, sampling: AdamW with warmup; sampling defaults (steps, solver; guidance is not used: there is no
            text prompt to guide on).
        hint_hidden: width of the ControlNet's hint block (default: the U-Net's first-level width).
        recon_guidance, recon_window: default reconstruction-guidance weight w_r and optional sigma window.
        tile, tile_overlap: default tile side and overlap in output pixels for sampling.
        restore_low: default of the colour fix (:meth:`upsample`): on, so that the output keeps the input's colours
            (without it the tiny chain drifts by 7-19/255 per channel; README: 4K upsampler).
        activation_checkpointing: recompute the U-Net's and ControlNet's blocks in the backward pass (training
            memory; the paper-scale recipe turns it on).
    """

    def __init__(self, upsampler_ckpt: str | None = None, factor: int = 4, net: NetConfig = NetConfig(),
                 noise: NoiseConfig = NoiseConfig(), conditioning: ConditioningConfig = ConditioningConfig(),
                 optim: OptimConfig = OptimConfig(lr=1e-4, weight_decay=0.0, warmup_steps=100),
                 sampling: SamplingConfig = SamplingConfig(steps=16, guidance=1.0), hint_hidden: int | None = None,
                 recon_guidance: float = 1.0, recon_window: tuple[float, float] | None = None, tile: int = 1024,
                 tile_overlap: int = 128, restore_low: bool = True, activation_checkpointing: bool = False):
        super().__init__()
        source = None
        if upsampler_ckpt is not None:
            source = _load_1k(upsampler_ckpt)
            net, conditioning = source.cfg.net, source.cfg.conditioning
            noise = rescale_noise(source.cfg.noise, factor)
        elif coerce(NoiseConfig, noise) == NoiseConfig():  # (typed groups, not Optional: LightningCLI resumes)
            raise ValueError("Upsampler4K needs upsampler_ckpt (the trained 1K upsampler to start from) or the "
                             "net/noise/conditioning groups of a saved Upsampler4K")
        if recon_guidance < 0:
            raise ValueError(f"recon_guidance must be >= 0, got {recon_guidance}")
        cfg = DiffusionConfig(coerce(NetConfig, net), coerce(NoiseConfig, noise),
                              coerce(ConditioningConfig, conditioning), coerce(OptimConfig, optim),
                              coerce(SamplingConfig, sampling))
        # A saved checkpoint is self-contained: the derived groups, not the 1K file, rebuild it.
        self.save_hyperparameters({"upsampler_ckpt": None, "factor": factor, **cfg.hparams(),
                                   "hint_hidden": hint_hidden, "recon_guidance": recon_guidance,
                                   "recon_window": recon_window, "tile": tile, "tile_overlap": tile_overlap,
                                   "restore_low": restore_low, "activation_checkpointing": activation_checkpointing})
        self.init_diffusion(cfg)
        if cfg.noise.resolution % factor:
            raise ValueError(f"resolution {cfg.noise.resolution} is not divisible by factor {factor}")
        if source is not None:
            self.net.load_state_dict(source.net.state_dict())
            self.embedder.load_state_dict(source.embedder.state_dict())
        self.factor = factor
        if activation_checkpointing:
            self.net.use_checkpoint = True
        self.controlnet = ControlNet(self.net, hint_channels=3, hint_hidden=hint_hidden)

    # ----------------------------------------------------------------------------------- denoiser
    def controlled_net(self, x: Tensor, c_noise: Tensor, context: Tensor, context_mask: Tensor | None,
                       hint: Tensor, canvas: tuple[int, int, int, int] | None = None) -> Tensor:
        """Raw network F: the U-Net with the low-resolution ControlNet's residuals. hint (B, 3, H, W) like x."""
        residuals = self.controlnet(x, c_noise, context, context_mask, hint, canvas=canvas)
        return self.net(x, c_noise, context, context_mask, control=residuals, canvas=canvas)

    def denoise(self, x: Tensor, sigma: Tensor, context: Tensor, context_mask: Tensor, x_low: Tensor,
                canvas: tuple[int, int, int, int] | None = None) -> Tensor:
        """D(x, sigma | x_low): x (B, 3, H, W) noisy output-resolution image, sigma (B,) at that resolution,
        x_low (B, 3, H/f, W/f) clean input in [-1, 1]; ``canvas`` when x is a tile of a larger image."""
        hint = up(x_low.to(x.dtype), self.factor)
        return precondition(self.controlled_net, x, sigma, self.sigma_data, context=context,
                            context_mask=context_mask, hint=hint, canvas=canvas)

    # ----------------------------------------------------------------------------------- training
    def diffusion_loss(self, batch: dict) -> tuple[Tensor, Tensor]:
        """The Laplacian EDM loss (Eq. 1, 5) of the controlled denoiser; the hint is down(image, factor).
        batch["image"]: (B, 3, H, W) in [-1, 1], H and W multiples of the resolution multiple."""
        x0, nz = batch["image"], self.cfg.noise
        context, mask = self.encode_conditions(batch["caption"], *(batch.get(k) for k in ("pitch", "dof",
                                                                                          "media_type")))
        x_low = down(x0, self.factor)
        sigma = sample_sigmas(x0.shape[0], nz.p_mean, nz.p_std, nz.sigma_min, nz.sigma_max, device=self.device)
        loss = denoising_loss(lambda x, s: self.denoise(x, s, context, mask, x_low), x0, sigma, self.schedule,
                              self.sigma_data)
        return loss, sigma

    # ----------------------------------------------------------------------------------- sampling
    def tile_multiple(self) -> int:
        """Tile sides and offsets are multiples of this: the U-Net's multiple and the factor (x_low's grid)."""
        m = self.net.resolution_multiple
        return m * self.factor // math.gcd(m, self.factor)

    @torch.no_grad()
    def upsample(self, x_low: Tensor, *, seed: int = 0, steps: int | None = None, solver: str | None = None,
                 recon_guidance: float | None = None, recon_window: tuple[float, float] | None = None,
                 tile: int | None = None, tile_overlap: int | None = None, blend: bool = True,
                 restore_low: bool | None = None, progress=None) -> Tensor:
        """x_low (N, 3, h, w) in [-1, 1], h and w multiples of ``tile_multiple() / factor`` -> (N, 3, f h, f w) in
        [-1, 1]. The cascade entry ``up(x_low) + sigma_max eps``, then the solver with reconstruction guidance
        on tiled, blended denoiser calls (``blend=False``: each tile overwrites its neighbours, only to show seams).
        ``restore_low`` (the usual colour fix of tiled upscalers; default: the ``restore_low`` hyper-parameter, on)
        adds the bicubically upsampled residual ``x_low - down(output)`` afterwards, so the output's low
        frequencies (colours) are the input's. Other defaults come from the hyper-parameters too; deterministic
        given seed."""
        hp, f = self.hparams, self.factor
        x_low = x_low.to(self.device, torch.float32)
        n, _, h, w = x_low.shape
        context, mask = self.encode_conditions([""] * n, drop=False)

        def denoiser(x, sigma, x_low, canvas=None):
            return self.denoise(x, sigma, context, mask, x_low, canvas)

        weight = hp.recon_guidance if recon_guidance is None else recon_guidance
        window = hp.recon_window if recon_window is None else recon_window
        guided = ReconstructionGuidance(denoiser, f, weight, tuple(window) if window else None, pass_x_low=True)
        tiled = TiledDenoiser(guided, tile or hp.tile, hp.tile_overlap if tile_overlap is None else tile_overlap,
                              self.tile_multiple(), blend=blend, canvas=True)
        nz = self.cfg.noise
        st = Stage(tiled, self.schedule, nz.sigma_min, nz.sigma_max, steps or self.cfg.sampling.steps, factor=f,
                   extra_args={"x_low": x_low})
        g = torch.Generator(device=self.device).manual_seed(seed)
        x = sample_plan([st], (n, 3, h * f, w * f), "cascade", solver or self.cfg.sampling.solver, generator=g,
                        device=self.device, progress=progress, x_low=x_low)
        if hp.restore_low if restore_low is None else restore_low:  # (rebuilt checkpoints get the default too)
            x = x + F.interpolate(x_low - down(x, f), scale_factor=f, mode="bicubic", align_corners=False)
        return x.clamp(-1, 1)

    def generate(self, captions, **kw) -> Tensor:
        raise TypeError("the 4K upsampler needs a low-resolution image: use Upsampler4K.upsample(x_low) or "
                        "`lit-edify upsample --ckpt ... --image ...`")
