"""ControlNet (report Sec. 5): exactness against the base, frozen base through fit, checkpoint contents,
control weight, several ControlNets, aspect ratios, bad-input errors and the paper-scale size."""
import copy

import lightning as L
import pytest
import torch

from lit_edify.modules.config import flat
from lit_edify.callbacks.ema import EMA
from lit_edify.data_modules.buckets import ASPECT_RATIOS, bucket_shape
from lit_edify.data_modules.hints import HintDataModule
from lit_edify.data_modules.shapes import ShapesDataModule
from lit_edify.modules.base import BaseModel
from lit_edify.modules.controlnet import BaseMismatchError, ControlNetModule
from lit_edify.modules.upsampler import Upsampler
from lit_edify.nn.controlnet import ControlNet, sum_residuals
from lit_edify.nn.presets import build_unet, count_parameters
from lit_edify.pipelines.checkpoints import load_module
from lit_edify.pipelines.controlled import controlled_stage, controlled_text_to_image
from conftest import save_module


@pytest.fixture(scope="module")
def base_ckpt(tiny_base_kwargs, tmp_path_factory):
    torch.manual_seed(0)
    base = BaseModel(**flat(**tiny_base_kwargs))
    with torch.no_grad():  # a "trained" base: non-zero output layers, so the denoiser is not trivial
        for p in base.net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return save_module(base, tmp_path_factory.mktemp("base") / "base.ckpt")


