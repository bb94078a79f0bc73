"""The 1K upsampler (Edify Image Sec. 3): a Laplacian stage at ``factor`` x the base resolution.

It is trained on a smaller noise range [sigma_min, sigma_max] whose top is at or above the cutoff of
the detail band it adds, so sampling can enter it from the base stage either by the resolution
switch (switch plan) or by forward-diffusing the upsampled base sample at sigma_max (cascade plan).
"""
from __future__ import annotations

import lightning as L
import torch

from lit_edify.diffusion.laplacian import down
from lit_edify.diffusion.plans import sample_plan
from lit_edify.nn.presets import UNET_PRESETS

from .mixin import LaplacianDiffusionMixin


def build_multiple(unet: str, overrides: dict | None) -> int:
    """The U-Net's own side multiple, 4 * 2**(levels - 1), from its preset and overrides."""
    mult = (overrides or {}).get("channel_mult", UNET_PRESETS.get(unet, {}).get("channel_mult", (1,)))
    return 4 * 2 ** (len(mult) - 1)


class Upsampler(LaplacianDiffusionMixin, L.LightningModule):
    """Upsampler stage. Its aspect-bucket shapes are exactly ``factor`` x the base model's (image sides are
    multiples of ``factor`` x the U-Net multiple), so base and upsampler chain for all five aspect ratios.
    Defaults: the tiny CPU model (64 px, 2x the tiny base); ``recipes/upsampler1k.yaml``
    sets the paper-scale values (1.6B U-Net, 1024 px, factor 4)."""

    def __init__(
        self,
        unet: str = "tiny",
        unet_overrides: dict | None = None,
        text_encoder: str = "minilm",
        max_text_length: int = 77,
        context_dim: int | None = None,
        resolution: int = 64,
        factor: int = 2,
        band_factors: list[int] = (2,),
        band_cutoffs: list[float] = (2.0,),
        band_starts: list[float] | None = (0.25,),
        schedule_shape: str = "cosine",
        sigma_min: float = 0.002,
        sigma_max: float = 2.0,
        p_mean: float = -1.0,
        p_std: float = 1.2,
        sigma_data: float = 0.5,
        p_drop_text: float = 0.1,
        p_drop_camera: float = 0.1,
        p_drop_media: float = 0.1,
        num_pitch: int = 3,
        num_dof: int = 2,
        num_media: int = 4,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.01,
        warmup_steps: int = 1000,
        sample_steps: int = 32,
        sample_solver: str = "dpmpp_2m",
        guidance: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if resolution % factor:
            raise ValueError(f"resolution {resolution} is not divisible by factor {factor}")
        self.init_diffusion(
            unet=unet, unet_overrides=unet_overrides, text_encoder=text_encoder, max_text_length=max_text_length,
            context_dim=context_dim, resolution=resolution, band_factors=band_factors, band_cutoffs=band_cutoffs,
            band_starts=band_starts, schedule_shape=schedule_shape, sigma_min=sigma_min, sigma_max=sigma_max,
            p_mean=p_mean, p_std=p_std, sigma_data=sigma_data, p_drop_text=p_drop_text,
            p_drop_camera=p_drop_camera, p_drop_media=p_drop_media, num_pitch=num_pitch, num_dof=num_dof,
            num_media=num_media, bucket_multiple=factor * build_multiple(unet, unet_overrides))

    @torch.no_grad()
    def upsample(self, low_res: torch.Tensor, captions: list[str], *, pitch=None, dof=None, media_type=None,
                 seed: int = 0, steps: int | None = None, solver: str | None = None,
                 guidance: float | None = None, progress=None) -> torch.Tensor:
        """Cascade step (Sec. 3): ``up(low_res) + sigma_max * eps``, then this stage's sampler.

        low_res: (N, 3, h, w) in [-1, 1]; returns (N, 3, factor*h, factor*w) in [-1, 1].
        """
        hp = self.hparams
        g = torch.Generator(device=self.device).manual_seed(seed)
        st = self.stage(captions, pitch=pitch, dof=dof, media_type=media_type, steps=steps, guidance=guidance,
                        factor=hp.factor)
        shape = (low_res.shape[0], 3, low_res.shape[-2] * hp.factor, low_res.shape[-1] * hp.factor)
        x = sample_plan([st], shape, "cascade", solver or hp.sample_solver, generator=g, device=self.device,
                        progress=progress, x_low=low_res.to(self.device, torch.float32))
        return x.clamp(-1, 1)

    def generate(self, captions, *, aspect: str = "1:1", seed: int = 0, **kw) -> torch.Tensor:
        raise TypeError("an upsampler needs a low-resolution input: use Upsampler.upsample(low_res, captions) "
                        "or lit_edify.pipelines.text2image.generate(base, upsampler, ...)")

    def reference_low_res(self, images: torch.Tensor) -> torch.Tensor:
        """The clean low-resolution version of training images: down(x, factor)."""
        return down(images, self.hparams.factor)
