"""High-resolution image crops for the 4K upsampler (report Sec. 4.1).

The report trains the 4K stage only on images that are large and "contain high-frequency content". Here:

* :func:`scan_images` lists the images of a folder whose shorter side is at least ``min_size`` pixels (sizes
  read from the header; ``one_per_folder`` keeps only the largest image of each folder, e.g. the KDE
  wallpapers ship every picture at a dozen sizes);
* every kept image is resized once (area filter) so its shorter side is ``short_side``: the *scale* of the
  stage (tiny chain: 256 px for "4K", 64 px for "1K"); :func:`high_frequency_score` of that resized image
  must reach ``min_hf``;
* samples are random ``crop`` x ``crop`` crops (plus horizontal flips) of the resized images.

Batches follow the shared sample contract: ``image`` float (B, 3, crop, crop) in [-1, 1], ``caption`` list of
str (empty: the images have no captions, the text condition is the unconditional one).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lit_edify.diffusion.laplacian import down, up

from .imageio import IMAGE_EXTENSIONS, BadSample, load_rgb, read_size, to_tensor

__all__ = ["HighResCrops", "HighResDataModule", "high_frequency_score", "load_scaled", "scan_images", "split"]

log = logging.getLogger("lit_edify.data_modules.highres")


def high_frequency_score(image: torch.Tensor, f: int = 2) -> float:
    """Share of an image's variance in its finest Laplacian band: ``||x - up(down(x, f))||^2 / ||x - mean||^2``.

    image: (3, H, W) or (B, 3, H, W) in [-1, 1] (H, W cropped to multiples of f). 0 for a flat or blocky image,
    about 1 - 1/f^2 = 0.75 for white noise; photographs with fine texture score ~0.01-0.05, smooth gradients
    and flat graphics < 0.002.
    """
    x = image if image.ndim == 4 else image[None]
    x = x[..., : x.shape[-2] // f * f, : x.shape[-1] // f * f].double()
    detail = (x - up(down(x, f), f)).square().sum()
    total = (x - x.mean(dim=(-2, -1), keepdim=True)).square().sum()
    return float(detail / total) if total > 0 else 0.0


def scan_images(root: str | os.PathLike, min_size: int, one_per_folder: bool = False) -> list[Path]:
    """Image files under ``root`` (recursive, sorted) whose shorter side is >= ``min_size``; unreadable files
    are skipped with a log line. ``one_per_folder``: only the largest (in pixels) image of each folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"high-resolution image folder {str(root)!r} does not exist; pass a folder of images "
                                "(e.g. /usr/share/wallpapers: `apt-get install plasma-workspace-wallpapers`)")
    best: dict[Path, tuple[int, Path]] = {}
    kept = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        try:
            w, h = read_size(p)
        except BadSample as e:
            log.warning("skipping %s: %s", p, e)
            continue
        if min(w, h) < min_size:
            continue
        if one_per_folder:
            if p.parent not in best or w * h > best[p.parent][0]:
                best[p.parent] = (w * h, p)
        else:
            kept.append(p)
    return sorted(v[1] for v in best.values()) if one_per_folder else kept


def load_scaled(path: str | os.PathLike, short_side: int) -> torch.Tensor:
    """Decode (RGB, alpha on white, 16-bit and greyscale converted) and resize with the area filter so that the
    shorter side is ``short_side``. Returns float32 (3, H, W) in [-1, 1]."""
    img = load_rgb(path)
    w, h = img.size
    s = short_side / min(w, h)
    size = (max(short_side, round(w * s)), max(short_side, round(h * s)))
    return to_tensor(img.resize(size, Image.Resampling.BOX, reducing_gap=None))


