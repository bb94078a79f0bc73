"""Procedural shapes dataset, its DataModule, evaluation prompts and the judge."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lit_edify.data_modules.buckets import ASPECT_RATIOS, BucketBatchSampler, bucket_shape
from lit_edify.data_modules.judge import ATTRIBUTES, adherence, judge_image
from lit_edify.data_modules.shapes import ShapesDataModule, ShapesDataset, evaluation_prompts, pairs_for_split
from lit_edify.data_modules.shapes_render import HELDOUT_PAIRS, HORIZON, OBJECT_COLORS, SHAPES

torch.set_num_threads(1)
FIVE = list(ASPECT_RATIOS)


@pytest.mark.parametrize("aspect", FIVE)
def test_sample_format(aspect):
    ds = ShapesDataset(4, 32, [aspect], seed=1)
    h, w = bucket_shape(aspect, 32, 8)
    s = ds[0]
    for key, ch in (("image", 3), ("depth", 1), ("edge", 1), ("mask", 1)):
        assert s[key].shape == (ch, h, w) and s[key].dtype == torch.float32, key
        assert s[key].min() >= -1 and s[key].max() <= 1, key
    assert set(s["mask"].unique().tolist()) <= {0.0, 1.0}
    assert s["image"].min() < -0.2 and s["image"].max() > 0.2  # not a blank image
    assert s["caption"] in (s["caption_short"], s["caption_long"])
    assert s["caption_short"] == f"a {s['color']} {s['shape']}"
    assert s["caption_long"].startswith("a ") and s["caption_long"].endswith(f"on a {s['background']} background")
    assert f"{s['color']} {s['shape']}" in s["caption_long"]
    assert s["pitch"] in (0, 1, 2) and s["dof"] in (0, 1) and s["media_type"] in (0, 1)
    assert s["aspect"] == aspect and ds.bucket_of == [aspect] * 4


def test_default_collate_with_bucket_sampler():
    ds = ShapesDataset(20, 32, ["1:1", "16:9", "3:4"], seed=2)
    loader = DataLoader(ds, batch_sampler=BucketBatchSampler(ds.bucket_of, 4, num_replicas=1, rank=0))
    batches = list(loader)
    assert sum(len(b["caption"]) for b in batches) == 20
    for b in batches:
        assert b["image"].ndim == 4 and b["image"].shape[0] == len(b["caption"])
        assert len(set(b["aspect"])) == 1
        assert b["image"].shape[2:] == bucket_shape(b["aspect"][0], 32, 8)
        assert b["pitch"].dtype == torch.int64 and isinstance(b["color"], list)


def test_determinism_and_caption_mixing():
    a, b = ShapesDataset(30, 32, FIVE, seed=3), ShapesDataset(30, 32, FIVE, seed=3)
    for i in (0, 7, 29):
        for key in ("image", "depth", "edge", "mask"):
            assert torch.equal(a[i][key], b[i][key])
        assert a[i]["caption"] == b[i]["caption"]
    assert not torch.equal(a[0]["image"], a[5]["image"])
    assert not torch.equal(a[0]["image"], ShapesDataset(30, 32, FIVE, seed=4)[0]["image"])
    assert a[0]["aspect"] == "1:1" and a[1]["aspect"] == "4:3"
    # caption choice: p_long extremes, and a different mix in another epoch
    assert ShapesDataset(5, p_long=0.0)[2]["caption"] == ShapesDataset(5, p_long=0.0)[2]["caption_short"]
    assert ShapesDataset(5, p_long=1.0)[2]["caption"] == ShapesDataset(5, p_long=1.0)[2]["caption_long"]
    e0 = [a[i]["caption"] == a[i]["caption_long"] for i in range(30)]
    a.set_epoch(1)
    e1 = [a[i]["caption"] == a[i]["caption_long"] for i in range(30)]
    assert e0 != e1 and 5 < sum(e0) < 25


def test_heldout_pairs_never_in_train_and_only_in_heldout():
    assert len(HELDOUT_PAIRS) == 3
    assert len(pairs_for_split("train")) == len(OBJECT_COLORS) * len(SHAPES) - 3
    held = set(HELDOUT_PAIRS)
    for split in ("train", "val", "test"):
        ds = ShapesDataset(300, 32, seed=0, split=split, p_two_shapes=0.5)
        seen = {(o.color, o.shape) for i in range(len(ds)) for o in ds.scene(i).objects}
        assert not seen & held, split
        assert len(seen) == 15  # every other pair does occur
    ho = ShapesDataset(60, 32, split="heldout")
    assert {(ho[i]["color"], ho[i]["shape"]) for i in range(60)} == held
    # each colour and each shape on its own still appears in training
    train_pairs = pairs_for_split("train")
    assert {c for c, _ in train_pairs} == set(OBJECT_COLORS) and {s for _, s in train_pairs} == set(SHAPES)
    # splits are different streams
    assert not torch.equal(ShapesDataset(2, split="val")[0]["image"], ShapesDataset(2, split="test")[0]["image"])


def test_evaluation_prompts():
    p = evaluation_prompts(64, seed=0, split="test", aspects=["1:1", "16:9"])
    assert len(p) == 64 and p == evaluation_prompts(64, seed=0, split="test", aspects=["1:1", "16:9"])
    assert all(p_["caption"].endswith(f"on a {p_['background']} background") for p_ in p)
    assert not {(x["color"], x["shape"]) for x in p} & set(HELDOUT_PAIRS)
    for key, n in (("color", 6), ("shape", 3), ("background", 4), ("pitch", 3), ("dof", 2), ("media_type", 2)):
        counts = Counter(x[key] for x in p)
        assert len(counts) == n and max(counts.values()) - min(counts.values()) <= 64 // n // 2 + 2, key
    h = evaluation_prompts(16, split="heldout")
    assert {(x["color"], x["shape"]) for x in h} == set(HELDOUT_PAIRS)
    with pytest.raises(ValueError, match="split"):
        evaluation_prompts(4, split="train")


def _judge_rates(resolution, aspects, n, **kw):
    ds = ShapesDataset(n * len(aspects), resolution, aspects, split="test", seed=11, **kw)
    ok = Counter()
    for i in range(len(ds)):
        s = ds[i]
        got = judge_image(s["image"])
        ok.update(a for a in ATTRIBUTES if got[a] == s[a])
    return {a: ok[a] / len(ds) for a in ATTRIBUTES}


@pytest.mark.parametrize("resolution", [32, 64])
def test_judge_reads_renders(resolution):
    # measured on 2000 renders per resolution: colour/background/shape/pitch/media 100%, dof >= 99%
    for aspect in FIVE:
        rates = _judge_rates(resolution, [aspect], 24)
        for a in ("color", "background", "shape"):
            assert rates[a] >= 0.99, (aspect, a, rates)
    rates = _judge_rates(resolution, FIVE, 16)
    for a in ("pitch", "dof", "media_type"):
        assert rates[a] >= 0.95, (a, rates)


def test_judge_reads_largest_of_two_shapes():
    rates = _judge_rates(32, FIVE, 12, p_two_shapes=1.0)
    assert rates["color"] >= 0.99 and rates["shape"] >= 0.99 and rates["background"] >= 0.99


def test_judge_tolerates_mild_noise_and_blur():
    ds = ShapesDataset(60, 32, ["1:1", "16:9", "3:4"], split="test", seed=12)
    gen = torch.Generator().manual_seed(0)
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None] / 16).expand(3, 1, 3, 3)
    ok = Counter()
    for i in range(len(ds)):
        s = ds[i]
        x = F.conv2d(F.pad(s["image"][None], (1, 1, 1, 1), mode="replicate"), k, groups=3)[0]
        x = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
        got = judge_image(x)
        ok.update(a for a in ("color", "background", "shape") if got[a] == s[a])
    assert min(ok[a] for a in ("color", "background", "shape")) >= 0.97 * len(ds)


def test_adherence_counts_and_detects_wrong_prompts():
    prompts = evaluation_prompts(12, seed=1, aspects=FIVE)
    images = [ShapesDataset.render(p["scene"], 32)["image"] for p in prompts]
    res = adherence(images, prompts)
    assert res["n"] == 12 and res["color"] == 1.0 and res["shape"] == 1.0 and res["all"] == 1.0
    assert res["color_correct"] == 12
    names = list(OBJECT_COLORS)
    wrong = [dict(p, color=names[(names.index(p["color"]) + 1) % len(names)]) for p in prompts]
    assert adherence(images, wrong)["color"] == 0.0 and adherence(images, wrong)["all"] == 0.0
    same = evaluation_prompts(8, seed=2)
    stacked = torch.stack([ShapesDataset.render(p["scene"], 32)["image"] for p in same])
    assert adherence(stacked, same)["background"] == 1.0
    with pytest.raises(ValueError, match="prompts"):
        adherence(images[:3], prompts)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        judge_image(torch.zeros(1, 32, 32))


def _near(mask: np.ndarray, r: int) -> np.ndarray:
    h, w = mask.shape
    p = np.pad(mask, r)
    return np.any([p[i : i + h, j : j + w] for i in range(2 * r + 1) for j in range(2 * r + 1)], axis=0)


@pytest.mark.parametrize("resolution", [32, 64])
def test_depth_edge_mask_consistent_with_objects(resolution):
    ds = ShapesDataset(10, resolution, FIVE, seed=4, p_two_shapes=0.3)
    for i in range(len(ds)):
        s, scene = ds[i], ds.scene(i)
        mask = s["mask"][0].numpy() > 0.5
        h, w = mask.shape
        area = sum(o.size**2 for o in scene.objects) * min(h, w) ** 2
        assert mask.sum() > 0.4 * area  # each shape covers >= 0.5 size^2 of its box
        boundary = mask & _near(~mask, 1)  # mask pixels touching the background
        edge = s["edge"][0].numpy() > -0.5  # line coverage > 25%
        yh = HORIZON[scene.pitch] * h
        on_horizon = np.abs(np.arange(h)[:, None] + 0.5 - yh) <= 1.0
        assert edge.any() and boundary.any()
        # edges lie on the object outline (within 2 px: the mitred outline pokes ~1 px past a triangle's apex)
        assert np.all(_near(boundary, 2)[edge & ~on_horizon])
        assert _near(edge, 1)[boundary].mean() > 0.95  # and the outline is drawn
        free_cols = ~_near(mask, 2)[on_horizon[:, 0]].any(axis=0)  # horizon not hidden by an object
        assert edge[on_horizon[:, 0]][:, free_cols].any(axis=0).all()
        depth = s["depth"][0].numpy()
        inner = mask & ~_near(~mask, 1)
        assert depth[inner].min() > depth[~_near(mask, 1)].max()  # objects are nearest
        assert depth[: max(1, int(yh) - 1)].min() == pytest.approx(-1.0)  # sky is farthest


def test_render_same_scene_at_upsampler_resolution():
    ds = ShapesDataset(6, 32, FIVE, seed=5)
    for i in range(len(ds)):
        scene = ds.scene(i)
        lo = ds.render(scene, 32, multiple=8)
        hi = ds.render(scene, 128, multiple=32)
        assert hi["image"].shape[1:] == tuple(4 * d for d in lo["image"].shape[1:])
        assert (F.avg_pool2d(hi["image"][None], 4)[0] - lo["image"]).abs().mean() < 0.02
        assert torch.equal(lo["image"], ds[i]["image"])


def test_datamodule_loaders_and_distribution():
    dm = ShapesDataModule(resolution=32, aspects=["1:1", "9:16"], train_size=40, val_size=12, batch_size=4, seed=1)
    dm.setup("fit")
    train = dm.train_dataloader()
    batches = list(train)
    assert sum(len(b["caption"]) for b in batches) == 40 and len(batches) == len(train)
    assert all(len(set(b["aspect"])) == 1 for b in batches)
    val = [b["caption_long"] for b in dm.val_dataloader()]
    assert val == [b["caption_long"] for b in dm.val_dataloader()]  # not shuffled
    assert ShapesDataModule().hparams.aspects == ["1:1"]
    # rank and world size come from the trainer; every index is used once across the two ranks
    seen = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank,
                                     _accelerator_connector=SimpleNamespace(use_distributed_sampler=False))
        seen += [i for b in dm.train_dataloader().sampler for i in b]
    assert sorted(seen) == list(range(40))
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0,
                                 _accelerator_connector=SimpleNamespace(use_distributed_sampler=True))
    with pytest.raises(ValueError, match="use_distributed_sampler"):
        dm.train_dataloader()


def test_datamodule_epochs_advance_inside_a_trainer():
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, tuple(batch["caption_short"])))
            return (self.w * batch["image"].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = ShapesDataModule(train_size=16, val_size=4, batch_size=4, seed=0)
    probe = Probe()
    trainer = L.Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(probe, datamodule=dm)
    assert dm.datasets["train"].epoch == 1  # Lightning's set_epoch reached the sampler and the dataset
    order = {e: [c for ep, cs in probe.seen if ep == e for c in cs] for e in (0, 1)}
    assert sorted(order[0]) == sorted(order[1]) and order[0] != order[1]  # reshuffled, same data


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid splits"):
        ShapesDataset(4, split="training")
    with pytest.raises(ValueError, match="aspects"):
        ShapesDataset(4, aspects=["2:1"])
    with pytest.raises(ValueError, match="not a multiple"):
        ShapesDataset(4, resolution=30, multiple=8)
    with pytest.raises(IndexError):
        ShapesDataset(4).scene(4)
