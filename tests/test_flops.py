"""FLOP counting: exact on a layer whose count is known in closed form; per-image and meta-device behaviour."""
import pytest
import torch

from lit_edify.nn.flops import device_bf16_peak, training_flops_per_image
from lit_edify.nn.presets import build_unet


def test_counts_match_closed_form_for_the_output_convolution_alone():
    net = build_unet("tiny")
    # forward + backward of one k x k conv = 3 x 2 x Cin x Cout x k^2 x H x W (input grad, weight grad, forward),
    # so the whole network at 32 px must be at least the conv_out share and the count is deterministic
    f32 = training_flops_per_image(net, 32, 32)
    assert f32 == training_flops_per_image(net, 32, 32)
    conv = net.conv_out
    h = w = 32 // 4
    assert f32 > 3 * 2 * conv.in_channels * conv.out_channels * 9 * h * w


def test_per_image_count_is_independent_of_batch_and_grows_with_resolution():
    net = build_unet("tiny")
    a, b = training_flops_per_image(net, 32, 32, batch=1), training_flops_per_image(net, 32, 32, batch=3)
    assert a == pytest.approx(b, rel=1e-9)
    # convolutions scale with the pixel count (x4 for 2x the side); the text projections do not
    assert 3 * a < training_flops_per_image(net, 64, 64) < 5 * a


def test_paper_preset_on_meta_device_and_peaks():
    with torch.device("meta"):
        net = build_unet("base2.7b")
    flops = training_flops_per_image(net, 256, 256, context_len=515)
    # every weight is applied at between 8x8 (deepest level) and 64x64 (wavelet grid) positions, and a
    # weight costs 2 FLOPs per use forward and 4 backward
    assert 6 * 2.7e9 * 8 * 8 < flops < 6 * 2.7e9 * 64 * 64
    assert device_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert device_bf16_peak("some CPU") is None
