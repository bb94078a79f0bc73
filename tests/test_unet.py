import copy

import pytest
import torch

from lit_edify.nn.presets import (
    TEXT_DIM,
    UNET_PRESETS,
    build_condition_embedder,
    build_unet,
    count_parameters,
)
from lit_edify.nn.unet import EdifyUNet

torch.set_num_threads(1)

# Exact aspect ratios with sides that are multiples of 16 (the tiny preset's resolution_multiple).
ASPECT_SHAPES = {"1:1": (64, 64), "4:3": (48, 64), "3:4": (64, 48), "16:9": (144, 256), "9:16": (256, 144)}
CTX = 128  # tiny preset context_dim


def _perturbed(model: EdifyUNet, seed: int = 0) -> EdifyUNet:
    """Move every weight off its initial value, so zero-initialised layers no longer block gradients."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return _perturbed(build_unet("tiny", dropout=0.1))


def _inputs(b=2, h=64, w=64, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, h, w, generator=g)
    c_noise = torch.randn(b, generator=g)
    ctx = torch.randn(b, length, CTX, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False
    return x, c_noise, ctx, mask


def test_tiny_preset_is_a_few_million_parameters():
    model = build_unet("tiny")
    assert 1e6 < count_parameters(model) < 10e6
    assert model.resolution_multiple == 16


@pytest.mark.parametrize("preset", sorted(UNET_PRESETS))
def test_first_level_is_not_a_bottleneck(preset):
    # the first conv sees 16 wavelet channels per image channel; a narrower first level cannot carry pixel detail
    kw = UNET_PRESETS[preset]
    assert kw["model_channels"] * kw["channel_mult"][0] >= 16 * kw["in_channels"]


def test_fresh_model_outputs_zero():
    model = build_unet("tiny")
    out = model(*_inputs())
    assert out.shape == (2, 3, 64, 64)
    assert torch.count_nonzero(out) == 0



@pytest.mark.parametrize("sigma", [0.002, 0.05, 0.5, 3.0, 80.0])
def test_linear_skip_with_gain_minus_sigma_data_is_the_pure_noise_denoiser(sigma):
    """g = -sigma_data on the identity path gives F = -(sigma_data / sigma) c_in x, so that EDM's
    D = c_skip x + c_out F is exactly 0 for any input: the right answer for data that is all zeros.
    A wrong constant in the 1/sigma factor (or a sign) leaves c_skip x partly in D."""
    from lit_edify.diffusion.edm import precondition

    sd = 0.5
    model = build_unet("tiny")
    assert model.skip_proj is not None
    with torch.no_grad():
        model.skip_gain.bias.fill_(-sd)
    x, _, ctx, mask = _inputs(h=32, w=32)
    s = torch.full((2,), sigma)
    d = precondition(model, x * sigma, s, sd, context=ctx, context_mask=mask)
    assert d.abs().max() < 1e-5 * sigma


@pytest.mark.parametrize("aspect", list(ASPECT_SHAPES))
def test_forward_backward_all_aspect_ratios(tiny, aspect):
    h, w = ASPECT_SHAPES[aspect]
    tiny.train()
    tiny.zero_grad(set_to_none=True)
    x, c_noise, ctx, mask = _inputs(b=1, h=h, w=w)
    out = tiny(x, c_noise, ctx, mask)
    assert out.shape == x.shape and out.dtype == x.dtype
    out.square().mean().backward()
    missing = [n for n, p in tiny.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert tiny.pos_embed.shape[-2:] == (16, 16)  # defined for 1:1, interpolated to (h/4, w/4)


def test_masked_context_tokens_are_ignored(tiny):
    tiny.eval()
    x, c_noise, ctx, mask = _inputs()
    ref = tiny(x, c_noise, ctx, mask)
    ctx2 = ctx.clone()
    ctx2[0, 3:] += 10.0  # masked positions of sample 0
    torch.testing.assert_close(tiny(x, c_noise, ctx2, mask), ref)
    ctx2[0, :3] += 1.0  # attended positions
    assert not torch.allclose(tiny(x, c_noise, ctx2, mask)[0], ref[0])
    # A row with no attended token must not produce NaN.
    assert torch.isfinite(tiny(x, c_noise, ctx, torch.zeros_like(mask))).all()


def test_noise_level_and_dropout_change_output(tiny):
    x, c_noise, ctx, mask = _inputs()
    tiny.eval()
    a = tiny(x, c_noise, ctx, mask)
    torch.testing.assert_close(tiny(x, c_noise, ctx, mask), a)  # eval: deterministic
    assert not torch.allclose(tiny(x, c_noise + 0.5, ctx, mask), a)
    tiny.train()
    assert not torch.allclose(tiny(x, c_noise, ctx, mask), a)  # dropout=0.1 active


def test_extra_input_channels():
    torch.manual_seed(0)
    model = _perturbed(build_unet("tiny", extra_in_channels=3)).eval()
    x, c_noise, ctx, mask = _inputs(b=1)
    extra = torch.randn_like(x)
    a = model(x, c_noise, ctx, mask, extra=extra)
    assert a.shape == x.shape
    assert not torch.allclose(model(x, c_noise, ctx, mask, extra=extra * 0), a)
    with pytest.raises(ValueError, match="extra must be"):
        model(x, c_noise, ctx, mask)
    with pytest.raises(ValueError, match="extra_in_channels=0"):
        build_unet("tiny")(x, c_noise, ctx, mask, extra=extra)


def test_bad_inputs_raise_clear_errors():
    model = build_unet("tiny")
    x, c_noise, ctx, mask = _inputs()
    with pytest.raises(ValueError, match="multiples of 16"):
        model(x[..., :56], c_noise, ctx, mask)
    with pytest.raises(ValueError, match="context must be"):
        model(x, c_noise, ctx[..., :64], mask)
    with pytest.raises(ValueError, match="c_noise"):
        model(x, c_noise[:1], ctx, mask)
    with pytest.raises(ValueError, match="not indices into channel_mult"):
        EdifyUNet(channel_mult=(1, 2), attention_levels=(2,))
    with pytest.raises(ValueError, match="head_dim"):
        EdifyUNet(model_channels=48, head_dim=64)
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        build_unet("huge")


def test_activation_checkpointing_gives_same_gradients(tiny):
    ref = copy.deepcopy(tiny).eval()  # eval: no dropout, so both runs are deterministic
    ckpt = copy.deepcopy(tiny).eval()
    ckpt.use_checkpoint = True
    ckpt.training = True  # checkpointing only runs in training mode; dropout modules stay in eval
    inputs = _inputs(b=1)
    for m in (ref, ckpt):
        m(*inputs).square().sum().backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_channels_last_and_bf16_autocast(tiny):
    tiny.eval()
    x, c_noise, ctx, mask = _inputs(b=1, h=48, w=64)
    ref = tiny(x, c_noise, ctx, mask)
    cl = copy.deepcopy(tiny).to(memory_format=torch.channels_last)
    out_cl = cl(x.to(memory_format=torch.channels_last), c_noise, ctx, mask)
    torch.testing.assert_close(out_cl, ref, atol=1e-4, rtol=1e-4)

    cl.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cl(x.to(memory_format=torch.channels_last), c_noise, ctx, mask)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cl.parameters())
    cl.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cl(x, c_noise, ctx, mask)
    assert (out - ref).norm() / ref.norm() < 0.1  # bf16 keeps ~3 digits per op


@pytest.mark.parametrize("preset,target", [("base2.7b", 2.7e9), ("upsampler1k1.6b", 1.6e9)])
def test_paper_presets_on_meta_device(preset, target):
    with torch.device("meta"):
        unet = build_unet(preset)
        cond = build_condition_embedder(preset)
    assert TEXT_DIM[preset] == 4096  # T5-XXL tokens
    total = count_parameters(unet) + count_parameters(cond)
    assert abs(total / target - 1) < 0.05, total
    assert all(p.is_meta for p in unet.parameters())
    assert UNET_PRESETS[preset]["pos_embed_size"] * 4 == {"base2.7b": 256, "upsampler1k1.6b": 1024}[preset]


def test_small100m_preset_is_about_100m():
    with torch.device("meta"):
        n = count_parameters(build_unet("small100m")) + count_parameters(build_condition_embedder("small100m"))
    assert 0.9e8 < n < 1.1e8


def test_one_level_wavelet_unet_runs_at_16x16_grid_for_32px():
    model = _perturbed(build_unet("tiny", wavelet_levels=1, pos_embed_size=16))
    assert model.resolution_multiple == 8 and model.conv_in.in_channels == 12
    x, c_noise, ctx, mask = _inputs(h=32, w=32)
    out = model(x, c_noise, ctx, mask)
    assert out.shape == x.shape and out.abs().sum() > 0


def test_opponent_colour_unet_is_the_rgb_unet_in_the_rotated_basis():
    """Same weights: F_opponent(x) = M^T F_rgb(M x) with M the orthonormal opponent basis, so the option changes
    only the channel basis the network works in, and in_channels other than 3 are refused."""
    from lit_edify.nn.wavelet import from_opponent, to_opponent

    torch.manual_seed(0)
    rgb = _perturbed(build_unet("tiny", pos_embed_size=8))
    opp = build_unet("tiny", pos_embed_size=8, opponent_colour=True)
    opp.load_state_dict(rgb.state_dict())
    x, c, ctx, mask = _inputs(h=32, w=32)
    with torch.no_grad():
        want = from_opponent(rgb(to_opponent(x), c, ctx, mask))
        got = opp(x, c, ctx, mask)
    assert got.abs().max() > 1e-2 and torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="in_channels=3"):
        build_unet("tiny", in_channels=1, opponent_colour=True)


def test_local_skip_gain_needs_the_linear_skip():
    with pytest.raises(ValueError, match="linear_skip"):
        build_unet("tiny", linear_skip=False, local_skip_gain=True)


def test_pooled_context_adds_the_masked_token_mean_to_the_noise_embedding():
    """pooled_context: emb = silu(map_layer1(silu(map_layer0(fourier(c_noise)))) + map_context(masked mean of the
    context)); masked tokens do not count, attended ones do, and without the option the embedding ignores the
    context."""
    import torch.nn.functional as F

    from lit_edify.nn.embeddings import embedding

    torch.manual_seed(0)
    model = _perturbed(build_unet("tiny", pos_embed_size=8, pooled_context=True)).eval()
    _, c_noise, ctx, mask = _inputs(h=32, w=32)
    with torch.no_grad():
        want = model.map_layer1(F.silu(model.map_layer0(model.map_noise(c_noise))))
        want = F.silu(want + model.map_context(torch.stack([ctx[0, :3].mean(0), ctx[1].mean(0)])))
        torch.testing.assert_close(embedding(model, c_noise, ctx, mask), want)
        # The plain U-Net's embedding ignores the context.
        plain = copy.deepcopy(model)
        plain.map_context = None
        torch.testing.assert_close(embedding(plain, c_noise, ctx, mask), embedding(plain, c_noise, ctx * 0, mask))
        # Masked tokens change nothing; an attended token changes the embedding.
        ctx2 = ctx.clone()
        ctx2[0, 3:] += 10.0
        torch.testing.assert_close(embedding(model, c_noise, ctx2, mask), want)
        ctx2[0, 0] += 1.0
        assert not torch.allclose(embedding(model, c_noise, ctx2, mask)[0], want[0])


@pytest.mark.parametrize("sigma", [0.05, 1.0])
def test_local_skip_gain_is_a_bilinear_gain_field_on_the_bands(sigma):
    """local_skip_gain: F = F_plain + sum_b up(G_b(features)) * band_b(x) / sigma over the 3 undecimated bands of
    x, with G one gain per band and colour channel at every feature position and up() bilinear to the pixels, so
    the gain has no block edges. With G's bias at -sigma_data (and g = 0) it is the exact pure-noise denoiser; with
    random weights the term equals the explicit sum."""
    import torch.nn.functional as F

    from lit_edify.diffusion.edm import precondition
    from lit_edify.nn.wavelet import undecimated_bands

    sd = 0.5
    model = build_unet("tiny", pos_embed_size=8, local_skip_gain=True).eval()
    assert model.gate_head.out_channels == 9
    x, _, ctx, mask = _inputs(h=32, w=32)
    s = torch.full((2,), sigma)
    with torch.no_grad():
        model.gate_head.bias.fill_(-sd)
        assert precondition(model, x * sigma, s, sd, context=ctx, context_mask=mask).abs().max() < 1e-5 * sigma
        torch.manual_seed(0)
        _perturbed(model)
        model.skip_gain.weight.zero_()
        model.skip_gain.bias.zero_()
        captured = {}
        hook = model.gate_head.register_forward_hook(lambda m, i, o: captured.__setitem__("g", o))
        c_noise = s.log() / 4
        out = model(x, c_noise, ctx, mask)
        hook.remove()
        head, model.gate_head = model.gate_head, None
        plain = model(x, c_noise, ctx, mask)
        model.gate_head = head
        field = F.interpolate(captured["g"], size=(32, 32), mode="bilinear")
        term = (field.view(2, 3, 3, 32, 32) * undecimated_bands(x, 2)).sum(dim=1) / sigma
    assert captured["g"].shape == (2, 9, 8, 8)
    # Bilinear: no jump at the 4-pixel block borders larger than the steps inside the blocks.
    jumps = field[..., :, 4::4] - field[..., :, 3:-1:4]
    inside = field[..., :, 1::4] - field[..., :, 0::4]
    assert jumps.abs().max() <= 1.5 * inside.abs().max()
    torch.testing.assert_close(out, plain + term, atol=1e-4 * (1 + 1 / sigma), rtol=1e-4)


def test_undecimated_bands_sum_to_the_image_and_are_shift_invariant():
    """The a trous binomial bands sum to x exactly; a constant image is all low-pass; the bands of an image shifted
    by one pixel are the shifted bands (away from the border), which no per-block (Haar) gain can give; the finest
    band of white noise keeps sum((delta - k)^2) = 1 - 2 k_centre + sum(k^2) = 1 - 2/4 + (3/8)^2 of its variance
    (k the separable 3x3 binomial kernel)"""
    from lit_edify.nn.wavelet import undecimated_bands

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 40, 40, generator=g, dtype=torch.float64)
    b = undecimated_bands(x, 2)
    assert b.shape == (2, 3, 3, 40, 40)
    torch.testing.assert_close(b.sum(dim=1), x, atol=1e-12, rtol=0)
    const = undecimated_bands(torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64), 2)
    assert const[:, :2].abs().max() < 1e-12 and (const[:, 2] - 0.3).abs().max() < 1e-12
    shifted = undecimated_bands(torch.roll(x, shifts=1, dims=-1), 2)
    torch.testing.assert_close(shifted[..., 8:-8, 9:-8], b[..., 8:-8, 8:-9], atol=1e-12, rtol=0)
    big = torch.randn(1, 1, 512, 512, generator=g, dtype=torch.float64)
    fine = undecimated_bands(big, 1)[:, 0, 0, 4:-4, 4:-4]
    assert abs(fine.var().item() - (1 - 2 * (1 / 4) + (3 / 8) ** 2)) < 0.01
