"""Classifier-accuracy prompt adherence for class-captioned data.

When every caption of a data set names a class (Fashion-MNIST "a photo of a sneaker", ...), a small
CNN trained on the real images tells how often a generated image shows the class its prompt asked
for. Each distinct caption string is one class. The classifier is trained once per reference set and
hyper-parameters, and cached under ``cache_dir`` (safetensors + JSON metadata); its accuracy on a
held-out fifth of the real images is reported with it, as the ceiling of the generated-image score.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inception import images_to_uint8

__all__ = ["CaptionClassifier", "SmallCNN", "load_or_train_classifier", "to_classifier_input",
           "train_caption_classifier"]


def to_classifier_input(images: Tensor, size: int = 32) -> Tensor:
    """(N, 3, H, W) float in [-1, 1] -> (N, 3, size, size) float in [-1, 1] (antialiased bilinear)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) images, got {tuple(images.shape)}")
    x = images.float().clamp(-1, 1)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class SmallCNN(nn.Module):
    """Three conv stages (width w, 2w, 4w), global average pooling, linear head.

    forward: (N, 3, S, S) float in [-1, 1] -> (N, num_classes) logits.
    """

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        layers, c_in = [], 3
        for c in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@dataclass
class CaptionClassifier:
    """A trained :class:`SmallCNN` with its class names (captions) and held-out real accuracy."""

    model: SmallCNN
    classes: list[str]
    heldout_accuracy: float
    size: int = 32

    def labels(self, captions: list[str]) -> Tensor:
        """(N,) long class indices of captions; raises for a caption that is not a known class."""
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({c for c in captions if c not in index})
        if unknown:
            raise ValueError(f"captions that are not classes of the classifier: {unknown[:5]} "
                             f"(known: {self.classes[:10]}{'...' if len(self.classes) > 10 else ''})")
        return torch.tensor([index[c] for c in captions], dtype=torch.long)

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """(N, 3, H, W) float in [-1, 1] -> (N,) long predicted class indices (CPU)."""
        self.model.eval()
        dev = next(self.model.parameters()).device
        x = to_classifier_input(images, self.size)
        out = [self.model(x[i : i + batch_size].to(dev)).argmax(-1).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def accuracy(self, images: Tensor, captions: list[str]) -> float:
        """Fraction of images classified as the class their caption names (float in [0, 1])."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        return float((self.predict(images) == self.labels(captions)).float().mean())


def train_caption_classifier(
    images: Tensor, captions: list[str], *, size: int = 32, width: int = 32, steps: int = 1000,
    batch_size: int = 32, lr: float = 2e-3, heldout: float = 0.2, seed: int = 0, max_classes: int = 200,
) -> CaptionClassifier:
    """Train a :class:`SmallCNN` to tell the caption of a real image.

    Args:
        images: (N, 3, H, W) float in [-1, 1], real images.
        captions: N class captions; each distinct string is a class (2 <= classes <= max_classes).
        steps: optimiser steps (batches drawn by epochs over the training split; one-cycle schedule).
        heldout: fraction of images kept out of training to measure ``heldout_accuracy``.
        seed: seeds initialisation, split and batch order (training is deterministic on CPU).
    Returns:
        the trained classifier (in eval mode, on the CPU).
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    classes = sorted(set(captions))
    if not 2 <= len(classes) <= max_classes:
        raise ValueError(
            f"classifier adherence needs class-captioned data (2..{max_classes} distinct captions), got "
            f"{len(classes)} distinct captions among {len(captions)} images; use adherence=None or 'shapes'."
        )
    gen = torch.Generator().manual_seed(seed)
    x = to_classifier_input(images, size)
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[c] for c in captions], dtype=torch.long)
    perm = torch.randperm(len(x), generator=gen)
    n_val = round(len(x) * heldout) if len(x) >= 10 else 0
    val, train = perm[:n_val], perm[n_val:]
    batch_size = max(2, min(batch_size, len(train)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(len(classes), width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    order, pos = train[torch.randperm(len(train), generator=gen)], 0
    for _ in range(steps):
        if pos + batch_size > len(order):  # new epoch; batch norm needs two samples, so no short batches
            order, pos = train[torch.randperm(len(train), generator=gen)], 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        xb = x[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5  # mirror augmentation
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    clf = CaptionClassifier(model, classes, float("nan"), size)
    if n_val:
        clf.heldout_accuracy = float((clf.predict(x[val]) == y[val]).float().mean())
    return clf


def _key(images: Tensor, captions: list[str], hparams: dict) -> str:
    h = hashlib.sha256(json.dumps(hparams, sort_keys=True).encode())
    for img, cap in zip(images_to_uint8(images), captions):
        h.update(cap.encode() + b"\0")
        h.update(img.contiguous().numpy().tobytes())
    return h.hexdigest()


def load_or_train_classifier(
    images: Tensor, captions: list[str], cache_dir: str | os.PathLike | None, **train_kwargs
) -> tuple[CaptionClassifier, bool]:
    """Cached :func:`train_caption_classifier`; the key covers the images (at classifier size), captions
    and hyper-parameters.

    Args:
        images, captions, train_kwargs: as :func:`train_caption_classifier`.
        cache_dir: folder of ``classifier-<key>.safetensors`` files; ``None`` disables caching.
    Returns:
        (classifier, whether it was loaded from the cache).
    """
    from safetensors.torch import load_file, save_file

    size = train_kwargs.get("size", 32)
    small = to_classifier_input(images, size)
    if cache_dir is None:
        return train_caption_classifier(small, captions, **train_kwargs), False
    key = _key(small, captions, {"v": 1, **train_kwargs})
    path = Path(cache_dir).expanduser() / f"classifier-{key[:32]}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        model = SmallCNN(len(meta["classes"]), meta["width"])
        model.load_state_dict(load_file(str(path)))
        return CaptionClassifier(model.eval(), meta["classes"], meta["heldout_accuracy"], meta["size"]), True
    clf = train_caption_classifier(small, captions, **train_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"classes": clf.classes, "heldout_accuracy": clf.heldout_accuracy, "size": clf.size,
            "width": train_kwargs.get("width", 32), "key": key}
    tmp = f".tmp{os.getpid()}"
    save_file({k: v.contiguous() for k, v in clf.model.state_dict().items()}, str(path) + tmp)
    Path(str(meta_path) + tmp).write_text(json.dumps(meta))
    os.replace(str(meta_path) + tmp, meta_path)
    os.replace(str(path) + tmp, path)
    return clf, False
