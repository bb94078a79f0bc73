"""ControlNet for the Edify U-Net (report Sec. 5, Fig. 11; Zhang et al. 2023, lllyasviel/ControlNet cldm.py).

Layout::

    x (B,C,H,W) --haar_packet--> conv_in (copy) + pos. encoding (copy) --+--> enc (copy) --> mid (copy)
    hint (B,C_h,H,W) --haar_packet--> HintBlock (new, last conv zero) --^        |              |
                                                                   zero 1x1 per skip      zero 1x1
                                                                            \\-- residuals * weight --/

* *Image Input Blocks*: deep copies of the base U-Net's input convolution, positional encoding, noise
  embedding MLP, encoder units (``enc``) and middle block (``mid``), with the base weights.
* *Hint Input Blocks* (:class:`HintBlock`, randomly initialised): the control input (any channel count,
  pixel resolution) goes through the same lossless Haar packet as the image (``2^L x 2^L`` pixel blocks ->
  ``4^L C_h`` coefficients at ``H/2^L x W/2^L``, the first feature map's grid), then 3x3 convolutions; the
  last one is zero-initialised. Its output is added to the noisy-image features after ``conv_in``.
* One zero-initialised 1x1 convolution per skip (the ``conv_in`` features and every encoder unit's output)
  and one for the middle output. :meth:`ControlNet.forward` returns these residuals times the control
  weight; ``EdifyUNet.forward(..., control=residuals)`` adds them to its skips and middle output. A fresh
  ControlNet (zero projections) or weight 0 leaves the base denoiser unchanged, bit for bit.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_edify.nn.embeddings import add_pos_embed, embedding, feature_canvas
from lit_edify.nn.unet import EdifyUNet, _zero, input_coefficients
from lit_edify.nn.wavelet import haar_packet

__all__ = ["ControlNet", "HINT_CHANNELS", "HintBlock", "TASKS", "check_hint_type", "control_weight", "inpaint_mask",
           "sum_residuals"]

#: control input channels per hint type (inpaint: masked RGB + mask + replace/inpaint/outpaint one-hot)
HINT_CHANNELS: dict[str, int] = {"canny": 1, "hed": 1, "depth": 1, "inpaint": 7}
#: inpainting sub-tasks, in the order of the one-hot (report Sec. 5)
TASKS: tuple[str, ...] = ("replace", "inpaint", "outpaint")


def inpaint_mask(hint: Tensor) -> Tensor:
    """The mask (B, 1, H, W) of an inpainting control input (B, 7, H, W): channel 3, 1 = generate, 0 = keep."""
    return hint[:, 3:4]


def check_hint_type(kind: str) -> str:
    """``kind`` if it is a known hint type, else ValueError listing the known ones."""
    if kind not in HINT_CHANNELS:
        raise ValueError(f"unknown hint type {kind!r}; choose one of {sorted(HINT_CHANNELS)}")
    return kind


class HintBlock(nn.Module):
    """Control input (B, C_h, H, W) pixels -> (B, out_channels, H/2^L, W/2^L) features (zero at init).

    Haar packet of ``levels`` levels (lossless 2^L x 2^L block transform, as the U-Net's input), then
    ``depth`` 3x3 conv + SiLU layers of ``hidden`` channels and a zero-initialised 3x3 conv.
    """

    def __init__(self, hint_channels: int, out_channels: int, levels: int, hidden: int, depth: int = 3):
        super().__init__()
        self.hint_channels, self.levels = hint_channels, levels
        layers, cin = [], 4**levels * hint_channels
        for _ in range(depth):
            layers += [nn.Conv2d(cin, hidden, 3, padding=1), nn.SiLU()]
            cin = hidden
        self.convs = nn.Sequential(*layers, _zero(nn.Conv2d(cin, out_channels, 3, padding=1)))

    def forward(self, hint: Tensor) -> Tensor:
        return self.convs(haar_packet(hint, self.levels))


def control_weight(weight: float | Tensor, batch: int, device=None) -> Tensor:
    """Control weight as a (B, 1, 1, 1) float tensor: a scalar for all samples or one per sample (B,)."""
    w = torch.as_tensor(weight, dtype=torch.float32, device=device)
    if w.ndim == 0:
        w = w.expand(batch)
    if w.shape != (batch,):
        raise ValueError(f"control weight must be a number or a ({batch},) tensor (one per sample), "
                         f"got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"control weight must be finite, got {w.tolist()}")
    return w.view(batch, 1, 1, 1)


def sum_residuals(residuals: list[list[Tensor] | None]) -> list[Tensor] | None:
    """Residuals of several ControlNets on one base, summed per skip (diffusers' MultiControlNet); None if none."""
    given = [r for r in residuals if r is not None]
    if not given:
        return None
    if len({len(r) for r in given}) != 1:
        raise ValueError("ControlNets of different U-Nets cannot be combined: residual lists differ in length "
                         f"{[len(r) for r in given]}")
    return [sum(rs[1:], rs[0]) for rs in zip(*given)]


class ControlNet(nn.Module):
    """Control encoder built from a (trained) :class:`EdifyUNet`; the U-Net itself is not kept or changed.

    Args:
        unet: the base U-Net whose input blocks and middle block are copied (any device, meta included).
        hint_channels: channels of the control input (1 for edges / depth, 7 for inpainting).
        hint_hidden: width of the hint block (default: the U-Net's first-level width).
        hint_depth: 3x3 conv + SiLU layers of the hint block before its zero conv.
    """

    def __init__(self, unet: EdifyUNet, hint_channels: int, hint_hidden: int | None = None, hint_depth: int = 3):
        super().__init__()
        if hint_channels < 1:
            raise ValueError(f"hint_channels must be >= 1, got {hint_channels}")
        self.in_channels, self.extra_in_channels = unet.in_channels, unet.extra_in_channels
        self.hint_channels, self.wavelet_levels = hint_channels, unet.wavelet_levels
        self.opponent_colour = unet.opponent_colour
        self.resolution_multiple, self.use_checkpoint = unet.resolution_multiple, unet.use_checkpoint
        for name in ("map_noise", "map_layer0", "map_layer1", "map_context", "conv_in", "enc", "mid"):
            setattr(self, name, copy.deepcopy(getattr(unet, name)))
        self.pos_embed = None if unet.pos_embed is None else nn.Parameter(unet.pos_embed.detach().clone())
        width = unet.conv_in.out_channels
        self.hint_block = HintBlock(hint_channels, width, self.wavelet_levels, hint_hidden or width, hint_depth)
        skip_channels = [width] + [unit.res.conv1.out_channels for unit in self.enc]
        self.zero_convs = nn.ModuleList(_zero(nn.Conv2d(c, c, 1)) for c in skip_channels)
        mid = self.mid[-1].res.conv1.out_channels
        self.mid_out = _zero(nn.Conv2d(mid, mid, 1))
        self.requires_grad_(True).train()  # trainable (train mode) even when copied from a frozen, eval-mode base
        if unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last) and width > 1:
            self.to(memory_format=torch.channels_last)  # the same layout as the base's (copied) weights

    def check_hint(self, x: Tensor, hint: Tensor) -> None:
        """ValueError naming the problem and the fix unless hint is (B, hint_channels, H, W) like x."""
        want = (x.shape[0], self.hint_channels, *x.shape[-2:])
        if not isinstance(hint, Tensor) or hint.ndim != 4 or tuple(hint.shape) != want:
            got = tuple(hint.shape) if isinstance(hint, Tensor) else type(hint).__name__
            raise ValueError(f"control hint must be (B, C_hint, H, W) = {want} to match the image "
                             f"{tuple(x.shape)}, got {got}; give a hint with {self.hint_channels} channel(s) "
                             "resized to the image size (lit_edify.data_modules.hints.resize_hint)")
        if not bool(torch.isfinite(hint).all()):
            raise ValueError("control hint has NaN or inf values; pass a finite hint")

    def _run(self, unit: nn.Module, h: Tensor, emb: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(unit, h, emb, context, mask, use_reentrant=False)
        return unit(h, emb, context, mask)

    def forward(self, x: Tensor, c_noise: Tensor, context: Tensor, context_mask: Tensor | None, hint: Tensor,
                weight: float | Tensor = 1.0, extra: Tensor | None = None,
                canvas: tuple[int, int, int, int] | None = None) -> list[Tensor]:
        """Residuals for ``EdifyUNet.forward(..., control=...)``.

        Args:
            x, c_noise, context, context_mask, extra: exactly what the base U-Net gets (x (B, C, H, W) scaled
                by EDM c_in, c_noise (B,), context (B, L, D), context_mask (B, L) bool or None).
            hint: (B, hint_channels, H, W) control input at pixel resolution (0 = no control).
            weight: control weight, a number or (B,) per sample; 0 gives all-zero residuals.
            canvas: (top, left, H, W) in pixels of x inside a larger image (tiled sampling), as for the U-Net.
        Returns:
            ``len(enc) + 2`` tensors: one per base skip (B, C_i, h_i, w_i), then the middle (B, C_mid, h, w).
        """
        self.check_hint(x, hint)
        w = control_weight(weight, x.shape[0], x.device)
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        context_mask = context_mask.bool()
        context_mask = context_mask | ~context_mask.any(dim=1, keepdim=True)

        emb = embedding(self, c_noise, context, context_mask)

        h = input_coefficients(x, extra, self.wavelet_levels, self.opponent_colour)
        h = add_pos_embed(self.conv_in(h), self.pos_embed, feature_canvas(canvas, self.wavelet_levels))
        h = h + self.hint_block(hint.to(x.dtype)).to(h.dtype)

        out = [self.zero_convs[0](h)]
        for unit, proj in zip(self.enc, self.zero_convs[1:]):
            h = self._run(unit, h, emb, context, context_mask)
            out.append(proj(h))
        for unit in self.mid:
            h = self._run(unit, h, emb, context, context_mask)
        out.append(self.mid_out(h))
        return [r * w.to(r.dtype) for r in out]