def randomize_projections(cn: ControlNetModule, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in (*cn.controlnet.zero_convs, cn.controlnet.mid_out, cn.controlnet.hint_block.convs[-1]):
            for p in m.parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def inputs(cn, n=2, aspect="1:1", seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = bucket_shape(aspect, cn.cfg.noise.resolution, cn.resolution_multiple)
    x = torch.randn(n, 3, h, w, generator=g)
    sigma = torch.tensor([0.5, 3.0, 20.0, 0.05][:n])
    ctx, mask = cn.base.encode_conditions(["a red circle", "a blue square", "a green triangle", "x"][:n], drop=False)
    hint = torch.rand(n, cn.controlnet.hint_channels, h, w, generator=g)
    return x, sigma, ctx, mask, hint


def test_fresh_controlnet_and_weight_zero_equal_the_base_bit_for_bit(base_ckpt):
    cn = ControlNetModule(base_ckpt, hint="canny").eval()
    x, s, ctx, mask, hint = inputs(cn)
    with torch.no_grad():
        base = cn.base.denoise(x, s, ctx, mask)
        assert torch.equal(cn.denoise(x, s, ctx, mask, hint=hint), base)  # zero projections
        randomize_projections(cn)
        assert torch.equal(cn.denoise(x, s, ctx, mask, hint=hint, weight=0.0), base)
        controlled = cn.denoise(x, s, ctx, mask, hint=hint, weight=1.0)
    assert (controlled - base).abs().max() > 1e-3  # non-zero projections change the output


def test_per_sample_weight_scales_each_sample(base_ckpt):
    cn = ControlNetModule(base_ckpt, hint="depth").eval()
    randomize_projections(cn)
    x, s, ctx, mask, hint = inputs(cn)
    with torch.no_grad():
        base = cn.base.denoise(x, s, ctx, mask)
        full = cn.denoise(x, s, ctx, mask, hint=hint, weight=1.0)
        mixed = cn.denoise(x, s, ctx, mask, hint=hint, weight=torch.tensor([0.0, 1.0]))
        r1 = cn.controlnet(x, s.log() / 4, ctx, mask, hint, 1.0)
        r_half = cn.controlnet(x, s.log() / 4, ctx, mask, hint, torch.tensor([0.5, 0.5]))
    assert torch.equal(mixed[0], base[0]) and torch.allclose(mixed[1], full[1], atol=1e-5)
    assert all(torch.allclose(a, 0.5 * b) for a, b in zip(r_half, r1))
    with pytest.raises(ValueError, match=r"control weight must be a number or a \(2,\) tensor"):
        cn.denoise(x, s, ctx, mask, hint=hint, weight=torch.ones(3))


def test_two_controlnets_sum_their_residuals(base_ckpt):
    a, b = ControlNetModule(base_ckpt, hint="canny").eval(), ControlNetModule(base_ckpt, hint="inpaint").eval()
    randomize_projections(a, 1), randomize_projections(b, 2)
    assert a.base is b.base  # one frozen base shared by both
    x, s, ctx, mask, ha = inputs(a)
    hb = torch.rand(2, 7, *x.shape[-2:])
    c = s.log() / 4
    with torch.no_grad():
        ra, rb = a.controlnet(x, c, ctx, mask, ha, 0.7), b.controlnet(x, c, ctx, mask, hb, 1.3)
        want = a.base.net(x, c, ctx, mask, control=[u + v for u, v in zip(ra, rb)])
        assert torch.equal(a.base.net(x, c, ctx, mask, control=sum_residuals([ra, rb])), want)
        st = controlled_stage(a.base, ["a red circle", "a blue square"], [(a, ha, 0.7), (b, hb, 1.3)], guidance=1.0)
        both = st.denoiser(x, s)
        alone = controlled_stage(a.base, ["a red circle", "a blue square"], [(a, ha, 0.7), (b, hb, 0.0)],
                                 guidance=1.0).denoiser(x, s)
    assert torch.allclose(alone, a.denoise(x, s, ctx, mask, hint=ha, weight=0.7), atol=1e-6)
    assert (both - alone).abs().max() > 1e-3


@pytest.mark.parametrize("aspect", sorted(ASPECT_RATIOS))
def test_every_aspect_ratio(base_ckpt, aspect):
    cn = ControlNetModule(base_ckpt, hint="inpaint").eval()
    x, s, ctx, mask, hint = inputs(cn, aspect=aspect)
    with torch.no_grad():
        base = cn.base.denoise(x, s, ctx, mask)
        assert torch.equal(cn.denoise(x, s, ctx, mask, hint=hint), base)
        randomize_projections(cn)
        out = cn.denoise(x, s, ctx, mask, hint=hint)
    assert out.shape == x.shape == (2, 3, *bucket_shape(aspect, 16, 8)) and not torch.equal(out, base)


def test_fit_trains_only_the_controlnet_and_the_checkpoint_holds_only_it(base_ckpt, tmp_path):
    cn = ControlNetModule(base_ckpt, hint="canny", optim={"lr": 1e-3, "warmup_steps": 1})
    base_before = {k: v.clone() for k, v in cn.base.state_dict().items()}
    cn_before = {k: v.clone() for k, v in cn.controlnet.state_dict().items()}
    data = HintDataModule(ShapesDataModule(resolution=16, multiple=8, train_size=12, val_size=4, batch_size=4),
                          hint="canny")
    ema = EMA(halflife_images=100)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[ema], default_root_dir=tmp_path)
    trainer.fit(cn, data)
    assert all(torch.equal(v, base_before[k]) for k, v in cn.base.state_dict().items())
    assert not any(p.requires_grad for p in cn.base.parameters())
    assert not all(torch.equal(v, cn_before[k]) for k, v in cn.controlnet.state_dict().items())
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in cn.controlnet.parameters()}
    assert count_parameters(ema._average_model.module) == count_parameters(cn.controlnet)
    path = tmp_path / "cn.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("controlnet.") for k in ckpt["state_dict"])
    assert set(ckpt["state_dict"]) == {f"controlnet.{k}" for k in cn.controlnet.state_dict()}
    assert ckpt["hyper_parameters"]["base_sha256"] == cn.base.lit_edify_sha256
    loaded = load_module(path)
    assert isinstance(loaded, ControlNetModule) and loaded.base is cn.base
    assert all(torch.equal(v, ckpt["state_dict"][f"controlnet.{k}"]) for k, v in loaded.controlnet.state_dict().items())


