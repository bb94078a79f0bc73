"""Parameter counts of the U-Net presets, built on the meta device (no memory is allocated).

The report's sizes (Sec. 3.1: base 2.7B, 1K upsampler 1.6B) are compared with the *trainable
denoiser* = EdifyUNet + ConditionEmbedder. The frozen text encoder is not counted; for reference
the T5-XXL encoder (config only, random meta weights) is printed too.

Usage: ``python benchmarks/model_sizes.py``. Last line: ``model_sizes: base=<n>B upsampler1k=<n>B``.
"""

from __future__ import annotations

import torch

from lit_edify.nn.presets import (
    TEXT_DIM,
    UNET_PRESETS,
    build_condition_embedder,
    build_unet,
    count_parameters,
)

PAPER = {"base2.7b": 2.7e9, "upsampler1k1.6b": 1.6e9}


def t5_xxl_encoder_parameters() -> int:
    """T5 v1.1 XXL encoder size from its published config (4096-d, 24 layers, 64 heads)."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    with torch.device("meta"):
        return count_parameters(T5EncoderModel(cfg))


def main() -> None:
    totals = {}
    print(f"{'preset':<16} {'U-Net':>14} {'ConditionEmb':>13} {'trainable':>14} {'paper':>6} "
          f"{'diff':>7}  text_dim -> context_dim")
    for name in UNET_PRESETS:
        with torch.device("meta"):
            unet, cond = build_unet(name), build_condition_embedder(name)
        n_unet, n_cond = count_parameters(unet), count_parameters(cond)
        totals[name] = total = n_unet + n_cond
        paper = PAPER.get(name)
        ref = f"{paper / 1e9:>5.1f}B {100 * (total / paper - 1):>+6.2f}%" if paper else f"{'-':>6} {'-':>7}"
        print(f"{name:<16} {n_unet:>14,} {n_cond:>13,} {total:>14,} {ref}  "
              f"{TEXT_DIM[name]} -> {UNET_PRESETS[name]['context_dim']}")
    print("trainable = EdifyUNet + ConditionEmbedder; the frozen text encoder is excluded "
          f"(T5-XXL encoder: {t5_xxl_encoder_parameters() / 1e9:.2f}B, MiniLM-L6: 22.7M).")
    print(f"model_sizes: base={totals['base2.7b'] / 1e9:.3f}B "
          f"upsampler1k={totals['upsampler1k1.6b'] / 1e9:.3f}B")


if __name__ == "__main__":
    main()
