import numpy as np
import pytest
import pywt
import torch

from lit_edify.nn.wavelet import (
    PACKET_NODE_ORDER,
    HaarPacket2D,
    haar_packet,
    inverse_haar_packet,
)


def _pywt_packet(x: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (B, 16C, H/4, W/4) from pywt, in our documented channel order."""
    wp = pywt.WaveletPacket2D(x, "haar", mode="symmetric", maxlevel=2, axes=(-2, -1))
    nodes = wp.get_level(2, order="natural")
    assert tuple(n.path for n in nodes) == PACKET_NODE_ORDER
    y = np.stack([n.data for n in nodes], axis=2)  # (B, C, 16, h, w)
    return y.reshape(x.shape[0], -1, *y.shape[-2:])


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 3, 12, 20), (1, 5, 8, 4)])
def test_matches_pywt_golden(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    ours = haar_packet(x.float()).double().numpy()
    ref = _pywt_packet(x.numpy())
    assert ours.shape == (shape[0], 16 * shape[1], shape[2] // 4, shape[3] // 4)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_inverse_exact_and_orthonormal():
    x = torch.randn(3, 3, 32, 24)
    c = haar_packet(x)
    assert (inverse_haar_packet(c) - x).abs().max() < 1e-6
    assert (haar_packet(inverse_haar_packet(c)) - c).abs().max() < 1e-6
    torch.testing.assert_close(c.square().sum(), x.square().sum(), rtol=1e-6, atol=0)
    # Orthonormal basis: the 16 responses to the 16 unit impulses in a 4x4 block form an identity Gram.
    basis = torch.eye(16).reshape(16, 1, 4, 4)
    m = haar_packet(basis).reshape(16, 16)
    torch.testing.assert_close(m @ m.T, torch.eye(16), atol=1e-6, rtol=0)


def test_dc_channel_is_scaled_block_mean():
    x = torch.randn(1, 3, 8, 8)
    c = haar_packet(x)
    mean = torch.nn.functional.avg_pool2d(x, 4)
    torch.testing.assert_close(c[:, ::16], 4 * mean)


def test_dtype_kept_and_module_form():
    x = torch.randn(1, 3, 8, 8, dtype=torch.bfloat16)
    assert haar_packet(x).dtype == torch.bfloat16
    m = HaarPacket2D()
    y = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(m.inverse(m(y)), y, atol=1e-6, rtol=0)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="multiples of 4"):
        haar_packet(torch.zeros(1, 3, 10, 8))
    with pytest.raises(ValueError, match="4D"):
        haar_packet(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="16\\*C"):
        inverse_haar_packet(torch.zeros(1, 47, 2, 2))


def test_one_level_matches_pywt_dwt2_and_inverts():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 12, generator=g, dtype=torch.float64) * 2 - 1
    ours = haar_packet(x.float(), levels=1).double().numpy()
    cA, (cH, cV, cD) = pywt.dwt2(x.numpy(), "haar", axes=(-2, -1))
    ref = np.stack([cA, cH, cV, cD], axis=2).reshape(2, 12, 4, 6)  # channel 4c + k, k in (a, h, v, d)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    c = haar_packet(x.float(), levels=1)
    assert (inverse_haar_packet(c, levels=1) - x.float()).abs().max() < 1e-6
    with pytest.raises(ValueError, match="levels"):
        haar_packet(x.float(), levels=3)


def test_opponent_colour_basis_is_orthonormal_and_separates_grey_from_chroma():
    from lit_edify.nn.wavelet import OPPONENT, from_opponent, to_opponent

    assert torch.allclose(OPPONENT @ OPPONENT.T, torch.eye(3, dtype=torch.float64), atol=1e-15)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(from_opponent(to_opponent(x)), x, atol=1e-12)
    assert torch.allclose(to_opponent(x).square().sum(1), x.square().sum(1), atol=1e-12)   # white noise stays white
    grey = torch.randn(2, 1, 8, 8, dtype=torch.float64).expand(-1, 3, -1, -1)
    y = to_opponent(grey)
    assert torch.allclose(y[:, 0], 3 ** 0.5 * grey[:, 0], atol=1e-12) and y[:, 1:].abs().max() < 1e-12
    red = torch.zeros(1, 3, 1, 1, dtype=torch.float64)
    red[:, 0] = 1
    assert torch.allclose(to_opponent(red).flatten(), torch.tensor([3 ** -0.5, 2 ** -0.5, 6 ** -0.5],
                                                                   dtype=torch.float64))
    with pytest.raises(ValueError, match="RGB"):
        to_opponent(torch.zeros(1, 4, 8, 8))