def test_hash_mismatch_unknown_hint_and_bad_hints_are_clear_errors(base_ckpt, tiny_base_kwargs, tmp_path):
    cn = ControlNetModule(base_ckpt, hint="canny").eval()
    with pytest.raises(BaseMismatchError, match=f"sha256 {cn.base.lit_edify_sha256}.*sha256 {'0' * 64}.*trained on"):
        ControlNetModule(base_ckpt, hint="canny", base_sha256="0" * 64)
    torch.manual_seed(5)
    other = BaseModel(**flat(**tiny_base_kwargs))
    with pytest.raises(BaseMismatchError, match="pass the base checkpoint it was trained on"):
        controlled_text_to_image(other, ["a red circle"], [(cn, torch.zeros(1, 1, 16, 16), 1.0)], steps=1)
    with pytest.raises(ValueError, match=r"unknown hint type 'sketch'; choose one of \['canny', 'depth'"):
        ControlNetModule(base_ckpt, hint="sketch")
    x, s, ctx, mask, _ = inputs(cn)
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 16\) to match the image.*got \(2, 3, 16, 16\); give a hint "
                                         r"with 1 channel"):
        cn.denoise(x, s, ctx, mask, hint=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"got \(2, 1, 8, 8\).*resized to the image size"):
        cn.denoise(x, s, ctx, mask, hint=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"hint 0 \(canny\) must be \(1, 1, 16, 16\).*got \(1, 1, 32, 32\)"):
        controlled_text_to_image(cn.base, ["a red circle"], [(cn, torch.zeros(1, 1, 32, 32), 1.0)], steps=1)
    with pytest.raises(ValueError, match="ControlNet checkpoint; base_ckpt must be a base"):
        ControlNetModule(save_module(cn, tmp_path / "cn.ckpt"))


def test_controlled_sampling_base_alone_and_through_both_plans(base_ckpt, tiny_base_kwargs):
    cn = ControlNetModule(base_ckpt, hint="depth").eval()
    randomize_projections(cn)
    torch.manual_seed(0)
    kw = {**tiny_base_kwargs, "resolution": 32, "unet_overrides": {**tiny_base_kwargs["unet_overrides"],
                                                                    "pos_embed_size": 8}}
    up = Upsampler(**flat(**kw, factor=2, band_factors=[2], band_cutoffs=[2.0], band_starts=[0.25], sigma_max=2.0)).eval()
    hint = torch.rand(2, 1, 16, 16)
    y = cn.generate(["a red circle", "a blue square"], hint=hint, steps=2)
    assert y.shape == (2, 3, 16, 16) and y.abs().max() <= 1
    for plan in ("cascade", "switch"):
        z = controlled_text_to_image(cn.base, ["a red circle", "a blue square"], [(cn, hint, 0.8)], upsampler=up,
                                     plan=plan, steps=2, upsampler_steps=2)
        assert z.shape == (2, 3, 32, 32) and torch.isfinite(z).all()
    plain = controlled_text_to_image(cn.base, ["a red circle"], [(cn, hint[:1], 0.0)], steps=2)
    from lit_edify.pipelines.text2image import text_to_image
    assert torch.equal(plain, text_to_image(cn.base, ["a red circle"], steps=2))  # weight 0 == the base


def test_paper_scale_controlnet_builds_on_the_meta_device():
    with torch.device("meta"):
        unet = build_unet("base2.7b", use_checkpoint=True)
        cn = ControlNet(unet, hint_channels=7)
    n_unet, n_cn = count_parameters(unet), count_parameters(cn)
    print(f"base2.7b U-Net {n_unet / 1e9:.3f} B, inpainting ControlNet {n_cn / 1e9:.3f} B parameters")
    assert all(p.is_meta for p in cn.parameters())
    assert 0.3 * n_unet < n_cn < 0.6 * n_unet  # encoder + middle copies: about half of the U-Net
    assert len(cn.zero_convs) == len(unet.enc) + 1 and cn.use_checkpoint
    copy.deepcopy(cn)  # EMA copies of it also build on meta


