"""2-level Haar wavelet packet: (B, C, H, W) <-> (B, 16 C, H/4, W/4), exactly invertible (report Sec. 3.1).

The Edify U-Nets apply this transform at their input and its inverse at their output, so the
network sees 16x fewer spatial positions (48 x H/4 x W/4 for an RGB image).

One level of the 2D Haar transform maps every 2x2 pixel block ``[[p00, p01], [p10, p11]]`` to four
coefficients (the orthonormal 4x4 Hadamard mixing, signs as in PyWavelets)::

    a = (p00 + p01 + p10 + p11) / 2      approximation
    h = (p00 + p01 - p10 - p11) / 2      detail along H (pywt "horizontal")
    v = (p00 - p01 + p10 - p11) / 2      detail along W (pywt "vertical")
    d = (p00 - p01 - p10 + p11) / 2      diagonal detail

The *packet* transform applies the same step again to all four sub-bands (not only to ``a``).
It is ``pixel_unshuffle(2)`` + the 4x4 mixing, twice; written with additions only, it is exact in
float32 and unaffected by autocast (the mixing matrix is symmetric and orthogonal, so it is its own
inverse and energy is preserved).

Channel order of the output (golden-tested against ``pywt.WaveletPacket2D(x, 'haar', maxlevel=2)``):
``out[:, 16 * c + 4 * i + j]`` is the pywt level-2 node with path ``"ahvd"[i] + "ahvd"[j]`` of input
channel ``c``, i.e. the nodes of ``wp.get_level(2, order="natural")``:
``aa, ah, av, ad, ha, hh, hv, hd, va, vh, vv, vd, da, dh, dv, dd``. Channel ``16 * c`` (node "aa")
is the 4x4 block mean times 4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OPPONENT", "PACKET_NODE_ORDER", "HaarPacket2D", "from_opponent", "haar_packet", "inverse_haar_packet",
           "to_opponent"]

PACKET_NODE_ORDER = tuple(a + b for a in "ahvd" for b in "ahvd")


def _mix(p: Tensor) -> Tensor:
    """Orthonormal 4-point Haar mixing along dim 2 of (B, C, 4, h, w); its own inverse."""
    p00, p01, p10, p11 = p.unbind(dim=2)
    s0, d0 = p00 + p01, p00 - p01
    s1, d1 = p10 + p11, p10 - p11
    return torch.stack([s0 + s1, s0 - s1, d0 + d1, d0 - d1], dim=2) * 0.5


def _haar_level(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2), channel 4c + k with k in (a, h, v, d)."""
    b, c, h, w = x.shape
    p = F.pixel_unshuffle(x, 2).reshape(b, c, 4, h // 2, w // 2)
    return _mix(p).reshape(b, 4 * c, h // 2, w // 2)


def _inverse_haar_level(y: Tensor) -> Tensor:
    """(B, 4C, h, w) -> (B, C, 2h, 2w); exact inverse of :func:`_haar_level`."""
    b, c4, h, w = y.shape
    p = _mix(y.reshape(b, c4 // 4, 4, h, w)).reshape(b, c4, h, w)
    return F.pixel_shuffle(p, 2)


def _check(x: Tensor, name: str, multiple_of_16: bool) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} expects a 4D tensor (B, C, H, W), got shape {tuple(x.shape)}.")
    if multiple_of_16 and x.shape[1] % 16 != 0:
        raise ValueError(
            f"{name} expects 16*C channels (the output of haar_packet), got {x.shape[1]}."
        )
    if not multiple_of_16 and (x.shape[-2] % 4 or x.shape[-1] % 4):
        raise ValueError(
            f"{name} needs H and W to be multiples of 4, got {x.shape[-2]}x{x.shape[-1]}; "
            "crop or resize the image (e.g. to the nearest aspect-ratio bucket)."
        )


def haar_packet(x: Tensor, levels: int = 2) -> Tensor:
    """Forward Haar wavelet packet (``levels`` = 2: the report's transform; 1: 2x2 blocks, for small images).

    Args:
        x: (B, C, H, W) float tensor (C = 3 for RGB images in [-1, 1]; any C works), H and W
            multiples of 4.
    Returns:
        (B, 16 C, H/4, W/4) coefficients in ``x.dtype`` (computed in float32); channel order in the
        module docstring. The transform is orthonormal, so the sum of squares is preserved; values
        of an image in [-1, 1] lie in [-4, 4]. With ``levels=1``: (B, 4 C, H/2, W/2), channel 4c + k for
        k in (a, h, v, d) (pywt's ``dwt2`` order).
    """
    if levels == 1:
        if x.ndim != 4 or x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f"haar_packet(levels=1) needs (B, C, H, W) with even H and W, got {tuple(x.shape)}")
        return _haar_level(x.float()).to(x.dtype)
    if levels != 2:
        raise ValueError(f"levels must be 1 or 2, got {levels}")
    _check(x, "haar_packet", multiple_of_16=False)
    y = _haar_level(_haar_level(x.float()))
    return y.to(x.dtype)


def inverse_haar_packet(c: Tensor, levels: int = 2) -> Tensor:
    """Inverse of :func:`haar_packet`: (B, 16 C, h, w) -> (B, C, 4 h, 4 w) (levels=1: (B, 4C, h, w) ->
    (B, C, 2h, 2w)), in ``c.dtype``."""
    if levels == 1:
        if c.ndim != 4 or c.shape[1] % 4:
            raise ValueError(f"inverse_haar_packet(levels=1) needs (B, 4C, h, w), got {tuple(c.shape)}")
        return _inverse_haar_level(c.float()).to(c.dtype)
    if levels != 2:
        raise ValueError(f"levels must be 1 or 2, got {levels}")
    _check(c, "inverse_haar_packet", multiple_of_16=True)
    # Undo level 2 (per level-1 sub-band), then level 1.
    y = _inverse_haar_level(c.float())  # (B, 4C, 2h, 2w): level-1 sub-bands
    x = _inverse_haar_level(y)
    return x.to(c.dtype)


class HaarPacket2D(nn.Module):
    """Module form: ``forward`` = :func:`haar_packet`, ``inverse`` = :func:`inverse_haar_packet`."""

    def forward(self, x: Tensor) -> Tensor:
        return haar_packet(x)

    def inverse(self, c: Tensor) -> Tensor:
        return inverse_haar_packet(c)


#: Orthonormal opponent colour basis, one row per output channel: luma (R + G + B) / sqrt(3), red-green
#: (R - G) / sqrt(2) and yellow-blue (R + G - 2B) / sqrt(6). Orthonormal, so white Gaussian noise stays white
#: with the same sigma and the diffusion process is unchanged; only the network's channel basis changes.
OPPONENT = torch.tensor([[1 / math.sqrt(3)] * 3,
                         [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
                         [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)]], dtype=torch.float64)


def to_opponent(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) in the :data:`OPPONENT` basis (luma, red-green, yellow-blue)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"to_opponent expects (B, 3, H, W) RGB, got {tuple(x.shape)}")
    return torch.einsum("oc,bchw->bohw", OPPONENT.to(x.device, x.dtype), x)


def from_opponent(y: Tensor) -> Tensor:
    """Inverse of :func:`to_opponent` (the transpose: the basis is orthonormal)."""
    if y.ndim != 4 or y.shape[1] != 3:
        raise ValueError(f"from_opponent expects (B, 3, H, W), got {tuple(y.shape)}")
    return torch.einsum("oc,bohw->bchw", OPPONENT.to(y.device, y.dtype), y)


def undecimated_bands(x: Tensor, levels: int = 2) -> Tensor:
    """x split into ``levels + 1`` shift-invariant frequency bands that sum to x exactly: (B, levels + 1, C, H, W),
    finest detail first, then the low-pass.

    A trous binomial pyramid (Starck's undecimated wavelet): ``L_0 = x``, ``L_{j+1} = B_{2^j} * L_j`` with B the
    separable [1, 2, 1] / 4 kernel dilated by ``2^j`` (reflect padding), bands ``L_j - L_{j+1}`` and the last
    ``L_levels``. The scales match a ``levels``-level Haar packet, without its block grid: a gain per band is a
    shift-invariant filter, where a gain per Haar coefficient filters each 2^levels block on its own.
    """
    c = x.shape[1]
    k1 = x.new_tensor([1.0, 2.0, 1.0]) / 4
    low, bands = x, []
    for j in range(levels):
        d = 2**j
        blurred = F.pad(low, (d, d, d, d), mode="reflect")
        blurred = F.conv2d(blurred, k1.view(1, 1, 1, 3).expand(c, 1, 1, 3), dilation=(1, d), groups=c)
        blurred = F.conv2d(blurred, k1.view(1, 1, 3, 1).expand(c, 1, 3, 1), dilation=(d, 1), groups=c)
        bands.append(low - blurred)
        low = blurred
    return torch.stack(bands + [low], dim=1)
