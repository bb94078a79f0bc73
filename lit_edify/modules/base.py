"""The base text-to-image model (Edify Image Sec. 3): full noise range, 256 px at paper scale."""
from __future__ import annotations

import lightning as L

from .config import (ConditioningConfig, DiffusionConfig, NetConfig, NoiseConfig, OptimConfig, SamplingConfig,
                     coerce)
from .mixin import LaplacianDiffusionMixin


class BaseModel(LaplacianDiffusionMixin, L.LightningModule):
    """Base stage: trained on the full noise range [sigma_min, sigma_max] at ``noise.resolution``.

    Configured by the typed groups of :mod:`lit_edify.modules.config` (``net``, ``noise``, ``conditioning``,
    ``optim``, ``sampling``; read back as ``self.cfg``). Its own schedule attenuates the detail band above
    ``noise.band_factors[0]`` between ``band_starts`` and ``band_cutoffs`` (one network for the whole interval,
    Sec. 2.2.2). Defaults are the tiny CPU model; ``recipes/base256.yaml`` sets the paper-scale values (2.7B U-Net,
    T5-XXL, 256 px). ``sampling.guidance_interval = (lo, hi)`` applies classifier-free guidance only for sigma in
    [lo, hi] (at this stage's resolution). ``net.compile`` runs the U-Net through ``torch.compile`` during fit.
    Measured on 2 CPU cores (torch 2.14): compiling the tiny U-Net's training step takes about 3 minutes for ~25%
    faster steps in a bare loop, and under the Trainer with the tiny recipe it currently fails (a stride assertion
    in a fake kernel, with text contexts whose length changes from batch to batch); it is off by default and
    untested on GPUs.
    """

    # The defaults are the groups' own (NetConfig() ...); a group given as a dict updates them.
    def __init__(self, net: NetConfig = NetConfig(), noise: NoiseConfig = NoiseConfig(),
                 conditioning: ConditioningConfig = ConditioningConfig(), optim: OptimConfig = OptimConfig(),
                 sampling: SamplingConfig = SamplingConfig()):
        super().__init__()
        cfg = DiffusionConfig(coerce(NetConfig, net), coerce(NoiseConfig, noise),
                              coerce(ConditioningConfig, conditioning), coerce(OptimConfig, optim),
                              coerce(SamplingConfig, sampling))
        self.save_hyperparameters(cfg.hparams())
        self.init_diffusion(cfg)
