"""Personalization data (report Sec. 7): the shapes concepts "zorb" (shape) and "vexa" (hatch style), never in the base
data; the judge reads them; concept folders through the image-text DataModule, with clear errors for 0 or 1 image."""
import math
import shutil

import numpy as np
import pytest
import torch

from lit_edify.data_modules.concepts import (CONCEPTS, ConceptFolderDataModule, concept_scenes,
                                             heldout_concept_prompts, write_concept_folder)
from lit_edify.data_modules.judge import HATCH_THRESHOLD, hatch_amplitude, judge_image
from lit_edify.data_modules.shapes import ShapesDataset
from lit_edify.data_modules.shapes_render import (HATCH_SPACING, HATCH_WIDTH, OBJECT_COLORS, OUTLINE_COLOR, SHAPE_AREA,
                                                  SHAPES, ZORB_ARM, ShapeObject, ShapeScene, caption_long, render,
                                                  sample_scene)


def _scene(shape, style=None, size=0.3, color="red", media_type=1):
    return ShapeScene("1:1", "grey", 1, 0, media_type, (ShapeObject(color, shape, 0.5, 0.5, size),), style=style)


def test_zorb_is_a_plus_of_the_stated_area():
    out = render(_scene("zorb"), 256)
    area = out["mask"].sum() / 256**2
    assert SHAPE_AREA["zorb"] == pytest.approx(8 * ZORB_ARM - 4 * ZORB_ARM**2)
    assert area == pytest.approx(SHAPE_AREA["zorb"] * 0.3**2, rel=0.02)
    m = out["mask"][0].astype(bool)
    c, arm, half = 128, int(ZORB_ARM * 0.3 * 256), int(0.3 * 256)
    assert m[c, c - half + 2] and m[c - half + 2, c] and not m[c - arm - 4, c - arm - 4]  # arms in, corners out


def test_vexa_hatch_darkens_the_stated_share_of_the_object():
    plain, hatched = (render(_scene("square", style, size=0.4, media_type=1), 256)["image"] for style in (None, "vexa"))
    inside = render(_scene("square", size=0.36), 256)["mask"][0].astype(bool)  # away from the outline
    dark = np.abs((hatched[:, inside] + 1) * 127.5 - np.asarray(OUTLINE_COLOR)[:, None]).max(0) < 1
    assert dark.mean() == pytest.approx(HATCH_WIDTH / HATCH_SPACING, abs=0.02)
    outside = ~render(_scene("square", size=0.44), 256)["mask"][0].astype(bool)
    assert np.array_equal(plain[:, outside], hatched[:, outside])  # the background is unchanged


def test_base_data_never_shows_the_concepts():
    assert "zorb" not in SHAPES and "vexa" not in caption_long(_scene("circle"))
    ds = ShapesDataset(64, split="train", p_two_shapes=0.5)
    for i in range(64):
        scene = ds.scene(i)
        assert scene.style is None and all(o.shape in SHAPES for o in scene.objects)
        assert "zorb" not in ds[i]["caption"] and "vexa" not in ds[i]["caption"]
    assert caption_long(_scene("circle", "vexa")).endswith(", in vexa style")


def test_hatch_amplitude_reads_the_stripe_component():
    h = w = 32
    y, x = np.mgrid[0:h, 0:w] + 0.5
    u = (x + y) / (32 * math.sqrt(2))
    region = np.ones((h, w), bool)
    wave = 100 + 40 * np.cos(2 * math.pi * u / HATCH_SPACING + 0.7)
    assert hatch_amplitude(wave, region) == pytest.approx(40, rel=0.05)
    assert hatch_amplitude(np.full((h, w), 90.0), region) == pytest.approx(0, abs=1e-9)
    assert hatch_amplitude(100 + 0.5 * (x + y), region) < 3  # photographic shading is not a hatch


def test_judge_reads_the_new_shape_and_style_on_renders():
    hits = {"zorb": [], "vexa": [], "plain_style": [], "plain_shape": []}
    for i in range(96):
        rng = np.random.default_rng([3, i])
        color = list(OBJECT_COLORS)[i % 6]
        shape = (SHAPES + ("zorb",))[i % 4]
        style = "vexa" if (i // 4) % 2 else None
        got = judge_image(render(sample_scene(rng, "1:1", [(color, shape)], style=style), 32, multiple=16)["image"],
                          concepts=True)
        if shape == "zorb" and style is None:
            hits["zorb"].append(got["shape"] == "zorb")
        if style:
            hits["vexa"].append(got["style"] == "vexa")
        else:
            hits["plain_style"].append(got["style"] == "none")
            if shape != "zorb":
                hits["plain_shape"].append(got["shape"] == shape)
    assert np.mean(hits["zorb"]) >= 0.95 and np.mean(hits["vexa"]) >= 0.95
    assert np.mean(hits["plain_style"]) >= 0.98 and np.mean(hits["plain_shape"]) >= 0.95
    assert HATCH_THRESHOLD > 0
    plain = judge_image(render(_scene("circle"), 32)["image"])  # without concepts: the base judge, unchanged
    assert "style" not in plain and plain["shape"] == "circle"


def test_heldout_prompts_avoid_every_concepts_training_colours_and_backgrounds():
    for concept, (colors, backgrounds, _) in CONCEPTS.items():
        train = concept_scenes(concept, 8)
        assert {s.objects[0].color for s in train} == set(colors)
        assert {s.background for s in train} == set(backgrounds)
        ps = heldout_concept_prompts(concept, 16)
        assert len(ps) == 16 and all(concept in p["caption"] for p in ps)
        for other_colors, other_backgrounds, _ in CONCEPTS.values():  # no colour or background hints a concept
            assert not {p["color"] for p in ps} & set(other_colors)
            assert not {p["background"] for p in ps} & set(other_backgrounds)


def test_concept_folder_loads_and_refuses_0_or_1_images(tmp_path):
    paths = write_concept_folder(tmp_path / "c", ["zorb"], n=8)
    assert len(paths) == 8 and all(p.with_suffix(".txt").read_text().strip().find("zorb") > 0 for p in paths)
    dm = ConceptFolderDataModule(str(tmp_path / "c"), batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and all("zorb" in c for c in batch["caption"])
    src = torch.from_numpy(render(concept_scenes("zorb", 8)[0], 32, multiple=16)["image"])
    assert any((img - src).abs().max() <= 1 / 127.5 + 1e-6 for img in batch["image"])  # the PNGs, as rendered
    (tmp_path / "one").mkdir()
    shutil.copy(paths[0], tmp_path / "one")
    shutil.copy(paths[0].with_suffix(".txt"), tmp_path / "one")
    (tmp_path / "empty").mkdir()
    for folder, why in (("one", "has 1 usable"), ("empty", "no usable")):
        with pytest.raises(ValueError, match=why):
            ConceptFolderDataModule(str(tmp_path / folder)).setup("fit")
    with pytest.raises(ValueError, match="not found"):
        ConceptFolderDataModule(str(tmp_path / "missing"))
