"""Personalization (report Sec. 7): parameter selection and its share of the paper U-Nets, frozen weights through
fit, the exported file (contents, size, base hash), applying it, prior preservation's cache and bad input."""
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_edify.modules.base import BaseModel
from lit_edify.modules.controlnet import BaseMismatchError
from lit_edify.modules.personalize import Personalize
from lit_edify.nn.presets import build_unet
from lit_edify.personalization import (PersonalizationError, apply_personalization, read_personalization,
                                       select_parameters, trainable_fraction)
from lit_edify.pipelines.checkpoints import load_module
from conftest import save_module


def _base(seed):
    torch.manual_seed(seed)
    base = BaseModel(**TINY)
    with torch.no_grad():  # non-zero output layers: the denoiser (and its loss gradient) is not trivial
        for p in base.net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return base


#: the smallest base that exercises every code path (16 px, narrow U-Net)
TINY = dict(net={"preset": "tiny", "overrides": {"model_channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1,
                                                 "attention_levels": (1,), "head_dim": 16, "context_dim": 32,
                                                 "pos_embed_size": 4}},
            noise={"resolution": 16}, conditioning={"max_text_length": 16}, sampling={"steps": 4})


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    return save_module(_base(0), tmp_path_factory.mktemp("base") / "base.ckpt")


@pytest.mark.parametrize("preset, lo, hi", [("base2.7b", 0.028, 0.0282), ("upsampler1k1.6b", 0.0303, 0.0304)])
def test_default_selection_is_about_3_percent_of_the_paper_unets(preset, lo, hi):
    with torch.device("meta"):
        net = build_unet(preset)
    frac = trainable_fraction(net, ["crossattn_kv"])
    assert 0.025 <= frac <= 0.035 and lo <= frac <= hi
    # closed form: each cross-attention block's kv is a Linear(context_dim -> 2 C) with bias
    names = select_parameters(net, "crossattn_kv")
    params = dict(net.named_parameters())
    ctx = net.context_dim
    widths = [params[n].shape[0] // 2 for n in names if n.endswith("kv.weight")]
    assert all(params[n].shape[1] == ctx for n in names if n.endswith("kv.weight"))
    assert sum(params[n].numel() for n in names) == sum(2 * c * ctx + 2 * c for c in widths)
    assert set(names) == {n for n in params if ".attn.kv." in n}


def test_pattern_matching_nothing_is_a_clear_error():
    net = build_unet("tiny")
    with pytest.raises(PersonalizationError, match="match no parameter"):
        select_parameters(net, [r"attn2\.to_k"])
    with pytest.raises(PersonalizationError, match="not a regular expression"):
        select_parameters(net, ["attn.(kv"])


def _batches(n_images=4, res=16, steps=3):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n_images, 3, res, res, generator=g) * 2 - 1
    items = [{"image": images[i], "caption": f"a zorb number {i}"} for i in range(n_images)]
    return DataLoader(items * steps, batch_size=n_images)


def _fit(module, steps=3, **kw):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **kw)
    trainer.fit(module, train_dataloaders=_batches(steps=steps))
    return trainer


def test_fit_changes_only_the_selected_tensors(base_ckpt, tmp_path):
    base = load_module(base_ckpt)
    module = Personalize(base_ckpt, concepts=["zorb"], optim={"lr": 1e-2})
    assert module.hparams.base_sha256 and module.trainable_names
    assert all(".attn.kv." in n for n in module.trainable_names)
    _fit(module)
    before, after = base.state_dict(), module.state_dict()
    assert set(before) == set(after)  # same names as the base: a personalization file maps onto it
    trained = {f"net.{n}" for n in module.trainable_names}
    for name, t in before.items():
        if name in trained:
            assert not torch.equal(t, after[name]), f"{name} did not train"
        else:
            assert torch.equal(t, after[name]), f"frozen {name} changed"

    # export: only the trained tensors, size ~ parameters x 4 bytes, tied to the base's hash
    from lit_edify.commands.personalize import main as personalize_main

    ckpt = tmp_path / "run.ckpt"
    save_module(module, ckpt)
    out = tmp_path / "zorb.safetensors"
    assert personalize_main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    tensors, meta = read_personalization(out)
    assert set(tensors) == trained and meta["concepts"] == ["zorb"] and meta["patterns"] == ["crossattn_kv"]
    assert meta["base_sha256"] == module.hparams.base_sha256
    payload = sum(t.numel() for t in tensors.values()) * 4
    assert payload <= out.stat().st_size <= payload + 4096

    # apply: the base becomes the finetuned model, bit for bit, and keeps its identity for ControlNets
    sha = module.hparams.base_sha256
    apply_personalization(base, out)
    assert all(torch.equal(t, after[k]) for k, t in base.state_dict().items())
    assert base.lit_edify_sha256 == sha
    with pytest.raises(PersonalizationError, match="already has"):
        apply_personalization(base, out)


