"""``lit-edify data ...``: prepare real datasets in the image-text folder format.

Commands (``python -m lit_edify.data_modules.prepare`` works the same)::

    lit-edify data tuxpaint --out data/tuxpaint [--limit N] [--stamps-dir DIR] [--no-svg]
    lit-edify data fashion-mnist --out data/fashion_mnist [--limit N] [--split train|test] [--source-dir DIR]
    lit-edify data stats --root data/fashion_mnist --resolution 32 [--num N]   # pixel statistics -> sigma_data

Both read the files of Debian packages (no network):

* ``tuxpaint``: ``tuxpaint-stamps-default`` (``/usr/share/tuxpaint/stamps``): ~800 clip-art stamps,
  RGBA/LA/palette PNGs (some only as SVG) with a ``.txt`` whose first line is the English
  description ("A frog."). Stamps are composited on white and written as RGB PNGs keeping the
  category folders; the English line becomes the caption. ``*_mirror.png`` files (pre-mirrored
  duplicates) are skipped; stamps without a ``.txt`` get a caption from their file name. SVG-only
  stamps are rendered with ``rsvg-convert`` (Debian ``librsvg2-bin``) when it is installed.
* ``fashion-mnist``: ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``): 70 000
  28x28 greyscale articles in 10 classes, written as PNGs under one folder per class with captions
  such as "a photo of a sneaker".

When the package is missing the command prints the ``apt-get install`` line and returns 2. ``--out`` must be
a new or empty folder, or one this command wrote before (it leaves a ``.lit-edify-data.json`` marker there);
anything else is refused with exit code 2 unless ``--force`` is given, so a user's files are never mixed into
the dataset or overwritten.

``stats`` reads a sample of a prepared folder the way training does (same buckets, resize and crop, pixels in
[-1, 1]) and prints the pixel mean, standard deviation and root mean square. EDM's ``sigma_data`` is the data's
standard deviation (0.5 for CIFAR-10 in [-1, 1], the default); set ``model.init_args.noise.sigma_data`` to the
printed value when the data is far from it (Fashion-MNIST: 0.68).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

from .imageio import BadSample, load_rgb
from lit_edify.commands.argtypes import ArgumentParser
from lit_edify.io import atomic_path, write_text_atomic

__all__ = ["main", "prepare_tuxpaint", "prepare_fashion_mnist", "read_idx", "pixel_stats", "FASHION_CLASSES", "MARKER"]

#: file left in every output folder: which command wrote it (a later run of the same command may write there again)
MARKER = ".lit-edify-data.json"

TUXPAINT_DIR = "/usr/share/tuxpaint/stamps"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"

#: Fashion-MNIST label -> caption noun phrase (index = label).
FASHION_CLASSES = (
    "t-shirt", "pair of trousers", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip


def _missing(what: str, path: str, package: str, flag: str) -> int:
    print(
        f"error: {what} not found at {path}.\n"
        f"Install the Debian package:  apt-get update && apt-get install -y {package}\n"
        f"or pass {flag} pointing at a copy of its files.",
        file=sys.stderr,
    )
    return 2


def _caption_from_txt(path: str) -> str | None:
    """First non-empty line (the English description) of a Tux Paint stamp .txt file."""
    with open(path, "rb") as f:
        data = f.read()
    for line in data.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and "=" not in line.split(" ", 1)[0]:  # translation lines look like "fr.utf8=..."
            return line
    return None


def _caption_from_name(stem: str) -> str:
    words = stem.replace("_", " ").replace("-", " ").split()
    words = [w for w in words if not w.isdigit()] or words
    return "A " + " ".join(words) + "."


def _render_svg(svg: str, size: int = 512) -> Image.Image | None:
    exe = shutil.which("rsvg-convert")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "stamp.png")
        res = subprocess.run([exe, "-w", str(size), "-a", "-o", out, svg], capture_output=True, timeout=60)
        if res.returncode != 0 or not os.path.exists(out):
            return None
        img = Image.open(out)
        img.load()
        return img


def _write_pair(stem: str, image: Image.Image, caption: str) -> None:
    """``stem.png`` + ``stem.txt``, each appearing whole (atomic; no fsync per file: bulk writes)."""
    with atomic_path(stem + ".png", durable=False) as tmp:
        image.save(tmp)
    write_text_atomic(stem + ".txt", caption + "\n", durable=False)


def prepare_tuxpaint(stamps_dir: str, out: str, limit: int | None = None, svg: bool = True) -> dict:
    """Convert a Tux Paint stamps tree to ``out/<category path>/<name>.png`` + ``.txt``.

    Returns:
        counts ``{"written", "mirror", "svg_skipped", "bad", "named_caption"}``.
    """
    counts = {"written": 0, "mirror": 0, "svg_skipped": 0, "bad": 0, "named_caption": 0}
    jobs: list[tuple[str, str, str]] = []  # (kind, source file, relative stem)
    for dirpath, dirnames, filenames in os.walk(stamps_dir):
        dirnames.sort()
        names = set(filenames)
        rel_dir = os.path.relpath(dirpath, stamps_dir)
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            ext = ext.lower()
            rel = stem if rel_dir == "." else os.path.join(rel_dir, stem)
            if ext == ".png":
                if stem.endswith("_mirror"):
                    counts["mirror"] += 1
                    continue
                jobs.append(("png", os.path.join(dirpath, name), rel))
            elif ext == ".svg" and stem + ".png" not in names:
                jobs.append(("svg", os.path.join(dirpath, name), rel))
    for kind, src, rel in jobs:
        if limit is not None and counts["written"] >= limit:
            break
        if kind == "svg":
            img = _render_svg(src) if svg else None
            if img is None:
                counts["svg_skipped"] += 1
                continue
            src_img = img
        else:
            src_img = src
        try:
            rgb = load_rgb(src_img, max_pixels=None)  # composites alpha on white
        except BadSample as exc:
            print(f"skipping {src}: {exc}", file=sys.stderr)
            counts["bad"] += 1
            continue
        txt = os.path.splitext(src)[0] + ".txt"
        caption = _caption_from_txt(txt) if os.path.exists(txt) else None
        if caption is None:
            caption = _caption_from_name(os.path.basename(rel))
            counts["named_caption"] += 1
        dest = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dest) or out, exist_ok=True)
        _write_pair(dest, rgb, caption)
        counts["written"] += 1
    return counts


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed), e.g. MNIST/Fashion-MNIST images or labels.

    Returns:
        uint8 array of shape ``(n,)`` for labels or ``(n, rows, cols)`` for images.

    Raises:
        ValueError: not an unsigned-byte IDX file or a size mismatch.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {arr.size}")
    return arr.reshape(dims)


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def prepare_fashion_mnist(source_dir: str, out: str, split: str = "train", limit: int | None = None) -> dict:
    """Write Fashion-MNIST ``split`` as ``out/<class>/<split>_<index>.png`` + ``.txt`` captions.

    Returns:
        counts ``{"written": n, "<class>": n_class, ...}``.
    """
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(source_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(source_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    if len(images) != len(labels):
        raise ValueError(f"{source_dir}: {len(images)} images but {len(labels)} labels")
    n = len(images) if limit is None else min(limit, len(images))
    counts: dict[str, int] = {"written": 0}
    for i in range(n):
        label = int(labels[i])
        if not 0 <= label < len(FASHION_CLASSES):
            raise ValueError(f"{source_dir}: label {label} out of range at index {i}")
        noun = FASHION_CLASSES[label]
        folder = os.path.join(out, noun.replace(" ", "_"))
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, f"{split}_{i:05d}")
        _write_pair(stem, Image.fromarray(np.ascontiguousarray(images[i])), f"a photo of {_article(noun)}")
        counts["written"] += 1
        counts[noun] = counts.get(noun, 0) + 1
    return counts


def pixel_stats(dataset, num: int, seed: int = 0) -> dict:
    """Pixel mean, standard deviation and root mean square (in [-1, 1]) over ``num`` samples of ``dataset``.

    ``dataset`` is an :class:`ImageTextDataset` (items as training loads them); the samples are drawn without
    replacement with ``seed``. Every pixel and channel counts once, so buckets of different sizes are weighted by
    their pixels.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: nothing to measure")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(num, len(dataset)), replace=False)
    total = total_sq = count = 0.0
    for i in picks:
        image = dataset[int(i)]["image"].double()
        total, total_sq = total + image.sum().item(), total_sq + image.square().sum().item()
        count += image.numel()
    mean, mean_sq = total / count, total_sq / count
    return {"images": len(picks), "mean": mean, "std": max(mean_sq - mean * mean, 0.0) ** 0.5, "rms": mean_sq**0.5}


