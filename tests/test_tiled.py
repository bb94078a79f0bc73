"""Tiled denoising (lit_edify.diffusion.tiled) and the U-Net's positional encoding in global coordinates."""
import pytest
import torch
import torch.nn.functional as F

from lit_edify.diffusion.samplers import get_sigmas_karras, sample_ddim
from lit_edify.diffusion.tiled import TiledDenoiser, ramp, seam_ratio, tile_edges, tile_starts
from lit_edify.nn.embeddings import add_pos_embed
from lit_edify.nn.unet import EdifyUNet


def test_tile_starts_cover_the_image_on_the_grid():
    for size, tile, overlap, m in [(512, 128, 32, 16), (256, 128, 48, 16), (96, 128, 32, 16), (640, 192, 64, 64)]:
        starts = tile_starts(size, tile, overlap, m)
        t = min(tile, size)
        assert starts[0] == 0 and starts[-1] + t == size
        assert all(s % m == 0 for s in starts)
        assert all(b - a <= t - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap
    with pytest.raises(ValueError, match="multiples of 16"):
        tile_starts(500, 128, 32, 16)


def test_raised_cosine_ramps_sum_to_one_where_two_tiles_overlap_by_exactly_overlap():
    size, tile, overlap = 224, 128, 32  # stride 96: tiles at 0 and 96 share exactly 32 pixels
    assert tile_starts(size, tile, overlap) == [0, 96]
    a, b = ramp(tile, 0, size, overlap), ramp(tile, 96, size, overlap)
    total = torch.zeros(size, dtype=torch.float64)
    total[:tile] += a
    total[96:] += b
    torch.testing.assert_close(total, torch.ones(size, dtype=torch.float64), rtol=0, atol=1e-12)
    assert a[0] == 1 and b[-1] == 1 and 0 < b[0] < 0.01  # image borders keep full weight


def test_one_tile_is_the_untiled_denoiser_exactly_and_pointwise_denoisers_are_unchanged_by_tiling():
    x = torch.randn(2, 3, 64, 96)
    s = torch.tensor([0.5, 2.0])
    cond = torch.randn(2, 3, 16, 24)  # a 4x smaller conditioning image, cropped per tile

    def d(x, sigma, low):
        from lit_edify.diffusion.laplacian import up
        return torch.tanh(x) / (1 + sigma.view(-1, 1, 1, 1)) + up(low, 4)

    assert torch.equal(TiledDenoiser(d, 128, 32, 16)(x, s, low=cond), d(x, s, cond))
    tiled = TiledDenoiser(d, 32, 16, 16)(x, s, low=cond)
    assert len(TiledDenoiser(d, 32, 16, 16).tiles(64, 96)) > 4
    torch.testing.assert_close(tiled, d(x, s, cond), rtol=1e-6, atol=1e-6)


def _tile_mean_denoiser(x, sigma):
    """Depends on its whole input window (like a network's receptive field and normalisation): differs per tile."""
    return 0.5 * x + 0.5 * x.mean(dim=(-2, -1), keepdim=True)


def test_blending_removes_the_seams_that_unblended_tiles_show():
    """512 px outputs from 128 px tiles (the issue's geometry), a few sampler steps from smooth noise."""
    g = torch.Generator().manual_seed(0)
    base = F.interpolate(torch.randn(1, 3, 15, 15, generator=g), size=(512, 512), mode="bicubic", align_corners=False)
    x = base + 0.1 * torch.randn(1, 3, 512, 512, generator=g)
    sigmas = get_sigmas_karras(4, 0.05, 1.0)
    ratios = {}
    for blend in (True, False):
        tiled = TiledDenoiser(_tile_mean_denoiser, 128, 32, 16, blend=blend)
        out = sample_ddim(tiled, x, sigmas)
        ratios[blend] = seam_ratio(out, *tiled.edges(512, 512))
    assert ratios[True] <= 1.2 < ratios[False], ratios
    assert 0.9 < seam_ratio(base, *TiledDenoiser(None, 128, 32, 16).edges(512, 512)) < 1.1  # seamless image: ~1


def test_seam_ratio_measures_a_step_at_the_border():
    img = torch.zeros(1, 1, 8, 8)
    img[..., :, 4:] = 1.0
    img += 0.1 * torch.arange(8.0)  # smooth ramp along W, so interior differences are 0.1
    assert seam_ratio(img, [], [4]) == pytest.approx(1.1 / (0.1 * 6 * 8 / (6 * 8 + 7 * 8)), rel=1e-5)
    assert tile_edges(512, 128, 32, 16) == [96, 128, 192, 224, 288, 320, 384, 416]
    blocks = torch.arange(16.0).repeat_interleave(4).view(1, 1, 1, 64).expand(1, 1, 8, 64) % 2  # 4 px blocks
    assert seam_ratio(blocks, [], [16, 32]) > 3  # every 4th pair jumps: block edges look like seams...
    assert seam_ratio(blocks, [], [16, 32], period=16) == pytest.approx(1.0)  # ...unless compared in phase


def test_positional_encoding_in_global_coordinates():
    pos = torch.randn(1, 8, 16, 16, dtype=torch.float64)
    h = torch.zeros(2, 8, 12, 20, dtype=torch.float64)
    full = F.interpolate(pos, size=(48, 64), mode="bilinear", align_corners=False)
    for top, left in [(0, 0), (36, 44), (17, 5)]:
        got = add_pos_embed(h, pos, canvas=(top, left, 48, 64))
        torch.testing.assert_close(got, full[..., top:top + 12, left:left + 20].expand(2, -1, -1, -1))
    h2 = torch.zeros(1, 8, 48, 64, dtype=torch.float64)
    assert torch.equal(add_pos_embed(h2, pos, canvas=(0, 0, 48, 64)), add_pos_embed(h2, pos))
    small = torch.zeros(1, 8, 4, 4, dtype=torch.float64)  # downsizing too (a canvas smaller than pos)
    torch.testing.assert_close(add_pos_embed(small, pos, canvas=(4, 0, 8, 8)),
                               F.interpolate(pos, size=(8, 8), mode="bilinear", align_corners=False)[..., 4:8, 0:4])


def test_unet_tile_sees_the_global_encoding_and_one_tile_equals_untiled():
    torch.manual_seed(0)
    net = EdifyUNet(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(),
                    context_dim=8, head_dim=16, pos_embed_size=4).eval()
    with torch.no_grad():
        net.pos_embed.normal_()
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.05)
    x, c = torch.randn(1, 3, 64, 64), torch.zeros(1)
    ctx = torch.randn(1, 2, 8)
    with torch.no_grad():
        ref = net(x, c, ctx)
        assert torch.equal(net(x, c, ctx, canvas=(0, 0, 64, 64)), ref)

        def d(x, sigma, canvas=None):
            return net(x, sigma, ctx, canvas=canvas)

        assert torch.equal(TiledDenoiser(d, 64, 16, 8, canvas=True)(x, c), ref)
        # a tile in the image's middle: the global encoding differs from the tile's own (local) one
        tile = x[..., 16:48, 16:48]
        assert not torch.allclose(net(tile, c, ctx, canvas=(16, 16, 64, 64)), net(tile, c, ctx), atol=1e-4)
