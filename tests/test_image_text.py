"""ImageTextDataModule over a folder with every kind of bad and awkward file (issue 5 acceptance)."""

from __future__ import annotations

import json
import os
import re
import struct
import zlib

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from lit_edify.data_modules.buckets import bucket_shape
from lit_edify.data_modules.image_text import BadFractionError, ImageTextDataModule

torch.set_num_threads(1)
RES, MULT = 64, 16
SIZES = {"1:1": (60, 60), "4:3": (80, 60), "3:4": (60, 80), "16:9": (96, 54), "9:16": (54, 96)}
BAD = {  # file -> expected substring of the reason
    "bad/zero.png": "empty file",
    "bad/corrupt.jpg": "not a recognised image",
    "bad/truncated.png": "truncated",
    "bad/truncated.jpg": "truncated",
    "bad/huge.png": "too large",
    "bad/bomb.png": "too large",
    "bad/no_caption.png": "missing caption",
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _raw_png(path, width, height, bit_depth, color_type, rows: bytes | None) -> None:
    """Hand-written PNG (Pillow cannot write 16-bit RGB; also used to forge huge headers)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\0" * 16)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def _noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(root, rel, img: Image.Image | None, caption: str | bytes | None, **save):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if img is not None:
        img.save(path, **save)
    if caption is not None:
        with open(os.path.splitext(path)[0] + ".txt", "wb") as f:
            f.write(caption.encode() if isinstance(caption, str) else caption)
    return path


def make_folder(root) -> dict[str, str]:
    """Good images (all five aspects, every awkward mode) + the bad kinds; returns name -> caption."""
    good: dict[str, str] = {}
    for k, (aspect, (w, h)) in enumerate(SIZES.items()):
        for j, ext in enumerate((".png", ".jpg")):
            rel = f"good/{aspect.replace(':', 'x')}_{j}{ext}"
            good[rel] = f"plain {aspect} number {j}"
            _write(root, rel, Image.fromarray(_noise(h, w, 10 * k + j)), good[rel])
    red_blue = np.zeros((60, 80, 3), np.uint8)
    red_blue[:, :40, 0] = 255  # stored: left half red, right half blue
    red_blue[:, 40:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    good["odd/exif_rot.jpg"] = "exif rotated"
    _write(root, "odd/exif_rot.jpg", Image.fromarray(red_blue), good["odd/exif_rot.jpg"], exif=exif, quality=95)
    good["odd/cmyk.jpg"] = "cmyk cyan"
    _write(root, "odd/cmyk.jpg", Image.new("CMYK", (80, 60), (255, 0, 0, 0)), good["odd/cmyk.jpg"], quality=95)
    good["odd/grey16.png"] = "sixteen bit grey"
    _write(root, "odd/grey16.png", Image.fromarray(np.full((60, 60), 49151, np.uint16)), good["odd/grey16.png"])
    good["odd/rgb16.png"] = "sixteen bit rgb"
    rows = b"".join(b"\0" + struct.pack(">HHH", 65535, 0, 32768) * 96 for _ in range(54))
    _raw_png(os.path.join(root, "odd/rgb16.png"), 96, 54, 16, 2, rows)
    _write(root, "odd/rgb16.png", None, good["odd/rgb16.png"])
    good["odd/grey.png"] = "greyscale"
    _write(root, "odd/grey.png", Image.new("L", (54, 96), 0), good["odd/grey.png"])
    rgba = np.zeros((60, 60, 4), np.uint8)  # fully transparent black -> white on white background
    good["odd/rgba.png"] = "transparent"
    _write(root, "odd/rgba.png", Image.fromarray(rgba), good["odd/rgba.png"])
    pal = Image.new("P", (60, 80), 0)
    pal.putpalette([0, 255, 0] + [0] * 765)
    good["odd/palette.png"] = "palette green"
    _write(root, "odd/palette.png", pal, good["odd/palette.png"])
    good["odd/latin1.png"] = "café crème"
    _write(root, "odd/latin1.png", Image.fromarray(_noise(60, 60, 99)), "café crème".encode("cp1252"))
    # bad files
    _write(root, "bad/zero.png", None, "zero")
    open(os.path.join(root, "bad/zero.png"), "wb").close()
    with open(os.path.join(root, "bad/corrupt.jpg"), "wb") as f:
        f.write(np.random.default_rng(1).bytes(700))
    _write(root, "bad/corrupt.jpg", None, "corrupt")
    for ext in (".png", ".jpg"):
        full = _write(root, f"bad/full{ext}", Image.fromarray(_noise(60, 80, 5)), None)
        data = open(full, "rb").read()
        os.remove(full)
        with open(os.path.join(root, f"bad/truncated{ext}"), "wb") as f:
            f.write(data[: len(data) // 2])
        _write(root, f"bad/truncated{ext}", None, "truncated")
    _raw_png(os.path.join(root, "bad/huge.png"), 12_000, 10_000, 8, 0, None)  # 120 MP > 100 MP guard
    _write(root, "bad/huge.png", None, "huge")
    _raw_png(os.path.join(root, "bad/bomb.png"), 60_000, 60_000, 8, 0, None)  # beyond Pillow's own limit
    _write(root, "bad/bomb.png", None, "bomb")
    _write(root, "bad/no_caption.png", Image.fromarray(_noise(60, 60, 7)), None)
    return good


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imgs"))
    return root, make_folder(root)


def _dm(root, **kw):
    args = dict(root=root, resolution=RES, multiple=MULT, batch_size=3, num_workers=0, max_bad_fraction=0.5, p_long=0.0)
    args.update(kw)
    return ImageTextDataModule(**args)


def _epoch(dm, loader=None):
    out = []
    for batch in loader if loader is not None else dm.train_dataloader():
        out.append(dm.on_before_batch_transfer(batch, 0))
    return out


def test_only_good_samples_in_single_bucket_batches_and_every_skip_reported(folder):
    root, good = folder
    dm = _dm(root)
    dm.setup("fit")
    batches = _epoch(dm)
    seen = set()
    for b in batches:
        assert "_data_report" not in b
        assert len(set(b["aspect"])) == 1, "a batch mixes buckets"
        assert tuple(b["image"].shape[2:]) == bucket_shape(b["aspect"][0], RES, MULT)
        assert b["image"].dtype == torch.float32
        assert b["image"].min() >= -1 and b["image"].max() <= 1
        assert b["media_type"].tolist() == [-1] * len(b["caption"])
        seen.update(b["caption"])
    assert seen == set(good.values())  # all good ones, nothing else (bad ones replaced within the bucket)
    assert sum(len(b["caption"]) for b in batches) == len(dm.train_set)  # batches keep their size
    assert set(dm.bad_samples) == set(BAD)
    for name, expected in BAD.items():
        assert expected in dm.bad_samples[name], (name, dm.bad_samples[name])
    assert "café crème" in seen and any("cp1252" in n for n in dm.ledger.notes.values())
    assert {b["aspect"][0] for b in batches} == set(SIZES)
    report = dm.skip_report()
    assert "truncated" in report and "missing caption" in report


def _sample(dm, name):
    i = [it["name"] for it in dm.train_set.items].index(name)
    return dm.train_set[i]


def test_awkward_modes_are_converted_correctly(folder):
    root, _ = folder
    dm = _dm(root)
    dm.setup("fit")
    rot = _sample(dm, "odd/exif_rot.jpg")  # stored 80x60, displayed 60x80 with red on top
    assert rot["aspect"] == "3:4"
    top, bottom = rot["image"][:, :20].mean(dim=(1, 2)), rot["image"][:, -20:].mean(dim=(1, 2))
    assert top[0] > 0.8 and top[2] < -0.8 and bottom[2] > 0.8 and bottom[0] < -0.8
    cmyk = _sample(dm, "odd/cmyk.jpg")["image"].mean(dim=(1, 2))  # pure cyan
    assert cmyk[0] < -0.8 and cmyk[1] > 0.8 and cmyk[2] > 0.8
    grey16 = _sample(dm, "odd/grey16.png")["image"]  # 49151 / 65535 = 0.75 -> 0.5 in [-1, 1]
    assert torch.allclose(grey16, torch.full_like(grey16, 0.5), atol=0.01)
    rgb16 = _sample(dm, "odd/rgb16.png")
    assert rgb16["aspect"] == "16:9"
    assert torch.allclose(rgb16["image"].mean(dim=(1, 2)), torch.tensor([1.0, -1.0, 0.0]), atol=0.01)
    assert torch.all(_sample(dm, "odd/rgba.png")["image"] == 1.0)  # transparent -> white
    pal = _sample(dm, "odd/palette.png")["image"].mean(dim=(1, 2))
    assert torch.allclose(pal, torch.tensor([-1.0, 1.0, -1.0]), atol=0.01)
    assert _sample(dm, "odd/grey.png")["aspect"] == "9:16"


def test_cached_samples_equal_fresh_loads_and_each_file_is_decoded_once(folder, monkeypatch):
    root, _ = folder
    plain, cached = (_dm(root, p_drop_caption=0.3, cache_mb=mb) for mb in (0, 64))
    for dm in (plain, cached):
        dm.setup("fit")
    ds, loads = cached.train_set, []
    real_make = ds.maker.make
    monkeypatch.setattr(ds.maker, "make", lambda src, *a: loads.append(src) or real_make(src, *a))
    captions = []
    for _ in range(3):  # same samples, same caption draws (the RNG is used as by a fresh load)
        for i in range(len(ds)):
            a, b = plain.train_set[i], ds[i]
            assert a["caption"] == b["caption"] and torch.equal(a["image"], b["image"])
            captions.append(b["caption"])
    assert "" in captions and len(set(captions)) > 2  # the caption drop is drawn anew on cached samples
    good = [x for x in loads if "/bad/" not in str(x)]
    assert len(good) == len(set(good)) == len(ds._cache)  # every good file decoded once, then served from memory
    assert ds._cache_used == sum(v.nbytes for s, _ in ds._cache.values() for v in s.values()
                                 if isinstance(v, torch.Tensor))
    small = _dm(root, cache_mb=1.5 * 3 * RES * RES * 4 / 2**20)  # room for one or two samples (a 64 x 64 is 48 KiB)
    small.setup("fit")
    for i in range(len(small.train_set)):
        small.train_set[i]
    assert 0 < len(small.train_set._cache) < len(ds._cache)
    assert 0 < small.train_set._cache_used <= small.train_set.cache_bytes
    with pytest.raises(ValueError, match="cache_mb"):
        _dm(root, cache_mb=-1)


def test_bad_files_met_in_worker_processes_are_counted(folder):
    root, _ = folder
    dm = _dm(root, num_workers=2)
    dm.setup("fit")
    _epoch(dm)
    assert {"bad/truncated.png", "bad/truncated.jpg"} <= set(dm.bad_samples)
    assert "truncated" in dm.bad_samples["bad/truncated.png"]
    # each worker replaces the truncated files it meets; a replacement may itself be the other one
    assert dm.ledger.attempted >= len(dm.train_set) + 2


def test_too_many_bad_files_fail_with_a_summary(folder, tmp_path):
    root, _ = folder
    with pytest.raises(BadFractionError, match="max_bad_fraction") as err:
        _dm(root, max_bad_fraction=0.01).setup("fit")
    assert "missing caption" in str(err.value) and "empty file" in str(err.value)
    # load-time failures count too: one truncated file of four, 20 % allowed
    for j in range(3):
        _write(tmp_path, f"ok{j}.png", Image.fromarray(_noise(60, 60, j)), f"ok {j}")
    data = open(_write(tmp_path, "cut.png", Image.fromarray(_noise(60, 60, 9)), "cut"), "rb").read()
    open(tmp_path / "cut.png", "wb").write(data[: len(data) // 2])
    dm = _dm(str(tmp_path), max_bad_fraction=0.2, batch_size=4)
    dm.setup("fit")
    assert dm.bad_samples == {}
    with pytest.raises(BadFractionError, match="truncated"):
        _epoch(dm)


def test_metadata_captions_scores_and_labels(tmp_path):
    rows = []
    for j, score in enumerate([2.0, 4.0, 6.0, None]):
        rel = f"m{j}.png"
        Image.fromarray(_noise(60, 80, j)).save(tmp_path / rel)
        row = {
            "file_name": rel,
            "caption": f"short {j}",
            "long_caption": f"a much longer caption {j}",
            "pitch": j - 1,
            "dof": 2,
            "media_type": ["photography", "illustration", "painting", 1][j],
        }
        if score is not None:
            row["aesthetic"] = score
        rows.append(row)
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = _dm(str(tmp_path), p_long=1.0, media_types=["photography", "illustration"], batch_size=4)
    dm.setup("fit")
    (batch,) = _epoch(dm)
    by_cap = {c: k for k, c in enumerate(batch["caption"])}
    assert set(by_cap) == {f"a much longer caption {j}" for j in range(4)}
    k = [by_cap[f"a much longer caption {j}"] for j in range(4)]
    assert torch.allclose(batch["aesthetic"][k].float(), torch.tensor([0.5, 1.0, 1.5, 1.0]))
    assert batch["pitch"][k].tolist() == [-1, 0, 1, 2] and batch["dof"].tolist() == [2] * 4
    assert batch["media_type"][k].tolist() == [0, 1, -1, 1]  # "painting" is not a known label
    assert float(np.mean([it["aesthetic"] for it in dm.train_set.items])) == pytest.approx(1.0)


def test_index_cache_follows_file_changes(tmp_path):
    for j in range(2):
        _write(tmp_path, f"f{j}.png", Image.fromarray(_noise(60, 60, j)), f"f {j}")
    dm = _dm(str(tmp_path))
    dm.setup("fit")
    assert [it["aspect"] for it in dm.train_set.items] == ["1:1", "1:1"]
    index = tmp_path / ".lit_edify_index.json"
    assert set(json.loads(index.read_text())["entries"]) == {"f0.png", "f1.png"}
    Image.fromarray(_noise(54, 96, 3)).save(tmp_path / "f0.png")  # now 16:9
    os.utime(tmp_path / "f0.png", ns=(1, 1))  # a different mtime even on coarse clocks
    os.remove(tmp_path / "f1.png")
    dm = _dm(str(tmp_path))
    dm.setup("fit")
    assert [(it["name"], it["aspect"]) for it in dm.train_set.items] == [("f0.png", "16:9")]
    assert set(json.loads(index.read_text())["entries"]) == {"f0.png"}


def test_validation_split_is_disjoint_and_deterministic(folder):
    root, good = folder
    dm = _dm(root, val_fraction=0.4, p_long=0.5)
    dm.setup("fit")
    train = {it["name"] for it in dm.train_set.items}
    val = {it["name"] for it in dm.val_set.items}
    assert train and val and not train & val
    assert train | val == set(good) | {"bad/truncated.png", "bad/truncated.jpg"}
    first = [b["caption"] for b in _epoch(dm, dm.val_dataloader())]
    assert first == [b["caption"] for b in _epoch(dm, dm.val_dataloader())]


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.shapes = []

    def training_step(self, batch, batch_idx):
        assert "_data_report" not in batch
        self.shapes.append((tuple(batch["image"].shape), batch["aspect"][0]))
        return (self.conv(batch["image"]) - batch["image"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_trains_through_bad_files_and_sets_the_epoch(folder, tmp_path, caplog):
    root, _ = folder
    caplog.set_level("INFO", logger="lit_edify.data_modules.image_text")
    dm = _dm(root)
    model = _Tiny()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    n_batches = len(dm.train_dataloader())
    assert len(model.shapes) == 2 * n_batches
    assert all(s[2:] == bucket_shape(a, RES, MULT) for s, a in model.shapes)
    assert trainer.train_dataloader.sampler.epoch == 1  # Lightning called set_epoch on the bucket sampler
    assert {"bad/truncated.png", "bad/truncated.jpg"} <= set(dm.bad_samples)
    epoch_logs = [r.getMessage() for r in caplog.records if "bad samples (" in r.getMessage()]
    assert [m.split(":")[0] for m in epoch_logs] == ["epoch 0", "epoch 1"]  # one summary per epoch
    for m in epoch_logs:  # each truncated file is met at least once (a replacement may be the other one)
        found = re.search(r"skipped (\d+) bad samples \(truncated file: (\d+)\)", m)
        assert found and found[1] == found[2] and int(found[1]) >= 2, m


def _png_bytes(w, h, seed):
    import io

    buf = io.BytesIO()
    Image.fromarray(_noise(h, w, seed)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A save_to_disk dataset: 15 good images in the five aspects, one corrupt, one truncated."""
    import datasets

    cells = [{"bytes": _png_bytes(w, h, i), "path": f"img{i}.png"} for i, (w, h) in enumerate(list(SIZES.values()) * 3)]
    cut = _png_bytes(80, 60, 99)
    cells += [{"bytes": b"garbage" * 10, "path": "corrupt.png"}, {"bytes": cut[: len(cut) // 2], "path": "cut.png"}]
    feats = datasets.Features(
        {"image": datasets.Image(), "text": datasets.Value("string"), "aesthetic": datasets.Value("float32")}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": cells,
            "text": [f"cap {i}" for i in range(len(cells))],
            "aesthetic": [float(i + 1) for i in range(len(cells))],
        },
        features=feats,
    )
    path = str(tmp_path_factory.mktemp("hf") / "ds")
    ds.save_to_disk(path)
    return path


def test_hf_dataset_map_style(hf_dir):
    dm = _dm(None, hf_dataset=hf_dir)
    dm.prepare_data()  # scans the image headers once and caches them by fingerprint
    dm.setup("fit")
    batches = _epoch(dm)
    assert all(len(set(b["aspect"])) == 1 for b in batches)
    assert {c for b in batches for c in b["caption"]} == {f"cap {i}" for i in range(15)}
    assert "not a recognised image" in dm.bad_samples[f"{hf_dir}[train][15]"]
    assert "truncated" in dm.bad_samples[f"{hf_dir}[train][16]"]
    # the 16 indexable rows (0-14 and the truncated 16) have scores 1-15 and 17: mean 137 / 16
    w = {c: a for b in batches for c, a in zip(b["caption"], b["aesthetic"].tolist())}
    assert w["cap 0"] == pytest.approx(16 / 137) and w["cap 14"] == pytest.approx(15 * 16 / 137)


def test_hf_streaming_buckets_on_the_fly_and_shards_by_rank(hf_dir):
    from lit_edify.data_modules.streaming import StreamingBucketDataset

    dm = _dm(None, hf_dataset=hf_dir, streaming=True, stream_repeat=False, batch_size=3)
    dm.setup("fit")
    batches = _epoch(dm)
    assert [len(b["caption"]) for b in batches] == [3] * 5  # 3 good images per bucket
    for b in batches:
        assert len(set(b["aspect"])) == 1
        assert tuple(b["image"].shape[2:]) == bucket_shape(b["aspect"][0], RES, MULT)
    assert set(dm.bad_samples) == {"corrupt.png", "cut.png"}
    per_rank = []
    for rank in (0, 1):
        it = StreamingBucketDataset(dm.train_set.hf_ds, dm.maker, 2, seed=0, rank=rank, world_size=2, repeat=False)
        per_rank.append([c for b in it for c in b["caption"]])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == {f"cap {i}" for i in range(15)}
