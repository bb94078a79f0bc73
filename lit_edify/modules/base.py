"""The base text-to-image model (Edify Image Sec. 3): full noise range, 256 px at paper scale."""
from __future__ import annotations

import lightning as L

from .mixin import LaplacianDiffusionMixin


class BaseModel(LaplacianDiffusionMixin, L.LightningModule):
    """Base stage: trained on the full noise range [sigma_min, sigma_max] at ``resolution``.

    Its own schedule attenuates the detail band above ``band_factors[0]`` between ``band_starts`` and
    ``band_cutoffs`` (one network for the whole interval, Sec. 2.2.2). Defaults are the tiny CPU model;
    ``recipes/base256.yaml`` sets the paper-scale values (2.7B U-Net, T5-XXL, 256 px). Image sides are
    multiples of ``bucket_multiple`` (default: the U-Net's own multiple). ``guidance_interval = (lo, hi)``
    applies classifier-free guidance only for sigma in [lo, hi] (at this stage's resolution).
    ``channels_last`` stores the convolution weights channels-last (faster with oneDNN on CPU and cuDNN),
    ``fused_adamw`` uses AdamW's fused kernel, ``compile`` runs the U-Net through ``torch.compile`` during
    fit. Measured on 2 CPU cores (torch 2.14): compiling the tiny U-Net's training step takes about 3 minutes
    for ~25% faster steps in a bare loop, and under the Trainer with the tiny recipe it currently fails (a
    stride assertion in a fake kernel, with text contexts whose length changes from batch to batch); it is
    off by default and untested on GPUs.
    """

    def __init__(
        self,
        unet: str = "tiny",
        unet_overrides: dict | None = None,
        text_encoder: str = "minilm",
        max_text_length: int = 77,
        context_dim: int | None = None,
        resolution: int = 32,
        band_factors: list[int] = (2,),
        band_cutoffs: list[float] = (8.0,),
        band_starts: list[float] | None = (1.0,),
        schedule_shape: str = "cosine",
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        p_mean: float = -1.2,
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
        guidance: float = 3.0,
        guidance_interval: tuple[float, float] | None = None,
        bucket_multiple: int | None = None,
        channels_last: bool = True,
        fused_adamw: bool = True,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.init_diffusion(
            unet=unet, unet_overrides=unet_overrides, text_encoder=text_encoder, max_text_length=max_text_length,
            context_dim=context_dim, resolution=resolution, band_factors=band_factors, band_cutoffs=band_cutoffs,
            band_starts=band_starts, schedule_shape=schedule_shape, sigma_min=sigma_min, sigma_max=sigma_max,
            p_mean=p_mean, p_std=p_std, sigma_data=sigma_data, p_drop_text=p_drop_text,
            p_drop_camera=p_drop_camera, p_drop_media=p_drop_media, num_pitch=num_pitch, num_dof=num_dof,
            num_media=num_media, bucket_multiple=bucket_multiple, channels_last=channels_last)
