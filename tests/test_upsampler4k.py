"""4K upsampler (report Sec. 4): noise rescaling, the SDEdit identity of a fresh model, joint training, checkpoints,
tiled sampling, and the high-resolution data (size and high-frequency filters, crops, odd image formats)."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lit_edify.data_modules.highres import (HighResCrops, HighResDataModule, high_frequency_score, load_scaled,
                                            scan_images)
from lit_edify.diffusion.laplacian import down, up
from lit_edify.modules.config import flat
from lit_edify.modules.registry import class_path
from lit_edify.modules.upsampler import Upsampler
from lit_edify.modules.upsampler4k import Upsampler4K
from lit_edify.pipelines.checkpoints import load_module
from conftest import save_module


@pytest.fixture(scope="module")
def up1k_ckpt(tiny_base_kwargs, tmp_path_factory):
    """A small factor-4 "1K" upsampler at 32 px with non-trivial weights."""
    torch.manual_seed(0)
    kw = dict(tiny_base_kwargs, resolution=32, band_factors=[4], band_cutoffs=[2.0], band_starts=[0.25],
              sigma_max=2.0, p_mean=-1.0)
    up1k = Upsampler(factor=4, **flat(**kw))
    with torch.no_grad():
        for p in up1k.net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return save_module(up1k, tmp_path_factory.mktemp("up1k") / "up1k.ckpt")


def test_needs_a_1k_checkpoint_or_saved_groups():
    with pytest.raises(ValueError, match="needs upsampler_ckpt"):
        Upsampler4K()


def test_noise_range_rescaled_by_the_factor_per_resolution_rule(up1k_ckpt):
    src = load_module(up1k_ckpt)
    m = Upsampler4K(up1k_ckpt, tile=64, tile_overlap=16)
    nz, old = m.cfg.noise, src.cfg.noise
    assert (nz.resolution, nz.sigma_min, nz.sigma_max) == (128, 4 * old.sigma_min, 4 * old.sigma_max)
    assert nz.band_cutoffs == [8.0] and nz.band_starts == [1.0]
    assert nz.p_mean == pytest.approx(old.p_mean + math.log(4))
    # the attenuation at 4 sigma (4K) is the 1K model's at sigma: the same image-level signal-to-noise ratio
    s = torch.tensor([0.1, 0.5, 1.0, 1.7, 2.5])
    for a4, a1 in zip(m.schedule.alphas(4 * s), src.schedule.alphas(s)):
        torch.testing.assert_close(a4, a1)
    # Eq. 7: noise of std 4 sigma at 4K averages down to std sigma at 1K
    eps = 4 * 0.5 * torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    assert down(eps, 4).std().item() == pytest.approx(0.5, rel=0.02)


def test_fresh_upsampler4k_is_the_sdedit_baseline_bit_for_bit(up1k_ckpt):
    """Zero ControlNet projections: D equals the 1K network evaluated at the 4K noise level."""
    src = load_module(up1k_ckpt)
    m = Upsampler4K(up1k_ckpt).eval()
    g = torch.Generator().manual_seed(1)
    x, x_low = torch.randn(2, 3, 64, 64, generator=g), torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    sigma = torch.tensor([0.3, 6.0])
    ctx, mask = m.encode_conditions(["", ""], drop=False)
    with torch.no_grad():
        assert torch.equal(m.denoise(x, sigma, ctx, mask, x_low), src.denoise(x, sigma, ctx, mask))


def test_base_and_controlnet_both_train_and_the_checkpoint_is_self_contained(up1k_ckpt, tmp_path):
    m = Upsampler4K(up1k_ckpt)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = m.configure_optimizers()["optimizer"]
    batch = {"image": torch.rand(2, 3, 64, 64) * 2 - 1, "caption": ["", ""]}
    for _ in range(2):  # step 1 moves the zero projections off zero, step 2 sends gradient through them
        opt.zero_grad()
        m.training_step(batch, 0).backward()
        opt.step()
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("net.") for k in changed) and any(k.startswith("controlnet.zero_convs") for k in changed)
    assert any(k.startswith("controlnet.hint_block") for k in changed)
    path = save_module(m, tmp_path / "up4k.ckpt")
    assert m.hparams["upsampler_ckpt"] is None  # rebuilt from its own groups, not from the 1K file
    saved = {"hyper_parameters": dict(m.hparams)}
    m.on_save_checkpoint(saved)
    assert saved["hyper_parameters"]["_class_path"] == class_path(Upsampler4K)  # what --ckpt_path resume parses
    again = load_module(path)
    x, s = torch.randn(1, 3, 64, 64), torch.tensor([1.0])
    ctx, mask = m.encode_conditions([""], drop=False)
    low = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again.denoise(x, s, ctx, mask, low), m.eval().denoise(x, s, ctx, mask, low))


def test_upsample_shapes_one_tile_equals_untiled_and_guidance_pulls_toward_the_input(up1k_ckpt):
    m = Upsampler4K(up1k_ckpt).eval()
    low = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(2)) * 2 - 1
    one = m.upsample(low, steps=3, tile=96, recon_guidance=0.0)
    assert one.shape == (1, 3, 64, 96) and one.abs().max() <= 1
    assert torch.equal(one, m.upsample(low, steps=3, tile=128, recon_guidance=0.0))  # still one tile
    tiled = m.upsample(low, steps=3, tile=32, tile_overlap=16, recon_guidance=0.0)
    assert (tiled - one).abs().mean() < 0.1  # same trajectory up to each tile's limited view
    err = [(down(m.upsample(low, steps=3, tile=32, tile_overlap=16, recon_guidance=w, restore_low=False), 4)
            - low).square().mean() for w in (0.0, 4.0)]
    assert err[1] < err[0]
    drift = [(down(m.upsample(low, steps=3, recon_guidance=0.0, restore_low=r), 4).mean((-2, -1))
              - low.mean((-2, -1))).abs().max() for r in (False, True)]
    assert drift[1] < 0.2 * drift[0]  # the colour fix puts the input's colours back
    # ... and is the default, unless the model's hyper-parameter turns it off
    assert torch.equal(m.upsample(low, steps=2, recon_guidance=0.0),
                       m.upsample(low, steps=2, recon_guidance=0.0, restore_low=True))
    off = Upsampler4K(up1k_ckpt, restore_low=False).eval()
    assert torch.equal(off.upsample(low, steps=2, recon_guidance=0.0),
                       m.upsample(low, steps=2, recon_guidance=0.0, restore_low=False))


# ------------------------------------------------------------------------------------------------- data
def test_high_frequency_score_closed_forms():
    g = torch.Generator().manual_seed(0)
    assert high_frequency_score(up(torch.randn(3, 16, 16, generator=g), 2)) == pytest.approx(0.0, abs=1e-12)
    assert high_frequency_score(torch.randn(3, 256, 256, generator=g)) == pytest.approx(0.75, abs=0.01)
    assert high_frequency_score(torch.zeros(3, 8, 8)) == 0.0


def _write(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)


def test_folder_scan_size_and_detail_filters_crops_and_formats(tmp_path):
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)
    _write(tmp_path / "a" / "big.png", noisy)
    _write(tmp_path / "a" / "big_small_copy.png", noisy[:100, :120])
    _write(tmp_path / "b" / "flat.png", np.full((150, 150, 3), 90, np.uint8))  # no high frequencies
    _write(tmp_path / "c" / "tiny.png", noisy[:40, :40])  # below min_size
    _write(tmp_path / "d" / "grey16.png", (rng.integers(0, 65535, (130, 140))).astype(np.uint16))
    _write(tmp_path / "e" / "rgba.png", np.dstack([noisy[:128, :128], np.full((128, 128), 128, np.uint8)]))
    found = scan_images(tmp_path, min_size=100)
    assert [p.name for p in found] == ["big.png", "big_small_copy.png", "flat.png", "grey16.png", "rgba.png"]
    assert [p.name for p in scan_images(tmp_path, 100, one_per_folder=True)] == ["big.png", "flat.png",
                                                                                 "grey16.png", "rgba.png"]
    for name in ("d/grey16.png", "e/rgba.png"):  # documented conversions: 16-bit grey -> RGB, alpha on white
        im = load_scaled(tmp_path / name, 64)
        assert im.shape[0] == 3 and min(im.shape[-2:]) == 64 and im.min() >= -1 and im.max() <= 1
    dm = HighResDataModule(str(tmp_path), short_side=64, crop=32, min_size=100, min_hf=0.01, one_per_folder=True,
                           val_fraction=0.0, batch_size=2, train_size=6)
    dm.setup()
    assert dm.scores[str(tmp_path / "b" / "flat.png")] == 0.0 and len(dm.train_set.images) == 3  # flat dropped
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["caption"] == ["", ""]
    a, b = HighResCrops(dm.train_set.images, 32, 4, seed=5), HighResCrops(dm.train_set.images, 32, 4, seed=5)
    assert torch.equal(a[3]["image"], b[3]["image"])
    with pytest.raises(ValueError, match="no images passed"):
        HighResCrops([], 32, 4)


# ------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def up4k_ckpt(up1k_ckpt, tmp_path_factory):
    return save_module(Upsampler4K(up1k_ckpt, sampling={"steps": 2}, tile=64, tile_overlap=16),
                       tmp_path_factory.mktemp("up4k") / "up4k.ckpt")


def _upsample(capsys, *args):
    from lit_edify.cli import main

    capsys.readouterr()
    try:
        code = main(["upsample", *map(str, args)])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def test_cli_upsample_converts_grey_16bit_and_rgba_and_writes_atomically(up4k_ckpt, tmp_path, capsys):
    import cv2

    rng = np.random.default_rng(0)
    _write(tmp_path / "rgb.png", rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    code, io = _upsample(capsys, "--ckpt", up4k_ckpt, "--image", tmp_path / "rgb.png", "--out", tmp_path / "o.png")
    assert code == 0, io.err
    out = cv2.imread(str(tmp_path / "o.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (128, 192, 3) and out.dtype == np.uint8
    _write(tmp_path / "g16.png", rng.integers(0, 65535, (36, 40)).astype(np.uint16))  # sides not multiples of 4
    code, io = _upsample(capsys, "--ckpt", up4k_ckpt, "--image", tmp_path / "g16.png", "--out", tmp_path / "g.png",
                         "--recon-guidance", 0)
    out = cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_UNCHANGED)
    assert code == 0 and out.shape == (144, 160, 3) and out.dtype == np.uint16
    assert "greyscale input: replicated to RGB" in io.err and "16-bit" in io.err
    rgba = np.dstack([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), np.full((32, 32), 77, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    code, io = _upsample(capsys, "--ckpt", up4k_ckpt, "--image", tmp_path / "a.png", "--out", tmp_path / "a4.png")
    out = cv2.imread(str(tmp_path / "a4.png"), cv2.IMREAD_UNCHANGED)
    assert code == 0 and out.shape == (128, 128, 4) and (out[..., 3] == 77).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a4.png", "g.png", "g16.png", "o.png", "rgb.png"]


@pytest.mark.parametrize("case, message", [
    ("small", "smaller than the model's input size (32 px per side)"),
    ("huge", "above the 16384 px per side limit"),
    ("float", "float32 pixels"),
    ("missing", "not found"),
    ("corrupt", "not a readable image"),
    ("under_file", "is not writable"),
    ("suffix", "must end in one of"),
])
def test_cli_upsample_bad_input_is_one_line_exit_2_and_leaves_nothing(up4k_ckpt, tmp_path, capsys, case, message):
    import cv2

    img, out = tmp_path / "in.png", tmp_path / "out.png"
    rng = np.random.default_rng(1)
    _write(img, rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    if case == "small":
        _write(img, rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    elif case == "huge":
        _write(img, rng.integers(0, 256, (32, 4100, 3), dtype=np.uint8))
    elif case == "float":
        img = tmp_path / "in.tif"
        cv2.imwrite(str(img), rng.random((40, 40, 3)).astype(np.float32))
    elif case == "missing":
        img = tmp_path / "nope.png"
    elif case == "corrupt":
        img.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    elif case == "under_file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out.png"
    elif case == "suffix":
        out = tmp_path / "out.txt"
    before = sorted(tmp_path.iterdir())
    code, io = _upsample(capsys, "--ckpt", up4k_ckpt, "--image", img, "--out", out)
    lines = io.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0] and lines[0].startswith("lit-edify upsample: error:")
    assert sorted(tmp_path.iterdir()) == before


def test_cli_upsample_failure_while_sampling_leaves_nothing(up4k_ckpt, tmp_path, capsys, monkeypatch):
    _write(tmp_path / "in.png", np.zeros((32, 32, 3), np.uint8))

    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(Upsampler4K, "upsample", boom)
    code, io = _upsample(capsys, "--ckpt", up4k_ckpt, "--image", tmp_path / "in.png", "--out", tmp_path / "o.png")
    assert code == 1 and "simulated failure" in io.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_cli_sample_text_to_base_to_1k_to_4k(tiny_base_kwargs, tmp_path):
    """lit-edify sample --ckpt base --upsampler-ckpt 1K --upsampler4k-ckpt 4K: a 16 px base, a 4x "1K" stage
    (64 px) and the 4K stage (256 px) started from it."""
    from lit_edify.cli import main
    from lit_edify.modules.base import BaseModel

    torch.manual_seed(0)
    kw = dict(tiny_base_kwargs)
    base = save_module(BaseModel(**flat(**kw, band_factors=[4], band_cutoffs=[8.0], band_starts=[1.0])),
                       tmp_path / "base.ckpt")
    up_kw = dict(kw, resolution=64, band_factors=[4], band_cutoffs=[2.0], band_starts=[0.25], sigma_max=2.0)
    up1k = save_module(Upsampler(factor=4, **flat(**up_kw)), tmp_path / "up1k.ckpt")
    up4k = save_module(Upsampler4K(up1k, sampling={"steps": 2}), tmp_path / "up4k.ckpt")
    code = main(["sample", "--ckpt", base, "--upsampler-ckpt", up1k, "--upsampler4k-ckpt", up4k,
                 "--prompt", "a red circle", "--steps", "2", "--upsampler-steps", "2", "--upsampler4k-tile", "128",
                 "--upsampler4k-overlap", "32",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    assert Image.open(tmp_path / "out" / "000.png").size == (256, 256)
