"""The Edify U-Net denoiser on the Haar wavelet packet (report Sec. 3.1, 3.2, 3.4).

Layout (ADM / EDM ``DhariwalUNet`` style)::

    x (B,C,H,W) --haar_packet--> (B,16C,H/4,W/4) [+ haar_packet(extra)] --conv_in--> + pos. encoding
      encoder: per level, [down-ResBlock] + num_res_blocks x (ResBlock [+ Attention])   -> skips
      middle : ResBlock + Attention, ResBlock
      decoder: per level, [up-ResBlock] + (num_res_blocks+1) x (ResBlock(concat skip) [+ Attention])
      out    : GroupNorm, SiLU, conv (zero-initialised) --inverse_haar_packet--> (B,C,H,W)

* ResBlocks take the noise embedding (Fourier features of ``c_noise`` + MLP, optionally + the pooled context;
  ``lit_edify.nn.embeddings``) as an adaptive GroupNorm scale/shift; dropout sits before their second
  (zero-initialised) conv.
* ``Attention`` = self-attention over the feature map + cross-attention to the conditioning
  sequence (text + camera + media tokens, Sec. 3.2), both with PyTorch SDPA and zero-initialised
  output projections. The middle block always has it, the other levels as ``attention_levels`` says.
* The learnable positional encoding is defined for the 1:1 feature shape
  ``(pos_embed_size, pos_embed_size)`` and bilinearly interpolated to any other feature shape
  (4:3, 3:4, 16:9, 9:16 buckets, Sec. 3.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_edify.nn.embeddings import FourierEmbedding, add_pos_embed, embedding, feature_canvas
from lit_edify.nn.wavelet import from_opponent, haar_packet, inverse_haar_packet, to_opponent, undecimated_bands

__all__ = ["Attention", "EdifyUNet", "ResBlock"]


def _groups(channels: int, max_groups: int = 32, min_per_group: int = 4) -> int:
    """Largest group count <= max_groups that divides ``channels`` with >= min_per_group each."""
    for g in range(min(max_groups, channels // min_per_group), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def input_coefficients(x: Tensor, extra: Tensor | None, levels: int, opponent: bool) -> Tensor:
    """The network's input: the Haar packet of x (in the opponent colour basis when ``opponent``), then that of
    ``extra`` (as given: a low-res image or a control signal keeps its own channels)."""
    h = haar_packet(to_opponent(x) if opponent else x, levels)
    if extra is not None:
        h = torch.cat([h, haar_packet(extra.to(x.dtype), levels)], dim=1)
    return h


class ResBlock(nn.Module):
    """Residual block with noise-embedding scale/shift; optional 2x down- or upsampling.

    (B, in_ch, h, w), emb (B, emb_dim) -> (B, out_ch, h', w') with h' = h/2, h or 2h.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0,
                 resample: str | None = None):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.resample = resample
        self.norm0 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * out_ch)
        self.norm1 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        return self.skip(self._resample(x)) + h