@pytest.mark.parametrize("hint", ["canny", "depth", "inpaint"])
def test_recipes_pair_model_and_data_hints_and_paper_scale_keeps_the_base_batch(hint):
    import yaml

    root = __import__("pathlib").Path(__file__).resolve().parents[1] / "recipes"
    base = yaml.safe_load((root / "base256.yaml").read_text())
    for path in (root / f"controlnet_{hint}.yaml", root / "tiny" / f"controlnet_{hint}.yaml"):
        cfg = yaml.safe_load(path.read_text())
        model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
        assert cfg["model"]["class_path"] == "lit_edify.modules.controlnet.ControlNetModule"
        assert model["hint"] == data["hint"] == hint and model["base_ckpt"]
    paper = yaml.safe_load((root / f"controlnet_{hint}.yaml").read_text())
    assert paper["trainer"]["precision"] == "bf16-mixed"
    inner = paper["data"]["init_args"]["data"]["init_args"]
    for key in ("batch_size", "resolution", "multiple", "aspects"):
        assert inner[key] == base["data"]["init_args"][key]
    for key in ("devices", "num_nodes"):
        assert paper["trainer"][key] == base["trainer"][key]


def test_sample_cli_with_controls(base_ckpt, tmp_path, capsys, cli_error):
    from PIL import Image

    from lit_edify.cli import main

    canny_cn, inpaint_cn = ControlNetModule(base_ckpt, hint="canny"), ControlNetModule(base_ckpt, hint="inpaint")
    randomize_projections(canny_cn), randomize_projections(inpaint_cn)
    c1, c2 = save_module(canny_cn, tmp_path / "canny.ckpt"), save_module(inpaint_cn, tmp_path / "inpaint.ckpt")
    edges, mask = Image.new("L", (40, 40)), Image.new("L", (40, 40))
    edges.paste(255, (10, 10, 30, 11)), mask.paste(255, (5, 5, 20, 20))
    edges.save(tmp_path / "edges.png"), mask.save(tmp_path / "mask.png")
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "image.png")
    common = ["sample", "--ckpt", base_ckpt, "--prompt", "a red circle", "--steps", "2", "--out", str(tmp_path / "o")]
    assert main(common + ["--controlnet-ckpt", c1, "--control", f"canny={tmp_path / 'edges.png'}",
                          "--controlnet-ckpt", c2, "--control", f"inpaint={tmp_path / 'image.png'}",
                          "--mask", str(tmp_path / "mask.png"), "--task", "replace", "--control-weight", "0.8"]) == 0
    assert Image.open(tmp_path / "o" / "000.png").size == (16, 16)
    with pytest.raises(SystemExit):
        main(common + ["--control", f"canny={tmp_path / 'edges.png'}"])  # no --controlnet-ckpt
    assert "give one --controlnet-ckpt per --control" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(common + ["--controlnet-ckpt", c2, "--control", f"inpaint={tmp_path / 'image.png'}", "--mask",
                       str(tmp_path / "mask.png"), "--task", "fill"])
    assert "--task 'fill' is unknown; choose one of ['replace', 'inpaint', 'outpaint']" in capsys.readouterr().err
    err = cli_error(common + ["--controlnet-ckpt", c2, "--control", f"canny={tmp_path / 'edges.png'}"])
    assert "ValueError" in err and "paired with a 'inpaint' ControlNet" in err


