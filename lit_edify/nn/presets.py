"""Size presets of the Edify U-Net (report Sec. 3.1: base 2.7B at 256 px, 1K upsampler 1.6B).

``UNET_PRESETS[name]`` holds :class:`~lit_edify.nn.unet.EdifyUNet` keyword arguments and
``TEXT_DIM[name]`` the text-token width the preset is meant for (``ConditionEmbedder`` input).
The paper sizes count the *trainable denoiser* = U-Net + ConditionEmbedder (the frozen T5-XXL text
encoder, 4096-d tokens, is excluded); ``benchmarks/model_sizes.py`` prints them:

================  ==========  ===========  ==========================================
preset            parameters  resolution   use
================  ==========  ===========  ==========================================
tiny              6.2 M       64 px        CPU recipes and tests (MiniLM text, 384-d)
small100m         97 M        256 px       throughput benchmark, small GPU runs
base2.7b          2.76 B      256 px       paper base model (T5-XXL text)
upsampler1k1.6b   1.60 B      1024 px      paper 1K upsampler (T5-XXL text)
================  ==========  ===========  ==========================================

``pos_embed_size`` is the preset's base resolution // 4; when training at another resolution pass
``pos_embed_size=resolution // 4`` (and ``use_checkpoint=True`` to trade compute for memory).
"""

from __future__ import annotations

import copy

from torch import nn

from lit_edify.nn.conditioning import ConditionEmbedder
from lit_edify.nn.unet import EdifyUNet

__all__ = ["TEXT_DIM", "UNET_PRESETS", "build_condition_embedder", "build_unet", "count_parameters"]

UNET_PRESETS: dict[str, dict] = {
    # level 0 is 64 wide: at least the 48 wavelet channels, or fine detail is lost in a bottleneck
    "tiny": dict(
        in_channels=3, model_channels=64, channel_mult=(1, 1, 2), num_res_blocks=2,
        attention_levels=(1, 2), context_dim=128, head_dim=32, dropout=0.0, pos_embed_size=16, linear_skip=True,
    ),
    "small100m": dict(
        in_channels=3, model_channels=128, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
        attention_levels=(1, 2, 3), context_dim=512, head_dim=64, dropout=0.0, pos_embed_size=64,
    ),
    # 256 px -> 64x64 wavelet features; widths 512/1024/2048/2048 at 64/32/16/8; attention at 32, 16, 8.
    "base2.7b": dict(
        in_channels=3, model_channels=512, channel_mult=(1, 2, 4, 4), num_res_blocks=3,
        attention_levels=(1, 2, 3), context_dim=1024, head_dim=64, dropout=0.0, pos_embed_size=64,
    ),
    # 1024 px -> 256x256 wavelet features; widths 256/256/512/1024/2048 at 256/128/64/32/16;
    # attention at 32 and 16.
    "upsampler1k1.6b": dict(
        in_channels=3, model_channels=256, channel_mult=(1, 1, 2, 4, 8), num_res_blocks=3,
        attention_levels=(3, 4), context_dim=1024, head_dim=64, dropout=0.0, pos_embed_size=256,
    ),
}

#: Text-token width each preset is sized for: MiniLM (384) for the small ones, T5-XXL (4096) for paper.
TEXT_DIM: dict[str, int] = {"tiny": 384, "small100m": 384, "base2.7b": 4096, "upsampler1k1.6b": 4096}


def _preset(preset: str) -> dict:
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; choose one of {sorted(UNET_PRESETS)}")
    return copy.deepcopy(UNET_PRESETS[preset])


def build_unet(preset: str, **overrides) -> EdifyUNet:
    """``EdifyUNet(**UNET_PRESETS[preset] | overrides)``; build under ``torch.device('meta')`` to
    instantiate paper-scale models without allocating memory."""
    return EdifyUNet(**(_preset(preset) | overrides))


def build_condition_embedder(preset: str, text_dim: int | None = None, **overrides) -> ConditionEmbedder:
    """``ConditionEmbedder`` matching the preset's ``context_dim`` (text_dim defaults to ``TEXT_DIM``)."""
    context_dim = overrides.pop("context_dim", _preset(preset)["context_dim"])
    return ConditionEmbedder(text_dim or TEXT_DIM[preset], context_dim, **overrides)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones counted once); works on meta-device modules."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
