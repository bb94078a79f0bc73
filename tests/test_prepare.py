"""`lit-edify data` converters on small synthetic copies of the Debian packages' layouts."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import torch
from PIL import Image

from lit_edify.data_modules.image_text import ImageTextDataModule
from lit_edify.data_modules import prepare
from lit_edify.data_modules.prepare import main, read_idx

torch.set_num_threads(1)


def _stamps(root):
    """A tiny tuxpaint-stamps-default tree: RGBA/LA/palette PNGs, .txt with translations, a mirror, an SVG."""
    (root / "animals").mkdir(parents=True)
    (root / "cartoon").mkdir()
    (root / "shapes").mkdir()
    frog = np.zeros((40, 60, 4), np.uint8)
    frog[10:30, 20:40] = (200, 30, 30, 255)  # opaque red square on a transparent background
    Image.fromarray(frog).save(root / "animals" / "frog.png")
    (root / "animals" / "frog.txt").write_text("A frog.\nfr.utf8=Une grenouille.\nde.utf8=Ein Frosch.\n")
    Image.fromarray(frog[:, ::-1].copy()).save(root / "animals" / "frog_mirror.png")
    Image.new("LA", (30, 30), (0, 255)).save(root / "cartoon" / "tux-drat-2.png")  # no .txt
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    pal.save(root / "shapes" / "green.png")
    (root / "shapes" / "green.txt").write_text("A green square.\n")
    (root / "shapes" / "star.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    (root / "shapes" / "star.txt").write_text("A star.\n")
    (root / "shapes" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "shapes" / "broken.txt").write_text("Broken.\n")


def test_tuxpaint_converter(tmp_path, capsys):
    _stamps(tmp_path / "stamps")
    out = tmp_path / "out"
    assert main(["tuxpaint", "--stamps-dir", str(tmp_path / "stamps"), "--out", str(out), "--no-svg"]) == 0
    msg = capsys.readouterr().out
    assert "wrote 3 stamps" in msg and "1 mirrored" in msg and "1 SVG-only skipped" in msg and "1 unreadable" in msg
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "animals/frog.png",
        "cartoon/tux-drat-2.png",
        "shapes/green.png",
    ]
    frog = Image.open(out / "animals" / "frog.png")
    assert frog.mode == "RGB" and frog.size == (60, 40)
    assert frog.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert frog.getpixel((30, 20)) == (200, 30, 30)
    assert (out / "animals" / "frog.txt").read_text() == "A frog.\n"  # English line only
    assert (out / "cartoon" / "tux-drat-2.txt").read_text() == "A tux drat.\n"
    assert Image.open(out / "shapes" / "green.png").getpixel((5, 5)) == (10, 200, 10)
    # the output is a valid image-text folder
    dm = ImageTextDataModule(root=str(out), resolution=32, multiple=16, batch_size=4, num_workers=0, p_long=0.0)
    dm.setup("fit")
    caps = {c for b in dm.train_dataloader() for c in dm.on_before_batch_transfer(b)["caption"]}
    assert caps == {"A frog.", "A tux drat.", "A green square."} and dm.bad_samples == {}


def test_tuxpaint_limit_and_missing_package(tmp_path, capsys):
    _stamps(tmp_path / "stamps")
    assert (
        main(
            [
                "tuxpaint",
                "--stamps-dir",
                str(tmp_path / "stamps"),
                "--out",
                str(tmp_path / "o"),
                "--limit",
                "2",
                "--no-svg",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "o").rglob("*.png"))) == 2
    assert main(["tuxpaint", "--stamps-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "x")]) == 2
    assert "apt-get install -y tuxpaint-stamps-default" in capsys.readouterr().err


def _idx(path, arr: np.ndarray):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_converter(tmp_path, capsys):
    src = tmp_path / "fm"
    src.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([7, 0, 9, 8, 1], np.uint8)
    _idx(src / "train-images-idx3-ubyte.gz", images)
    _idx(src / "train-labels-idx1-ubyte.gz", labels)
    _idx(src / "t10k-images-idx3-ubyte.gz", images[:2])
    _idx(src / "t10k-labels-idx1-ubyte.gz", labels[:2])
    assert np.array_equal(read_idx(str(src / "train-images-idx3-ubyte.gz")), images)
    out = tmp_path / "out"
    assert main(["fashion-mnist", "--source-dir", str(src), "--out", str(out), "--limit", "4"]) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    expected = {
        "sneaker/train_00000": "a photo of a sneaker",
        "t-shirt/train_00001": "a photo of a t-shirt",
        "ankle_boot/train_00002": "a photo of an ankle boot",
        "bag/train_00003": "a photo of a bag",
    }
    assert sorted(p.relative_to(out).with_suffix("").as_posix() for p in out.rglob("*.png")) == sorted(expected)
    for i, (stem, caption) in enumerate(expected.items()):
        assert (out / f"{stem}.txt").read_text().strip() == caption
        assert np.array_equal(np.asarray(Image.open(out / f"{stem}.png")), images[i])
    assert main(["fashion-mnist", "--source-dir", str(src), "--out", str(tmp_path / "t"), "--split", "test"]) == 0
    assert sorted(p.name for p in (tmp_path / "t").rglob("*.png")) == ["test_00000.png", "test_00001.png"]
    assert main(["fashion-mnist", "--source-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "x")]) == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err


def test_pixel_stats_are_the_exact_moments_of_the_training_pixels(tmp_path, capsys):
    # three flat images at 0, 255 and 51: in [-1, 1] they are -1, +1 and -0.6 at every pixel, whatever the resize
    root = tmp_path / "flat"
    root.mkdir()
    for name, value in (("black", 0), ("white", 255), ("grey", 51)):
        Image.new("RGB", (40, 40), (value,) * 3).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(f"a {name} square\n")
    assert main(["stats", "--root", str(root), "--resolution", "16", "--aspects", "1:1"]) == 0
    out = capsys.readouterr().out
    mean, mean_sq = (-1 + 1 - 0.6) / 3, (1 + 1 + 0.36) / 3
    std = (mean_sq - mean**2) ** 0.5  # 0.8641
    assert f"mean {mean:.3f}, std {std:.3f}, rms {mean_sq ** 0.5:.3f}" in out
    assert "3 images" in out and f"sigma_data: {std:.2f}" in out
    dm = ImageTextDataModule(root=str(root), resolution=16, multiple=16, aspects=["1:1"], num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    st = prepare.pixel_stats(dm.train_set, num=2, seed=1)  # two of the three: which two depends on the seed only
    pairs = {(0.0, 1.0), (-0.8, 0.2), (0.2, 0.8)}  # (mean, std) of {-1, 1}, {-1, -0.6}, {1, -0.6}
    assert st["images"] == 2 and (round(st["mean"], 6), round(st["std"], 6)) in pairs
    assert st == prepare.pixel_stats(dm.train_set, num=2, seed=1)
    assert main(["stats", "--root", str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err