@pytest.mark.parametrize("opponent,pooled", [(False, False), (True, False), (False, True)])
def test_controlnet_features_are_the_base_encoder_features_when_the_hint_is_zero(opponent, pooled):
    """Identity projections + zero hint: the residuals are exactly the base's skips and middle output, so the
    copies (noise embedding with its pooled-context term, conv_in, positional encoding, encoder, middle, and the
    colour basis the base's input is in) are wired as in the base."""
    torch.manual_seed(0)
    unet = build_unet("tiny", model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                      head_dim=16, context_dim=32, pos_embed_size=4, opponent_colour=opponent, pooled_context=pooled)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cn = ControlNet(unet, hint_channels=1)
    with torch.no_grad():
        for conv in (*cn.zero_convs, cn.mid_out):
            conv.weight.copy_(torch.eye(conv.out_channels)[:, :, None, None])
    feats = []
    hooks = [m.register_forward_hook(lambda m, i, o: feats.append(o)) for m in (unet.conv_in, *unet.enc, unet.mid[-1])]
    x, c, ctx = torch.randn(2, 3, 16, 16), torch.tensor([0.1, -0.5]), torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        unet(x, c, ctx, mask)
        res = cn(x, c, ctx, mask, torch.zeros(2, 1, 16, 16))
    for h in hooks:
        h.remove()
    pos = torch.nn.functional.interpolate(unet.pos_embed, size=feats[0].shape[-2:], mode="bilinear")
    want = [feats[0] + pos, *feats[1:]]  # skips, then the middle output
    assert len(res) == len(want) == len(unet.enc) + 2
    assert all(torch.allclose(r, w, atol=1e-5) for r, w in zip(res, want))


def test_known_weight_weights_the_pixels_the_inpainting_mask_keeps(base_ckpt):
    """With known_weight k the per-sample loss is lambda(sigma) * (SE over generated pixels + k * SE over kept
    pixels) / (generated + k * kept values), the mask taken from the inpainting control input; k = 1 and a dropped
    (all-zero) hint give the plain loss; other hint types refuse k != 1."""
    from lit_edify.data_modules.hints import inpaint_control
    from lit_edify.diffusion.edm import loss_weight, sample_sigmas
    from lit_edify.diffusion.laplacian import forward_process

    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    keep_mask = torch.zeros(2, 1, 16, 16)
    keep_mask[0, :, 4:12, 4:12] = 1
    keep_mask[1, :, :, :5] = 1
    hint = inpaint_control(image, keep_mask, ["inpaint", "outpaint"])
    batch = {"image": image, "caption": ["a red circle", "a blue square"], "hint": hint}
    losses, first = {}, None
    for k in (1.0, 4.0):
        cn = ControlNetModule(base_ckpt, hint="inpaint", p_drop_hint=0.0, known_weight=k).eval()
        randomize_projections(cn)
        first = first or cn
        cn.controlnet.load_state_dict(first.controlnet.state_dict())  # the same ControlNet for both weights
        for b in ({**batch}, {**batch, "hint": torch.zeros_like(hint)}):
            torch.manual_seed(3)  # same sigmas and noise for every variant
            with torch.no_grad():
                loss, sigma = cn.diffusion_loss(b)
            losses[k, b["hint"].abs().sum().item() > 0] = loss
        # the same draw by hand: the denoiser output against x0, weighted from the mask itself
        torch.manual_seed(3)
        with torch.no_grad():
            ctx, m = cn._training_conditions(batch)
            nz = cn.cfg.noise
            s = sample_sigmas(2, nz.p_mean, nz.p_std, nz.sigma_min, nz.sigma_max)
            torch.testing.assert_close(s, sigma)
            x = forward_process(image, s, cn.schedule)
            sq = (cn.denoise(x, s, ctx, m, hint=hint) - image).square()
        gen, kept = keep_mask.expand_as(sq), 1 - keep_mask.expand_as(sq)
        expect = (sq * gen).flatten(1).sum(1) + k * (sq * kept).flatten(1).sum(1)
        expect = loss_weight(s, cn.sigma_data) * expect / (gen.flatten(1).sum(1) + k * kept.flatten(1).sum(1))
        torch.testing.assert_close(losses[k, True], expect, rtol=1e-5, atol=0)
    assert not torch.allclose(losses[4.0, True], losses[1.0, True])
    assert torch.equal(losses[4.0, False], losses[1.0, False])  # a constant weight of 4 scales both sums exactly
    with pytest.raises(ValueError, match="no mask: leave it at 1"):
        ControlNetModule(base_ckpt, hint="canny", known_weight=2.0)
    with pytest.raises(ValueError, match="known_weight must be > 0"):
        ControlNetModule(base_ckpt, hint="inpaint", known_weight=0.0)