def _stats(args: argparse.Namespace) -> int:
    from .image_text import ImageTextDataModule

    if not os.path.isdir(args.root):
        print(f"error: --root {args.root!r} is not a folder; prepare one first (e.g. `lit-edify data fashion-mnist "
              "--out data/fashion_mnist`)", file=sys.stderr)
        return 2
    dm = ImageTextDataModule(root=args.root, resolution=args.resolution, multiple=args.multiple, aspects=args.aspects,
                             num_workers=0, require_caption=False)
    dm.prepare_data()
    dm.setup("fit")
    st = pixel_stats(dm.train_set, args.num, args.seed)
    print(f"{st['images']} images of {args.root} at {args.resolution} px, pixels in [-1, 1]: mean {st['mean']:.3f}, "
          f"std {st['std']:.3f}, rms {st['rms']:.3f}")
    print(f"sigma_data (EDM: the data's standard deviation; default 0.5): {st['std']:.2f}  "
          f"-> model.init_args.noise.sigma_data: {st['std']:.2f}")
    return 0


def _out_problem(out: str, command: str, force: bool) -> str | None:
    """Why ``lit-edify data <command>`` may not write into ``out`` (None when it may)."""
    if os.path.exists(out) and not os.path.isdir(out):
        return f"{out!r} exists and is not a folder; pass a folder path"
    if not os.path.isdir(out) or not os.listdir(out) or force:
        return None
    try:
        with open(os.path.join(out, MARKER), encoding="utf-8") as f:
            previous = json.load(f).get("command")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous == command:
        return None
    owner = f"the output of `lit-edify data {previous}`" if previous else "files that `lit-edify data` did not write"
    return (f"{out!r} is not empty: it holds {owner}. Writing there would mix them into the dataset and overwrite "
            "files with the same names; choose a new or empty folder, or pass --force")


