"""Model FLOPs of a training step, counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention).

Used by the throughput benchmarks for images/s -> model FLOPs utilisation (MFU). Counting runs on the meta
device when the model is on it, so paper-scale presets need no memory. Elementwise ops (norms, activations,
the optimizer) are not counted, as is usual for MFU.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

#: Dense bf16 tensor-core peak (FLOP/s) by device-name fragment, for MFU. Public spec-sheet numbers.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def training_flops_per_image(net: nn.Module, height: int, width: int, context_len: int = 80,
                             batch: int = 2) -> float:
    """Forward + backward FLOPs per image of ``net(x, c_noise, context, mask)`` at ``height x width``.

    ``net`` is an :class:`~lit_edify.nn.unet.EdifyUNet` (any device, meta included); ``context_len`` tokens of
    its ``context_dim``. The count is for a batch of ``batch`` images, divided by ``batch``.
    """
    p = next(net.parameters())
    dev, dtype = p.device, p.dtype
    x = torch.randn(batch, net.in_channels, height, width, device=dev, dtype=dtype)
    c_noise = torch.zeros(batch, device=dev, dtype=dtype)
    ctx = torch.randn(batch, context_len, net.context_dim, device=dev, dtype=dtype)
    extra = None
    if net.extra_in_channels:
        extra = torch.randn(batch, net.extra_in_channels, height, width, device=dev, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with counter:
        net(x, c_noise, ctx, None, extra=extra).float().square().mean().backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def device_bf16_peak(name: str) -> float | None:
    """Dense bf16 peak FLOP/s for a CUDA device name (``torch.cuda.get_device_name``), None if unknown."""
    for key, peak in BF16_PEAK.items():
        if key in name:
            return peak
    return None