def split(paths: list[Path], val_fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Stable train / held-out split by a hash of each file's last four path components (adding files moves no
    others; the same split wherever the folder is mounted)."""
    train, val = [], []
    for p in paths:
        key = "/".join(p.parts[-4:])
        h = int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big")
        (val if h / 2**64 < val_fraction else train).append(p)
    return train, val


class HighResCrops(Dataset):
    """``length`` random ``crop`` x ``crop`` crops (random flip) of in-memory images (3, H, W) in [-1, 1].

    Item ``i`` is a deterministic function of (seed, epoch, i); ``fixed=True`` gives centre crops without
    flips, cycling through the images (held-out evaluation).
    """

    def __init__(self, images: list[torch.Tensor], crop: int, length: int, seed: int = 0, fixed: bool = False):
        if not images:
            raise ValueError("no images passed the size and high-frequency filters; lower min_size / min_hf or "
                             "add images")
        small = [tuple(im.shape[-2:]) for im in images if min(im.shape[-2:]) < crop]
        if small:
            raise ValueError(f"crop {crop} is larger than scaled images {small}; raise short_side or lower crop")
        self.images, self.crop, self.length, self.seed, self.fixed = images, crop, length, seed, fixed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        c = self.crop
        if self.fixed:
            im = self.images[i % len(self.images)]
            top, left = (im.shape[-2] - c) // 2, (im.shape[-1] - c) // 2
            return {"image": im[:, top:top + c, left:left + c].clone(), "caption": ""}
        rng = np.random.default_rng((self.seed, self.epoch, i))
        im = self.images[rng.integers(len(self.images))]
        top, left = rng.integers(im.shape[-2] - c + 1), rng.integers(im.shape[-1] - c + 1)
        out = im[:, top:top + c, left:left + c]
        return {"image": (out.flip(-1) if rng.random() < 0.5 else out).clone(), "caption": ""}


class HighResDataModule(L.LightningDataModule):
    """Random crops of large, detailed images at one scale (see the module docstring).

    Args:
        root: folder of images (searched recursively).
        short_side: every image is resized so its shorter side has this many pixels (the stage's scale).
        crop: training crop side in pixels (a multiple of the model's resolution multiple).
        min_size: images whose stored shorter side is below this are skipped.
        min_hf: minimum :func:`high_frequency_score` at the training scale (0 keeps all).
        one_per_folder: keep only the largest image per folder.
        val_fraction: share of images held out (stable hash split) for validation crops.
        train_size / val_size: crops per training epoch / validation crops (centre crops of held-out images).
    """

    def __init__(self, root: str, short_side: int = 256, crop: int = 128, min_size: int = 1024, min_hf: float = 0.002,
                 one_per_folder: bool = False, val_fraction: float = 0.2, batch_size: int = 8, num_workers: int = 0,
                 train_size: int = 100_000, val_size: int = 16, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.train_set = self.val_set = None
        self.scores: dict[str, float] = {}

    def load(self, paths: list[Path]) -> list[torch.Tensor]:
        """Scaled images of ``paths`` that pass the high-frequency filter (scores kept in ``self.scores``)."""
        hp, out = self.hparams, []
        for p in paths:
            try:
                im = load_scaled(p, hp.short_side)
            except BadSample as e:
                log.warning("skipping %s: %s", p, e)
                continue
            self.scores[str(p)] = score = high_frequency_score(im)
            if score >= hp.min_hf:
                out.append(im)
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        train, val = split(scan_images(hp.root, hp.min_size, hp.one_per_folder), hp.val_fraction, hp.seed)
        self.train_set = HighResCrops(self.load(train), hp.crop, hp.train_size, hp.seed)
        val_images = self.load(val)
        self.val_set = HighResCrops(val_images, hp.crop, hp.val_size, fixed=True) if val_images else None
        log.info("high-res data: %d training / %d held-out images kept of %d (min_hf %.4f)",
                 len(self.train_set.images), len(val_images), len(self.scores), hp.min_hf)

    def train_dataloader(self) -> DataLoader:
        if self.trainer is not None:
            self.train_set.epoch = self.trainer.current_epoch
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=False, drop_last=True,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)