def _claim(out: str, command: str) -> None:
    """Create ``out`` and mark it as the output of ``command``."""
    os.makedirs(out, exist_ok=True)
    write_text_atomic(os.path.join(out, MARKER), json.dumps({"command": command}) + "\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="lit-edify data", description="Prepare datasets in the image-text folder format."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tuxpaint", help="Tux Paint stamps (Debian tuxpaint-stamps-default)")
    t.add_argument("--out", required=True, help="output folder (e.g. data/tuxpaint)")
    t.add_argument("--limit", type=_positive, default=None, help="write at most N images")
    t.add_argument("--stamps-dir", default=TUXPAINT_DIR, help=f"stamps tree (default {TUXPAINT_DIR})")
    t.add_argument("--no-svg", action="store_true", help="skip SVG-only stamps instead of rendering them")
    t.add_argument("--force", action="store_true", help="write into a non-empty --out folder anyway")
    f = sub.add_parser("fashion-mnist", help="Fashion-MNIST (Debian dataset-fashion-mnist)")
    f.add_argument("--out", required=True, help="output folder (e.g. data/fashion_mnist)")
    f.add_argument("--limit", type=_positive, default=None, help="write at most N images")
    f.add_argument("--split", choices=("train", "test"), default="train")
    f.add_argument("--source-dir", default=FASHION_DIR, help=f"folder with the idx .gz files (default {FASHION_DIR})")
    f.add_argument("--force", action="store_true", help="write into a non-empty --out folder anyway")
    st = sub.add_parser("stats", help="pixel mean / std of a prepared folder as training reads it (for sigma_data)")
    st.add_argument("--root", required=True, help="image folder (e.g. data/fashion_mnist)")
    st.add_argument("--resolution", type=_positive, default=32, help="training resolution (default 32)")
    st.add_argument("--multiple", type=_positive, default=16, help="bucket shapes are multiples of this (default 16)")
    st.add_argument("--aspects", nargs="+", default=None, help="allowed buckets (default all five)")
    st.add_argument("--num", type=_positive, default=2000, help="images to read (default 2000)")
    st.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lit-edify data``; returns the exit status (0 ok, 2 missing source data or a refused --out)."""
    args = build_parser().parse_args(argv)
    if args.command == "stats":
        return _stats(args)
    if (why := _out_problem(args.out, args.command, args.force)) is not None:
        print(f"error: --out {why}", file=sys.stderr)
        return 2
    if args.command == "tuxpaint":
        if not os.path.isdir(args.stamps_dir):
            return _missing("Tux Paint stamps", args.stamps_dir, "tuxpaint-stamps-default", "--stamps-dir")
        created = not os.path.exists(args.out)
        _claim(args.out, args.command)
        counts = prepare_tuxpaint(args.stamps_dir, args.out, args.limit, svg=not args.no_svg)
        if not counts["written"]:
            if created:
                shutil.rmtree(args.out, ignore_errors=True)
            print(f"error: no stamp images found under {args.stamps_dir!r}; pass --stamps-dir pointing at the "
                  "tuxpaint-stamps-default files (/usr/share/tuxpaint/stamps)", file=sys.stderr)
            return 1
        print(
            f"wrote {counts['written']} stamps to {args.out} ({counts['mirror']} mirrored duplicates skipped, "
            f"{counts['svg_skipped']} SVG-only skipped, {counts['bad']} unreadable, "
            f"{counts['named_caption']} captioned from file names)"
        )
        if counts["svg_skipped"] and not args.no_svg:
            print("note: install librsvg2-bin (apt-get install -y librsvg2-bin) to include SVG-only stamps")
        return 0
    needed = os.path.join(args.source_dir, f"{'train' if args.split == 'train' else 't10k'}-images-idx3-ubyte.gz")
    if not os.path.exists(needed):
        return _missing("Fashion-MNIST", needed, "dataset-fashion-mnist", "--source-dir")
    _claim(args.out, args.command)
    counts = prepare_fashion_mnist(args.source_dir, args.out, args.split, args.limit)
    per_class = ", ".join(f"{k}: {v}" for k, v in counts.items() if k != "written")
    print(f"wrote {counts['written']} images to {args.out} ({per_class})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
