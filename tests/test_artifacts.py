"""Artefact statistics: exact values on constructed images."""
import pytest
import torch

from lit_edify.diffusion.laplacian import up
from lit_edify.metrics.artifacts import block_border_ratio, channel_spread


def test_block_ratio_exact_on_a_ramp_and_on_block_constant_images():
    ramp = torch.arange(16.0).expand(1, 1, 16, 16)           # every horizontal difference is 1, vertical 0
    # across: 3 border columns x 16 rows of 1 (+ 3 x 16 vertical zeros); inside: 12 x 16 ones (+ zeros)
    assert block_border_ratio(ramp) == pytest.approx(1.0)
    blocks = up(torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)), 4)
    assert torch.isinf(torch.tensor(block_border_ratio(blocks)))  # inside differences are all 0
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:] = 1.0                                          # one step exactly at a block border
    x[..., 1] = 0.5                                           # a bump inside a block: |0.5| twice
    # across: horizontal 8 rows x 1 border (value 1) + vertical 8 x 1 zeros = 8 / 16;
    # inside: horizontal 8 rows x 6 diffs (two of 0.5) + vertical 8 x 6 zeros = 8 / 96
    assert block_border_ratio(x) == pytest.approx((8 / 16) / (8 / 96))


def test_block_ratio_of_iid_noise_is_one_and_of_tiled_noise_is_larger():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(8, 3, 32, 32, generator=g)
    assert block_border_ratio(noise) == pytest.approx(1.0, abs=0.03)
    tiled = noise + 3 * up(torch.randn(8, 3, 8, 8, generator=g), 4)
    assert block_border_ratio(tiled) > 1.5
    with pytest.raises(ValueError):
        block_border_ratio(torch.zeros(3, 4, 4))


def test_channel_spread_is_zero_for_grey_and_exact_for_a_colour():
    grey = torch.rand(2, 1, 5, 5).expand(2, 3, 5, 5)
    assert channel_spread(grey) == 0.0
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert channel_spread(red) == pytest.approx(2.0)


def test_noise_kept_is_one_for_identity_zero_for_the_oracle_and_the_gain_of_a_shrinker():
    from lit_edify.metrics.artifacts import noise_kept

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    n = torch.randn(x0.shape, generator=g)
    region = (torch.rand(4, 1, 16, 16, generator=g) > 0.5).float()
    assert noise_kept(lambda x, s: x, x0, region, 0.1, n) == pytest.approx(1.0, abs=1e-6)
    assert noise_kept(lambda x, s: x0.clone(), x0, region, 0.1, n) == pytest.approx(0.0, abs=1e-6)
    assert noise_kept(lambda x, s: x0 + 0.3 * (x - x0), x0, region, 0.2, n) == pytest.approx(0.3, abs=1e-6)
    # only the region counts: noise left outside it does not
    inside = lambda x, s: x0 + (x - x0) * (1 - region)  # noqa: E731
    assert noise_kept(inside, x0, region, 0.1, n) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="region"):
        noise_kept(lambda x, s: x, x0, region[:, :, :8], 0.1, n)