class Attention(nn.Module):
    """Self-attention over the feature map, then cross-attention to the context sequence.

    x (B, C, h, w), context (B, L, context_dim), mask (B, L) bool (True = attend) -> (B, C, h, w).
    Each part is residual with a zero-initialised output projection.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm_self = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_self = _zero(nn.Linear(channels, channels))
        self.norm_cross = nn.GroupNorm(_groups(channels), channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj_cross = _zero(nn.Linear(channels, channels))

    def _heads(self, t: Tensor) -> Tensor:  # (B, N, C) -> (B, heads, N, C/heads)
        return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm_self(x).flatten(2).transpose(1, 2)  # (B, hw, C)
        q, k, v = self._heads(self.qkv(tokens)).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + self.proj_self(a).transpose(1, 2).reshape(b, c, h, w)

        tokens = self.norm_cross(x).flatten(2).transpose(1, 2)
        q = self._heads(self.q(tokens))
        k, v = self._heads(self.kv(context)).chunk(2, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        a = a.transpose(1, 2).flatten(2)
        return x + self.proj_cross(a).transpose(1, 2).reshape(b, c, h, w)


class _Unit(nn.Module):
    """ResBlock, optionally followed by Attention."""

    def __init__(self, in_ch, out_ch, emb_dim, dropout, context_dim, heads_for, resample=None,
                 attention=False):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout, resample)
        self.attn = Attention(out_ch, context_dim, heads_for(out_ch)) if attention else None

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x, context, mask)


class EdifyUNet(nn.Module):
    """U-Net denoiser F on the 2-level Haar wavelet packet of the input pixels.

    Args:
        in_channels: image channels C (3 for RGB).
        extra_in_channels: channels of the optional ``extra`` pixel input (low-res image, control
            signal); it is wavelet-transformed and concatenated to the input coefficients.
        model_channels: width of the first level; level ``i`` has ``model_channels * channel_mult[i]``.
        channel_mult: per-level width multipliers; each level after the first halves the feature size.
        num_res_blocks: ResBlocks per encoder level (the decoder has one more per level).
        attention_levels: indices into ``channel_mult`` whose blocks get self- + cross-attention
            (the middle block always has it).
        context_dim: feature size D of the conditioning sequence (``ConditionEmbedder`` output).
        num_heads: attention heads per layer; if None, heads = channels // head_dim.
        head_dim: channels per head when ``num_heads`` is None.
        dropout: dropout probability in the ResBlocks.
        pos_embed_size: side of the learnable 1:1 positional encoding on the feature map, i.e.
            ``base_resolution // 4``; None disables it.
        use_checkpoint: recompute every block in the backward pass (activation checkpointing).
        linear_skip: add a noise-gated linear path from the input wavelet coefficients to the output ones:
            ``out += g(emb) * W x_wav / sigma`` with ``sigma = exp(4 c_noise)`` (EDM's c_noise), W a 1x1 conv
            initialised to the identity and g a per-channel gain initialised to 0 (a fresh model still
            outputs 0). Under EDM preconditioning the network must cancel the input noise that
            ``c_skip * x`` leaks into D: for a coefficient that holds only noise the exact output is
            ``-(sigma_data / sigma) * x_wav``, so reproducing every coefficient's noise with a gain of up to
            hundreds through the nonlinear blocks. A narrow network learns that slowly and the uncancelled
            noise shows up as coloured grain in samples. With the 1/sigma factor this path is a linear
            (Wiener-like) filter whose gain g is O(1) and smooth in sigma (-sigma_data for pure noise).
        wavelet_levels: levels of the Haar packet at the input/output: 2 (the report: 48 x H/4 x W/4) or 1
            (12 x H/2 x W/2). At 32 px the 2-level packet leaves an 8x8 grid where one position's outputs
            draw a whole 4x4 pixel block; 1 level gives small images a 16x16 grid.
        fourier_scale: std of the random frequencies of the noise embedding (on ``c_noise = ln(sigma)/4``).
            1 (EDM2's bandwidth) keeps the embedding smooth in sigma: sigma = 0.100 and 0.110 map to
            nearly the same features, so D(sigma) interpolates between trained noise levels. NCSN++'s 16
            makes neighbouring sigmas nearly orthogonal (a lookup table), which slows training and
            makes samplers with many steps visit noise levels the network has barely seen.
        opponent_colour: run the network in an orthonormal opponent colour basis (luma, red-green, yellow-blue;
            ``lit_edify.nn.wavelet.OPPONENT``) instead of RGB: x is rotated before the packet and F rotated back.
            The diffusion is unchanged (the basis is orthonormal), but every output channel, and the linear skip's
            per-channel gain, now acts on luma or on chroma alone. Natural images, and greyscale ones exactly,
            have little chroma in their fine detail, so the noise there can be cancelled channel by channel;
            in RGB the same needs the network to learn that R, G and B detail agree, and while it has not, the
            residual shows as coloured grain. Needs ``in_channels = 3``. Measured: on greyscale data it removes
            the coloured grain, on the colourful shapes data it loses object colour (docs/quickstart_ablations.md).
        local_skip_gain: add a per-pixel gain field on the frequency bands of the noisy input:
            ``sum_b up(G_b(features)) * band_b(x) / sigma``, with ``band_b`` the ``wavelet_levels + 1`` bands of an
            undecimated (a trous) binomial pyramid that sum to x (``lit_edify.nn.wavelet.undecimated_bands``), G a
            zero-initialised 3x3 head (one gain per band and colour channel at every feature position) and ``up``
            bilinear to the pixels. The noise can then be cancelled on flat areas and kept where there is texture,
            and within a pixel the fine bands (mostly noise at low sigma) can be cut while the coarse one is kept:
            one gain per wavelet channel has to compromise (the tiny model without it keeps 38% of the noise inside
            flat objects at sigma 0.1, ``benchmarks/noise_kept.py``), and that leftover noise is the coloured grain
            of the samples. Bands and field are shift-invariant, so the path draws no edges at the 4x4 pixel
            blocks. Earlier forms drew them: a gain constant over each block, and the field on the linear skip's
            output ``inverse_packet(W x_wav)``, where the learned W weights the Haar coefficients of each block
            differently (a trained tiny model: 0.07 on the block mean, 0.4-0.55 on the details), a block-wise
            filter like JPEG's. A field on x alone (no bands) drew no blocks but left grain inside objects.
            Needs ``linear_skip``. Measured on shapes (docs/quickstart_ablations.md).
        pooled_context: also add the masked mean of the context tokens, through a linear layer, to the noise
            embedding that scales and shifts every ResBlock (Imagen's pooled text embedding). Cross-attention
            reaches only the ``attention_levels``; with this, the first level, whose outputs draw the pixels, sees
            the caption and the labels too (object colour, a sharp or blurred background).
    """

    def __init__(self, in_channels: int = 3, extra_in_channels: int = 0, model_channels: int = 64,
                 channel_mult: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_levels: tuple[int, ...] = (2,), context_dim: int = 256,
                 num_heads: int | None = None, head_dim: int = 32, dropout: float = 0.0,
                 pos_embed_size: int | None = 16, use_checkpoint: bool = False,
                 fourier_scale: float = 1.0, linear_skip: bool = False, wavelet_levels: int = 2,
                 opponent_colour: bool = False, local_skip_gain: bool = False, pooled_context: bool = False):
        super().__init__()
        channel_mult, attention_levels = tuple(channel_mult), tuple(attention_levels)
        bad = [i for i in attention_levels if not 0 <= i < len(channel_mult)]
        if bad:
            raise ValueError(f"attention_levels {bad} are not indices into channel_mult "
                             f"(0..{len(channel_mult) - 1}).")
        self.in_channels, self.extra_in_channels = in_channels, extra_in_channels
        self.context_dim, self.use_checkpoint = context_dim, use_checkpoint
        #: H and W of the input pixels must be multiples of this.
        if wavelet_levels not in (1, 2):
            raise ValueError(f"wavelet_levels must be 1 or 2, got {wavelet_levels}")
        self.wavelet_levels = wavelet_levels
        if opponent_colour and in_channels != 3:
            raise ValueError(f"opponent_colour needs in_channels=3 (RGB), got {in_channels}")
        self.opponent_colour = opponent_colour
        self.resolution_multiple = 2 ** wavelet_levels * 2 ** (len(channel_mult) - 1)
        wav = 4 ** wavelet_levels  # wavelet coefficients per pixel channel

        def heads_for(ch: int) -> int:
            if num_heads is not None:
                return num_heads
            if ch % head_dim:
                raise ValueError(f"attention width {ch} is not a multiple of head_dim={head_dim}; "
                                 "change model_channels/channel_mult, head_dim or pass num_heads.")
            return ch // head_dim

        emb_dim = 4 * model_channels
        self.map_noise = FourierEmbedding(model_channels, fourier_scale)
        self.map_layer0 = nn.Linear(model_channels, emb_dim)
        self.map_layer1 = nn.Linear(emb_dim, emb_dim)
        self.map_context = nn.Linear(context_dim, emb_dim) if pooled_context else None

        self.conv_in = nn.Conv2d(wav * (in_channels + extra_in_channels), model_channels, 3, padding=1)
        self.pos_embed = None
        if pos_embed_size is not None:
            self.pos_embed = nn.Parameter(torch.zeros(1, model_channels, pos_embed_size, pos_embed_size))

        kw = dict(emb_dim=emb_dim, dropout=dropout, context_dim=context_dim, heads_for=heads_for)
        self.enc = nn.ModuleList()
        skips, cout = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            if level > 0:
                self.enc.append(_Unit(cout, cout, resample="down", **kw))
                skips.append(cout)
            for _ in range(num_res_blocks):
                cin, cout = cout, model_channels * mult
                self.enc.append(_Unit(cin, cout, attention=level in attention_levels, **kw))
                skips.append(cout)
        self.mid = nn.ModuleList([_Unit(cout, cout, attention=True, **kw), _Unit(cout, cout, **kw)])
        self.dec = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            if level < len(channel_mult) - 1:
                self.dec.append(_Unit(cout, cout, resample="up", **kw))
            for _ in range(num_res_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * channel_mult[level]
                self.dec.append(_Unit(cin, cout, attention=level in attention_levels, **kw))
        self.norm_out = nn.GroupNorm(_groups(cout), cout)
        self.conv_out = _zero(nn.Conv2d(cout, wav * in_channels, 3, padding=1))
        self.skip_proj = self.skip_gain = None
        if linear_skip:
            c_in, c_out = wav * (in_channels + extra_in_channels), wav * in_channels
            self.skip_proj = nn.Conv2d(c_in, c_out, 1, bias=False)
            with torch.no_grad():
                self.skip_proj.weight.zero_()
                self.skip_proj.weight[:, :c_out, 0, 0] = torch.eye(c_out)
            self.skip_gain = _zero(nn.Linear(emb_dim, c_out))
        self.gate_head = None
        if local_skip_gain:
            if not linear_skip:
                raise ValueError("local_skip_gain needs linear_skip=True")
            self.gate_head = _zero(nn.Conv2d(cout, (wavelet_levels + 1) * in_channels, 3, padding=1))

    def _check_inputs(self, x, c_noise, context, context_mask, extra) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        m = self.resolution_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"H and W must be multiples of {m} (2^wavelet_levels x 2 per U-Net level), got "
                f"{x.shape[-2]}x{x.shape[-1]}; use bucket shapes with multiple={m} or crop.")
        b = x.shape[0]
        if c_noise.shape != (b,):
            raise ValueError(f"c_noise must have shape ({b},), got {tuple(c_noise.shape)}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != self.context_dim:
            raise ValueError(f"context must be (B={b}, L, {self.context_dim}), got {tuple(context.shape)}")
        if context_mask is not None and context_mask.shape != context.shape[:2]:
            raise ValueError(f"context_mask must be {tuple(context.shape[:2])}, got {tuple(context_mask.shape)}")
        if self.extra_in_channels:
            if extra is None or extra.shape != (b, self.extra_in_channels, *x.shape[-2:]):
                got = None if extra is None else tuple(extra.shape)
                raise ValueError(f"extra must be (B, {self.extra_in_channels}, H, W) matching x, got {got}")
        elif extra is not None:
            raise ValueError("extra was given but the model has extra_in_channels=0")

    def _run(self, unit: _Unit, h: Tensor, emb: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(unit, h, emb, context, mask, use_reentrant=False)
        return unit(h, emb, context, mask)

    def forward(self, x: Tensor, c_noise: Tensor, context: Tensor, context_mask: Tensor | None = None,
                extra: Tensor | None = None, control: list[Tensor] | None = None,
                canvas: tuple[int, int, int, int] | None = None) -> Tensor:
        """Raw network output F (EDM preconditioning is applied outside).

        Args:
            x: (B, in_channels, H, W) float pixels, already scaled by EDM ``c_in``; H, W multiples
                of ``self.resolution_multiple``. Any memory format (channels-last works).
            c_noise: (B,) float noise conditioning (EDM ``ln(sigma) / 4``).
            context: (B, L, context_dim) float conditioning tokens.
            context_mask: (B, L) bool, True = attend; None = all tokens. A row with no True entry
                attends to all its tokens (instead of producing NaN).
            extra: (B, extra_in_channels, H, W) float pixels or None.
            control: ControlNet residuals (``lit_edify.nn.controlnet``) or None: one per skip, in the
                order the encoder stores them, then one for the middle block's output; each is added to
                its feature map (same shape). None (or all zeros) leaves the output unchanged.
            canvas: ``(top, left, H, W)`` in pixels when x is a tile of a larger H x W image (tiled sampling,
                ``lit_edify.diffusion.tiled``): the positional encoding is evaluated in the image's global
                coordinates. None (or the tile's own extent) is the untiled network.
        Returns:
            (B, in_channels, H, W) in ``x.dtype``, unbounded (zero at initialisation).
        """
        self._check_inputs(x, c_noise, context, context_mask, extra)
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        context_mask = context_mask.bool()
        context_mask = context_mask | ~context_mask.any(dim=1, keepdim=True)

        emb = embedding(self, c_noise, context, context_mask)

        h = wav_in = input_coefficients(x, extra, self.wavelet_levels, self.opponent_colour)
        h = add_pos_embed(self.conv_in(h), self.pos_embed, feature_canvas(canvas, self.wavelet_levels))

        skips = [h]
        for unit in self.enc:
            h = self._run(unit, h, emb, context, context_mask)
            skips.append(h)
        for unit in self.mid:
            h = self._run(unit, h, emb, context, context_mask)
        if control is not None:  # ControlNet (report Sec. 5): residuals added to the skips and the middle
            if len(control) != len(skips) + 1:
                raise ValueError(f"control must hold {len(skips) + 1} residuals (one per skip, then the middle), "
                                 f"got {len(control)}; build the ControlNet from this U-Net")
            skips = [s + r.to(s.dtype) for s, r in zip(skips, control)]
            h = h + control[-1].to(h.dtype)
        for unit in self.dec:
            if unit.res.resample != "up":
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(unit, h, emb, context, context_mask)
        feat = F.silu(self.norm_out(h))
        h = self.conv_out(feat)
        if self.skip_proj is not None:
            inv_sigma = torch.exp(-4 * c_noise.float())[:, None, None, None]
            gain = self.skip_gain(emb)[:, :, None, None].float()
            h = h + (gain * inv_sigma).to(h.dtype) * self.skip_proj(wav_in)
        out = inverse_haar_packet(h.float(), self.wavelet_levels)
        if self.gate_head is not None:  # a gain per pixel and band, bilinear between feature positions
            field = F.interpolate(self.gate_head(feat).float(), size=out.shape[-2:], mode="bilinear")
            x_work = (to_opponent(x) if self.opponent_colour else x).float()
            bands = undecimated_bands(x_work, self.wavelet_levels)
            out = out + inv_sigma * (field.view_as(bands) * bands).sum(dim=1)
        out = from_opponent(out) if self.opponent_colour else out
        return out.to(x.dtype)
