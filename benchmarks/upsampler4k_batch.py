"""Per-GPU batch of the paper-scale 4K upsampler (recipes/upsampler4k.yaml) on an 80 GB GPU, estimated from a
measured activation figure at small scale (no GPU was lent to this task).

    python benchmarks/upsampler4k_batch.py [--crop 1024] [--gpu-gib 80]

1. Parameters: the 1.6B 1K U-Net (preset ``upsampler1k1.6b``) + its low-resolution ControlNet (copied input and
   middle blocks, hint block, zero projections), counted on the meta device.
2. Activations: a training step (forward + backward of U-Net + ControlNet, bf16 autocast, activation
   checkpointing) of the same layout at reduced width (model_channels 16 and 32 instead of 256) at 512 px, batch
   1 and 4, each in a fresh process; per-sample activation = (peak RSS(4) - peak RSS(1)) / 3. Activations are
   a linear function of the width (feature maps scale with model_channels; the image, hint and wavelet packets do
   not) and proportional to the pixels: the two widths fit the line, which is evaluated at width 256 and scaled
   to ``crop`` px.
3. Budget: fp32 master weights + fp32 grads + AdamW (8 B) + EMA (4 B) per trainable parameter, the frozen T5-XXL
   encoder in bf16, 10% reserve; batch = what is left / activation per sample.
The headline (last line): ``upsampler4k_batch: per_gpu_batch=<b> act_gib_per_sample=<a> static_gib=<s>``.
CPU autocast and PyTorch's CPU allocator differ from CUDA's, so treat the figure as an estimate to confirm with
one real step (``lit-edify fit --config recipes/upsampler4k.yaml --trainer.max_steps 3``).
"""
from __future__ import annotations

import argparse
import resource

import torch

from lit_edify.benchmark import run_in_child

T5_XXL_ENCODER_PARAMS = 4.76e9  # google/t5-v1_1-xxl encoder (frozen, bf16)


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def _step_child(queue, width: int, side: int, batch: int) -> None:
    try:
        torch.set_num_threads(1)
        from lit_edify.nn.controlnet import ControlNet
        from lit_edify.nn.presets import build_unet

        torch.manual_seed(0)
        net = build_unet("upsampler1k1.6b", model_channels=width, use_checkpoint=True, context_dim=64)
        cn = ControlNet(net, hint_channels=3)
        net.train()
        x, hint = torch.randn(batch, 3, side, side), torch.randn(batch, 3, side, side)
        c, ctx = torch.zeros(batch), torch.randn(batch, 8, 64)
        before = _rss_gib()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, c, ctx, control=cn(x, c, ctx, None, hint))
        out.float().square().mean().backward()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        queue.put({"peak_minus_start_gib": peak - before})
    except Exception as e:  # noqa: BLE001
        queue.put({"error": f"{type(e).__name__}: {e}"})


def parameters() -> tuple[int, int]:
    """(U-Net, ControlNet) parameter counts of the paper-scale 4K upsampler (meta device, no memory)."""
    from lit_edify.nn.controlnet import ControlNet
    from lit_edify.nn.presets import build_unet, count_parameters

    with torch.device("meta"):
        net = build_unet("upsampler1k1.6b")
        cn = ControlNet(net, hint_channels=3)
    return count_parameters(net), count_parameters(cn)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crop", type=int, default=1024, help="training crop side at the 4K scale")
    p.add_argument("--gpu-gib", type=float, default=80.0)
    p.add_argument("--side", type=int, default=512, help="measurement resolution")
    a = p.parse_args()
    n_unet, n_cn = parameters()
    print(f"parameters: U-Net {n_unet / 1e9:.3f} B + ControlNet {n_cn / 1e9:.3f} B (+ embedder, small)")
    per_sample = {}
    for width in (16, 32):
        r1 = run_in_child(f"width {width} batch 1", _step_child, width, a.side, 1, start_method="fork")
        r3 = run_in_child(f"width {width} batch 4", _step_child, width, a.side, 4, start_method="fork")
        per_sample[width] = (r3["peak_minus_start_gib"] - r1["peak_minus_start_gib"]) / 3
        print(f"width {width}: step peak - start = {r1['peak_minus_start_gib']:.3f} GiB (batch 1), "
              f"{r3['peak_minus_start_gib']:.3f} GiB (batch 4) -> {per_sample[width] * 1024:.1f} MiB per sample "
              f"at {a.side} px")
    slope = (per_sample[32] - per_sample[16]) / 16  # GiB per unit of model_channels
    fixed = per_sample[16] - 16 * slope  # pixel-sized tensors whose channels do not scale (image, hint, packets)
    print(f"per-sample activation = {slope * 1024:.2f} MiB x model_channels + {fixed * 1024:.1f} MiB at {a.side} px "
          "(two-point fit)")
    act = (slope * 256 + fixed) * (a.crop / a.side) ** 2
    trainable = n_unet + n_cn
    static = trainable * (4 + 4 + 8 + 4) / 2**30 + T5_XXL_ENCODER_PARAMS * 2 / 2**30
    free = a.gpu_gib * 0.9 - static
    batch = max(0, int(free // act))
    print(f"static per GPU: {trainable * 20 / 2**30:.1f} GiB (fp32 weights + grads + AdamW + EMA of "
          f"{trainable / 1e9:.2f} B) + {T5_XXL_ENCODER_PARAMS * 2 / 2**30:.1f} GiB (T5-XXL encoder, bf16); "
          f"{free:.1f} GiB left of {a.gpu_gib:g} x 0.9 for activations at {act:.2f} GiB per {a.crop} px sample")
    print(f"upsampler4k_batch: per_gpu_batch={batch} act_gib_per_sample={act:.2f} static_gib={static:.1f}")


if __name__ == "__main__":
    main()
