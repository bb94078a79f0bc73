"""Base and upsampler LightningModules, the mixin's loss / conditioning / sampling, and the 2-stage pipeline."""
import pytest
import torch

from lit_edify.modules.config import flat
from lit_edify.data_modules.buckets import ASPECT_RATIOS
from lit_edify.diffusion.laplacian import down
from lit_edify.modules.base import BaseModel
from lit_edify.modules.upsampler import Upsampler
from lit_edify.pipelines.text2image import text_to_image


@pytest.fixture(scope="module")
def base(tiny_base_kwargs):
    torch.manual_seed(0)
    return BaseModel(**flat(**tiny_base_kwargs))


@pytest.fixture(scope="module")
def upsampler(tiny_base_kwargs):
    torch.manual_seed(0)
    kw = {**tiny_base_kwargs, "resolution": 32, "unet_overrides": {**tiny_base_kwargs["unet_overrides"],
                                                                    "pos_embed_size": 8}}
    return Upsampler(**flat(**kw, factor=2, band_factors=[2], band_cutoffs=[2.0], band_starts=[0.25], sigma_max=2.0))


def batch(n=4, side=16):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(n, 3, side, side, generator=g) * 2 - 1, "caption": ["a red circle"] * n,
            "pitch": torch.zeros(n, dtype=torch.long), "dof": torch.ones(n, dtype=torch.long),
            "media_type": torch.full((n,), -1)}


def test_training_reduces_the_loss_on_a_fixed_batch(base):
    b = batch()
    opt = base.configure_optimizers()["optimizer"]
    base.train()
    with base.seeded(0):
        first = base.diffusion_loss(b)[0].mean().item()
    for _ in range(20):
        with base.seeded(0):
            loss = base.diffusion_loss(b)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_loss_weights_scale_the_per_sample_loss(base):
    b = batch()
    plain = base.training_step(b, 0)
    weighted = base.training_step({**b, "loss_weight": torch.full((4,), 2.0)}, 0)
    assert torch.allclose(weighted, 2 * plain)


def test_gradients_reach_the_denoiser_but_not_the_text_encoder(base):
    base.zero_grad()
    base.training_step(batch(), 0).backward()
    trainable = [n for n, p in base.named_parameters() if p.requires_grad]
    assert all(base.get_parameter(n).grad is not None for n in trainable)
    assert not any(p.requires_grad for p in base._text_encoder.parameters())
    assert not any(k.startswith("_text_encoder") for k in base.state_dict())


def test_unconditional_context_differs_from_the_conditional_one(base):
    base.eval()
    c, _ = base.encode_conditions(["a red circle"], [0], [1], [0], drop=False)
    u, _ = base.encode_conditions(["a red circle"], [0], [1], [0], drop=True)
    u2, _ = base.encode_conditions(["a blue square"], [2], [0], [1], drop=True)
    assert not torch.allclose(c, u) and torch.allclose(u, u2)


@pytest.mark.parametrize("aspect", sorted(ASPECT_RATIOS))
def test_generate_and_both_plans_give_the_right_shape_for_every_aspect(base, upsampler, aspect):
    base.eval(), upsampler.eval()
    h, w = base.image_shape(aspect)
    x = base.generate(["a red circle", "a blue square"], aspect=aspect, steps=2)
    assert x.shape == (2, 3, h, w) and x.abs().max() <= 1
    for plan in ("cascade", "switch"):
        y = text_to_image(base, ["a red circle"], upsampler=upsampler, plan=plan, aspect=aspect, steps=2,
                          upsampler_steps=2)
        assert y.shape == (1, 3, 2 * h, 2 * w)


def test_generate_is_deterministic_in_the_seed(base):
    base.eval()
    a = base.generate(["a red circle"], seed=3, steps=3)
    b = base.generate(["a red circle"], seed=3, steps=3)
    c = base.generate(["a red circle"], seed=4, steps=3)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_upsample_keeps_the_low_resolution_content_range(upsampler):
    upsampler.eval()
    low = torch.rand(2, 3, 16, 16) * 2 - 1
    out = upsampler.upsample(low, ["a red circle"] * 2, steps=2)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    assert upsampler.reference_low_res(out).shape == low.shape
    with pytest.raises(TypeError, match="low-resolution input"):
        upsampler.generate(["a red circle"])


def test_bad_configuration_is_rejected(tiny_base_kwargs):
    with pytest.raises(ValueError, match="multiples of"):
        BaseModel(**flat(**{**tiny_base_kwargs, "resolution": 18}))
    with pytest.raises(ValueError, match="below the finest band cutoff"):
        BaseModel(**flat(**{**tiny_base_kwargs, "sigma_max": 1.0}))


def test_long_prompts_warn_and_are_truncated(base):
    long = " ".join(["red"] * 200)
    with pytest.warns(UserWarning, match="truncat"):
        tokens, mask = base._text_encoder.encode([long + " unique-suffix-for-cache"])
    assert tokens.shape[1] <= base.cfg.conditioning.max_text_length


def test_down_of_an_image_matches_the_upsampler_reference(upsampler):
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(upsampler.reference_low_res(x), down(x, 2))