def test_file_for_another_base_or_corrupt_is_refused(base_ckpt, tmp_path, cli_error):
    module = Personalize(base_ckpt, concepts=["zorb"])
    ckpt = save_module(module, tmp_path / "run.ckpt")
    from lit_edify.commands.personalize import export_personalization

    out = tmp_path / "zorb.safetensors"
    export_personalization(ckpt, out)
    other = _base(1)
    with pytest.raises(BaseMismatchError, match="trained on a base with weights sha256"):
        apply_personalization(other, out)
    other_ckpt = save_module(other, tmp_path / "other.ckpt")
    line = cli_error(["sample", "--ckpt", other_ckpt, "--prompt", "a zorb", "--personalization", str(out),
                      "--out", str(tmp_path / "s")])
    assert "BaseMismatchError" in line and "sha256" in line
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(PersonalizationError, match="truncated or corrupt"):
        apply_personalization(load_module(base_ckpt), bad)
    line = cli_error(["sample", "--ckpt", base_ckpt, "--prompt", "a zorb", "--personalization", str(bad),
                      "--out", str(tmp_path / "s")])
    assert "PersonalizationError" in line and "corrupt" in line
    with pytest.raises(PersonalizationError, match="not a lit-edify personalization file"):
        from lit_edify.pipelines.checkpoints import export_safetensors
        export_safetensors(base_ckpt, tmp_path / "model.safetensors")
        read_personalization(tmp_path / "model.safetensors")


def test_checkpoint_reloads_and_refuses_another_base(base_ckpt, tmp_path):
    module = Personalize(base_ckpt, concepts=["zorb"])
    with torch.no_grad():
        module.net.get_parameter(module.trainable_names[0]).add_(1.0)
    ckpt = save_module(module, tmp_path / "run.ckpt")
    again = load_module(ckpt)
    assert isinstance(again, Personalize)
    assert all(torch.equal(t, again.state_dict()[k]) for k, t in module.state_dict().items())
    with pytest.raises(BaseMismatchError):
        Personalize(base_ckpt, base_sha256="0" * 64)


def test_prior_images_are_generated_once_cached_and_mixed_at_the_ratio(base_ckpt, tmp_path):
    cache = tmp_path / "prior.safetensors"
    kw = dict(prior_prompts=["a red circle", "a blue square"], prior_images=3, prior_ratio=0.5, prior_steps=2,
              prior_cache=str(cache))
    module = Personalize(base_ckpt, **kw)
    images, captions = module.prior_images()
    assert cache.is_file() and images.shape == (3, 3, 16, 16) and captions == ["a red circle", "a blue square",
                                                                                 "a red circle"]
    # what the frozen model generates for those prompts (uint8-rounded by the cache)
    direct = module.generate(captions[:2], seed=0, steps=2)
    assert (images[:2] - direct).abs().max() <= 1 / 127.5 + 1e-6
    again, _ = Personalize(base_ckpt, **kw).prior_images()  # read back, same values
    assert torch.equal(again, images)
    module._prior = (images, captions)
    batch = {"image": torch.zeros(4, 3, 16, 16), "caption": ["a zorb"] * 4}
    mixed = module._with_prior(batch)
    assert mixed["image"].shape[0] == 4 + math.ceil(0.5 * 4) and mixed["caption"][:4] == ["a zorb"] * 4
    assert set(mixed["caption"][4:]) <= {"a red circle", "a blue square"}
    # one fit step with the prior trains and leaves the frozen tensors alone
    before = {k: v.clone() for k, v in module.state_dict().items()}
    _fit(module, steps=1)
    frozen = [k for k in before if k[4:] not in module.trainable_names]
    assert all(torch.equal(before[k], module.state_dict()[k]) for k in frozen)


def test_sample_applies_the_file_with_a_frozen_controlnet_and_leaves_the_cached_base_alone(base_ckpt, tmp_path):
    import numpy as np
    from PIL import Image

    from lit_edify.cli import main
    from lit_edify.modules.controlnet import ControlNetModule
    from lit_edify.personalization import write_personalization

    module = Personalize(base_ckpt, concepts=["zorb"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in module.trainable_names:
            p = module.net.get_parameter(n)
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    file = tmp_path / "zorb.safetensors"
    write_personalization(file, module.trained_state(), base_sha256=module.hparams.base_sha256, concepts=["zorb"],
                          patterns=["crossattn_kv"])
    cn = ControlNetModule(base_ckpt, hint="canny")
    with torch.no_grad():
        for p in cn.controlnet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    cn_ckpt = save_module(cn, tmp_path / "canny.ckpt")
    edges = np.zeros((16, 16, 3), np.uint8)
    edges[4, 4:12] = edges[11, 4:12] = edges[4:12, 4] = edges[4:12, 11] = 255
    Image.fromarray(edges).save(tmp_path / "edges.png")
    args = ["sample", "--ckpt", base_ckpt, "--prompt", "a red zorb", "--control", f"canny={tmp_path / 'edges.png'}",
            "--controlnet-ckpt", cn_ckpt, "--steps", "3", "--out"]
    outs = []
    for name, extra in (("a", []), ("b", ["--personalization", str(file)]), ("c", [])):
        assert main(args + [str(tmp_path / name)] + extra) == 0
        outs.append(np.asarray(Image.open(tmp_path / name / "000.png"), dtype=np.int16))
    assert np.array_equal(outs[0], outs[2])  # the base cached by the first run is still the plain base
    assert np.abs(outs[0] - outs[1]).max() > 0  # the finetuned key/value projections change the image
