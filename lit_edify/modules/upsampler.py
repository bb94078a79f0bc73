"""The 1K upsampler (Edify Image Sec. 3): a Laplacian stage at ``factor`` x the base resolution.

It is trained on a smaller noise range [sigma_min, sigma_max] whose top is at or above the cutoff of
the detail band it adds, so sampling can enter it from the base stage either by the resolution
switch (switch plan) or by forward-diffusing the upsampled base sample at sigma_max (cascade plan).
"""
from __future__ import annotations

import torch

from lit_edify.diffusion.laplacian import down
from lit_edify.diffusion.plans import sample_plan

from .base import BaseModel
from .config import NoiseConfig, SamplingConfig, coerce

#: the tiny upsampler's defaults (a group given as a dict updates these)
NOISE = NoiseConfig(resolution=64, sigma_max=2.0, p_mean=-1.0, band_cutoffs=[2.0], band_starts=[0.25])
SAMPLING = SamplingConfig(guidance=1.0)


class Upsampler(BaseModel):
    """Upsampler stage: a BaseModel at ``factor`` x the base resolution with its own (smaller) noise range.

    Its aspect-bucket shapes are exactly ``factor`` x the base model's (image sides are multiples of
    ``factor`` x the U-Net multiple), so base and upsampler chain for all five aspect ratios. Its own argument is
    ``factor``; the configuration groups are BaseModel's, with upsampler defaults for ``noise`` and ``sampling``:
    the tiny CPU model (64 px, 2x the tiny base); ``recipes/upsampler1k.yaml`` sets the paper-scale values
    (1.6B U-Net, 1024 px, factor 4, sigma range [0.002, 4]).
    """

    def __init__(self, factor: int = 2, noise: NoiseConfig = NOISE, sampling: SamplingConfig = SAMPLING, **groups):
        noise, sampling = coerce(NoiseConfig, noise, NOISE), coerce(SamplingConfig, sampling, SAMPLING)
        if noise.resolution % factor:
            raise ValueError(f"resolution {noise.resolution} is not divisible by factor {factor}")
        super().__init__(noise=noise, sampling=sampling, **groups)
        self.hparams["factor"] = factor
        if noise.bucket_multiple is None:  # factor x the U-Net's multiple: exactly factor x the base buckets
            self.resolution_multiple = factor * self.net.resolution_multiple

    @torch.no_grad()
    def upsample(self, low_res: torch.Tensor, captions: list[str], *, pitch=None, dof=None, media_type=None,
                 seed: int = 0, steps: int | None = None, solver: str | None = None,
                 guidance: float | None = None, progress=None) -> torch.Tensor:
        """Cascade step (Sec. 3): ``up(low_res) + sigma_max * eps``, then this stage's sampler.

        low_res: (N, 3, h, w) in [-1, 1]; returns (N, 3, factor*h, factor*w) in [-1, 1].
        """
        factor = self.hparams.factor
        g = torch.Generator(device=self.device).manual_seed(seed)
        st = self.stage(captions, pitch=pitch, dof=dof, media_type=media_type, steps=steps, guidance=guidance,
                        factor=factor)
        shape = (low_res.shape[0], 3, low_res.shape[-2] * factor, low_res.shape[-1] * factor)
        x = sample_plan([st], shape, "cascade", solver or self.cfg.sampling.solver, generator=g, device=self.device,
                        progress=progress, x_low=low_res.to(self.device, torch.float32))
        return x.clamp(-1, 1)

    def generate(self, captions, *, aspect: str = "1:1", seed: int = 0, **kw) -> torch.Tensor:
        raise TypeError("an upsampler needs a low-resolution input: use Upsampler.upsample(low_res, captions) "
                        "or lit_edify.pipelines.text2image.generate(base, upsampler, ...)")

    def reference_low_res(self, images: torch.Tensor) -> torch.Tensor:
        """The clean low-resolution version of training images: down(x, factor)."""
        return down(images, self.hparams.factor)
