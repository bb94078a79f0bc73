"""Classifier-accuracy adherence: a small CNN trained on real class-captioned images, cached."""

import pytest
import torch

from lit_edify.metrics import GeneratorEvaluator, load_or_train_classifier, train_caption_classifier
from lit_edify.metrics.synthetic import draw_shapes, random_captions


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    caps = random_captions(360, seed=0)
    return draw_shapes(caps, 64, seed=0), caps


FAST = {"width": 16, "steps": 160, "batch_size": 16, "seed": 0}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("classifier_cache")


@pytest.fixture(scope="module")
def clf(data, cache_dir):
    clf, from_cache = load_or_train_classifier(*data, cache_dir, **FAST)
    assert not from_cache
    return clf


def test_classifier_learns_the_classes(clf, data):
    assert len(clf.classes) == 12 and clf.heldout_accuracy > 0.9
    caps = random_captions(60, seed=1)
    good = draw_shapes(caps, 64, seed=1)  # unseen images, resized to the classifier's input
    assert clf.accuracy(good, caps) > 0.9
    wrong = [caps[(i + 1) % len(caps)] for i in range(len(caps))]
    assert clf.accuracy(good, [w if w != c else "a red circle" if c != "a red circle" else "a blue square"
                               for w, c in zip(wrong, caps)]) < 0.2
    with pytest.raises(ValueError, match="not classes"):
        clf.accuracy(good[:1], ["a purple hexagon"])


def test_classifier_cache_hits_for_same_data_only(tmp_path, data):
    images, caps = data[0][:200], data[1][:200]
    first, hit1 = load_or_train_classifier(images, caps, tmp_path, width=8, steps=20)
    second, hit2 = load_or_train_classifier(images, caps, tmp_path, width=8, steps=20)
    assert (hit1, hit2) == (False, True)
    assert second.classes == first.classes and second.heldout_accuracy == first.heldout_accuracy
    probe = draw_shapes(random_captions(16, seed=7), 32, seed=7)
    with torch.no_grad():
        assert torch.allclose(second.model(probe), first.model(probe), atol=1e-5)
    _, hit3 = load_or_train_classifier(images, caps, tmp_path, width=8, steps=30)  # other hyper-parameters
    _, hit4 = load_or_train_classifier(images[:150], caps[:150], tmp_path, width=8, steps=20)  # other data
    assert (hit3, hit4) == (False, False)


def test_rejects_data_that_is_not_class_captioned(data):
    with pytest.raises(ValueError, match="class-captioned"):
        train_caption_classifier(data[0][:20], [f"caption {i}" for i in range(20)], max_classes=10)


def test_evaluator_classifier_adherence_separates_obeying_from_ignoring_generators(clf, cache_dir, data):
    def obeying(captions, *, seed=0, **_):
        return draw_shapes(captions, 64, seed=1000 + seed)

    def ignoring(captions, *, seed=0, **_):  # draws the right number of images of random classes
        return draw_shapes(random_captions(len(captions), seed=2000 + seed), 64, seed=seed)

    ref = [{"image": data[0][i : i + 100], "caption": data[1][i : i + 100]} for i in range(0, 360, 100)]
    # same images, captions and hyper-parameters as the fixture: the evaluator loads its cached classifier
    ev = GeneratorEvaluator(ref, fid=False, kid=False, adherence="classifier", cache_dir=cache_dir,
                            classifier_kwargs=FAST)
    good = ev.evaluate(obeying, num_images=48, batch_size=16)
    bad = ev.evaluate(ignoring, num_images=48, batch_size=16)
    assert set(good) == {"num_images", "classifier_accuracy", "classifier_real_accuracy"}
    assert good["classifier_real_accuracy"] > 0.85
    assert good["classifier_accuracy"] > 0.85 and bad["classifier_accuracy"] < 0.35
    assert len(list(cache_dir.glob("classifier-*.safetensors"))) == 1
    assert good["classifier_real_accuracy"] == clf.heldout_accuracy


def test_evaluator_shapes_judge_over_mixed_aspects():
    from lit_edify.data_modules.shapes import ShapesDataset, evaluation_prompts

    prompts = evaluation_prompts(n=8, seed=0, split="test", aspects=("1:1", "16:9"))
    scenes = {p["caption"]: p["scene"] for p in prompts}
    assert len(scenes) == len(prompts)

    def renderer(captions, *, aspect="1:1", seed=0, **_):  # draws exactly the prompted scene
        images = torch.stack([ShapesDataset.render(scenes[c], 32)["image"] for c in captions])
        assert all(scenes[c].aspect == aspect for c in captions)
        return images

    def recolouring(captions, **kw):  # the right scenes with the colour channels rotated
        return renderer(captions, **kw)[:, [1, 2, 0]]

    ref = torch.zeros(2, 3, 32, 32)  # FID/KID are off: the reference set is not used
    ev = GeneratorEvaluator(ref, fid=False, kid=False, adherence="shapes")
    good = ev.evaluate(renderer, prompts, batch_size=3)
    bad = ev.evaluate(recolouring, prompts, batch_size=3)
    assert good["adherence/all"] == 1.0 and good["adherence/color"] == 1.0 and good["num_images"] == 8
    assert bad["adherence/color"] < 0.5 and bad["adherence/shape"] == 1.0
