"""Built-in procedural "shapes" dataset: no download, any resolution and aspect ratio.

Each sample is one (optionally two) simple shapes of named colours on a textured two-tone background,
with a short and a long caption, camera labels (pitch, depth of field) and a media-type label rendered
into the image (see :mod:`lit_edify.data_modules.shapes_render`), and the depth / edge / mask maps that the
ControlNets of Sec. 5 train on. A few (colour, shape) pairs (:data:`HELDOUT_PAIRS`) never appear in
the train/val/test splits; split ``"heldout"`` consists of them, for a compositional test.
:mod:`lit_edify.data_modules.judge` reads the labels back from an image.

Everything is deterministic in ``(seed, split, index)`` (and ``epoch`` for the caption choice).

Sample format (the batch format shared by the project's DataModules; the default collate turns the
strings into lists and the ints into int64 tensors)::

    image        float32 (3, H, W) in [-1, 1]
    caption      str, the long caption with probability p_long, else the short one
    caption_short, caption_long   str, e.g. "a red circle" /
                 "a large red circle near the top left on a white background"
    pitch        int in {0: ascending (horizon low), 1: eye level, 2: descending (horizon high)}
    dof          int in {0: shallow (blurred background texture), 1: deep (sharp texture)}
    media_type   int in {0: photography (shaded objects), 1: illustration (flat + dark outline)}
    depth        float32 (1, H, W) in [-1, 1], nearness (1 = near)
    edge         float32 (1, H, W) in [-1, 1], 1 on object outlines and the horizon
    mask         float32 (1, H, W) in {0, 1}, object mask
    aspect       str, aspect bucket name, (H, W) = bucket_shape(aspect, resolution, multiple)
    color, shape, background   str labels of the primary (largest) object and the background
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .buckets import ASPECT_RATIOS, BucketBatchSampler, bucket_shape
from .samples import ResumableLoader, fit_progress
from .shapes_render import (
    BACKGROUND_COLORS,
    HELDOUT_PAIRS,
    OBJECT_COLORS,
    SHAPES,
    ShapeScene,
    caption_long,
    caption_short,
    render,
    sample_scene,
)

__all__ = ["ShapesDataset", "ShapesDataModule", "evaluation_prompts", "pairs_for_split", "SPLITS"]

SPLITS: tuple[str, ...] = ("train", "val", "test", "heldout")
_PROMPT_STREAM = 101  # rng stream of evaluation_prompts, distinct from the dataset splits


def pairs_for_split(split: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs of the primary object in ``split``: all pairs except
    :data:`HELDOUT_PAIRS` for train/val/test, exactly :data:`HELDOUT_PAIRS` for ``"heldout"``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {SPLITS}")
    if split == "heldout":
        return list(HELDOUT_PAIRS)
    return [(c, s) for c in OBJECT_COLORS for s in SHAPES if (c, s) not in HELDOUT_PAIRS]


def _check_aspects(aspects: Sequence[str]) -> tuple[str, ...]:
    if isinstance(aspects, str):
        aspects = (aspects,)
    aspects = tuple(aspects)
    bad = [a for a in aspects if a not in ASPECT_RATIOS]
    if not aspects or bad:
        raise ValueError(f"aspects must be a non-empty list of {list(ASPECT_RATIOS)}, got {list(aspects)}")
    return aspects


class ShapesDataset(Dataset):
    """Procedural shapes scenes (see the module docstring for the sample format).

    Args:
        num_samples: dataset length.
        resolution: side of the equivalent square image; each image is
            ``bucket_shape(aspect, resolution, multiple)``.
        aspects: aspect buckets used; index ``i`` has aspect ``aspects[i % len(aspects)]``.
        split: ``"train" | "val" | "test" | "heldout"``; each has its own random stream, and
            ``"heldout"`` holds only the held-out (colour, shape) pairs.
        seed: base seed.
        p_long: probability of the long caption in ``sample["caption"]`` (drawn per index and epoch).
        p_two_shapes: probability of a second, smaller shape (the labels describe the larger one).
        multiple: image sides are multiples of this.
    """

    def __init__(
        self,
        num_samples: int,
        resolution: int = 32,
        aspects: Sequence[str] = ("1:1",),
        split: str = "train",
        seed: int = 0,
        p_long: float = 0.5,
        p_two_shapes: float = 0.0,
        multiple: int = 8,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if not (0.0 <= p_long <= 1.0 and 0.0 <= p_two_shapes <= 1.0):
            raise ValueError(f"p_long and p_two_shapes must be in [0, 1], got {p_long}, {p_two_shapes}")
        self.pairs = pairs_for_split(split)
        self.secondary_pairs = pairs_for_split("train")  # a second shape never shows a held-out pair
        self.num_samples = int(num_samples)
        self.resolution = int(resolution)
        self.aspects = _check_aspects(aspects)
        self.split = split
        self.split_id = SPLITS.index(split)
        self.seed = int(seed)
        self.p_long = float(p_long)
        self.p_two_shapes = float(p_two_shapes)
        self.multiple = int(multiple)
        self.epoch = 0
        for a in self.aspects:  # fail early on a bad resolution / multiple
            bucket_shape(a, self.resolution, self.multiple)

    def __len__(self) -> int:
        return self.num_samples

    @property
    def bucket_of(self) -> list[str]:
        """Aspect bucket of every index (for :class:`~lit_edify.data_modules.buckets.BucketBatchSampler`)."""
        return [self.aspects[i % len(self.aspects)] for i in range(self.num_samples)]

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the caption choice (short / long)."""
        self.epoch = int(epoch)

    def scene(self, index: int) -> ShapeScene:
        """The scene of ``index``; render it at any resolution with :meth:`render`."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_samples}")
        rng = np.random.default_rng([self.seed, self.split_id, index])
        two = bool(rng.random() < self.p_two_shapes)
        return sample_scene(
            rng, self.aspects[index % len(self.aspects)], self.pairs, two_shapes=two,
            secondary_pairs=self.secondary_pairs,
        )

    @staticmethod
    def render(scene: ShapeScene, resolution: int, aspect: str | None = None, multiple: int = 8) -> dict[str, Any]:
        """Render ``scene`` as torch tensors (``image``, ``depth``, ``edge``, ``mask``; shapes and ranges
        as in the module docstring). Same scene at ``k * resolution`` with ``k * multiple`` gives
        exactly ``k`` times the pixel shape (what an upsampler dataset needs)."""
        return {k: torch.from_numpy(v) for k, v in render(scene, resolution, aspect, multiple).items()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        scene = self.scene(index)
        sample = self.render(scene, self.resolution, multiple=self.multiple)
        short, long = caption_short(scene), caption_long(scene)
        use_long = np.random.default_rng([self.seed, self.split_id, index, self.epoch, 7]).random() < self.p_long
        primary = scene.objects[0]
        sample.update(
            caption=long if use_long else short,
            caption_short=short,
            caption_long=long,
            pitch=scene.pitch,
            dof=scene.dof,
            media_type=scene.media_type,
            aspect=scene.aspect,
            color=primary.color,
            shape=primary.shape,
            background=scene.background,
        )
        return sample


def evaluation_prompts(
    n: int = 64, seed: int = 0, split: str = "test", aspects: Sequence[str] = ("1:1",)
) -> list[dict[str, Any]]:
    """Fixed prompt set for adherence reports (judge with :func:`lit_edify.data_modules.judge.adherence`).

    Labels are balanced by construction: prompt ``i`` uses pair ``i % len(pairs)`` of the split
    (``"test"``: the 15 training pairs; ``"heldout"``: the 3 held-out pairs, reported separately),
    and cycles backgrounds, pitch, depth of field, media type and aspect independently.

    Returns:
        ``n`` dicts with ``caption`` (the long caption: it names the background), ``caption_short``,
        ``caption_long``, ``color``, ``shape``, ``background``, ``pitch``, ``dof``, ``media_type``,
        ``aspect`` and ``scene`` (a :class:`ShapeScene` that renders a reference image).
    """
    if split not in ("test", "heldout"):
        raise ValueError(f"evaluation_prompts split must be 'test' or 'heldout', got {split!r}")
    aspects = _check_aspects(aspects)
    pairs = pairs_for_split(split)
    bgs = list(BACKGROUND_COLORS)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, _PROMPT_STREAM, SPLITS.index(split), i])
        scene = sample_scene(
            rng, aspects[i % len(aspects)], [pairs[i % len(pairs)]],
            background=bgs[(i + i // len(pairs)) % len(bgs)],
            pitch=i % 3, dof=(i // 3) % 2, media_type=(i // 6) % 2,
        )
        o = scene.objects[0]
        out.append(dict(
            caption=caption_long(scene), caption_short=caption_short(scene), caption_long=caption_long(scene),
            color=o.color, shape=o.shape, background=scene.background, pitch=scene.pitch, dof=scene.dof,
            media_type=scene.media_type, aspect=scene.aspect, scene=scene,
        ))
    return out


class _EpochSyncedSampler(BucketBatchSampler):
    """BucketBatchSampler whose ``set_epoch`` also sets the dataset's epoch (caption mixing)."""

    def __init__(self, dataset: ShapesDataset, *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset.bucket_of, *args, **kwargs)
        self._dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._dataset.set_epoch(epoch)


class ShapesDataModule(L.LightningDataModule):
    """LightningDataModule over :class:`ShapesDataset` with aspect-bucketed batches.

    Train batches are shuffled and interleave buckets randomly; val/test are not shuffled. All
    loaders use :class:`~lit_edify.data_modules.buckets.BucketBatchSampler` (``drop_last=False``: under DDP the
    last batch of a bucket may repeat up to ``world_size - 1`` indices). Rank and world size come from
    the attached Trainer; multi-GPU runs need ``Trainer(use_distributed_sampler=False)`` because the
    sampler shards by rank itself. The epoch (shuffle order and the caption mix) advances through
    Lightning's ``set_epoch`` calls; with ``persistent_workers`` the caption mix of worker copies stays
    at epoch 0 (so this module does not use persistent workers).

    Args:
        resolution, aspects, seed, p_long, p_two_shapes, multiple: as in :class:`ShapesDataset`.
        train_size, val_size: number of train and val samples; the test split has ``val_size`` too.
        batch_size: per-rank batch size.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        resolution: int = 32,
        aspects: list[str] = ["1:1"],  # noqa: B006 - plain list default for LightningCLI
        train_size: int = 20000,
        val_size: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        p_long: float = 0.5,
        p_two_shapes: float = 0.0,
        multiple: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.aspects = list(_check_aspects(aspects))
        self.datasets: dict[str, ShapesDataset] = {}

    def _dataset(self, split: str, size: int) -> ShapesDataset:
        hp = self.hparams
        return ShapesDataset(
            size, hp.resolution, self.aspects, split, hp.seed, hp.p_long, hp.p_two_shapes, hp.multiple
        )

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        sizes = {"train": hp.train_size, "val": hp.val_size, "test": hp.val_size, "heldout": hp.val_size}
        for split, size in sizes.items():
            if split not in self.datasets:
                self.datasets[split] = self._dataset(split, size)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        world = int(getattr(trainer, "world_size", 1))
        if world > 1 and getattr(getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", False):
            raise ValueError(
                "ShapesDataModule shards batches by rank itself (aspect buckets); run the Trainer with "
                "use_distributed_sampler=False (YAML: trainer.use_distributed_sampler: false)."
            )
        return int(getattr(trainer, "global_rank", 0)), world

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        ds = self.datasets[split]
        rank, world = self._rank_world()
        sampler = _EpochSyncedSampler(
            ds, self.hparams.batch_size, shuffle=shuffle, seed=self.hparams.seed, num_replicas=world, rank=rank
        )
        return DataLoader(ds, batch_sampler=sampler, num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> ResumableLoader:
        """Training batches; checkpoints record the position in the epoch, so a resumed run continues exactly."""
        loader = self._loader("train", shuffle=True)
        return ResumableLoader(loader, loader.batch_sampler, lambda: fit_progress(self.trainer))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def heldout_dataloader(self) -> DataLoader:
        """Loader over the held-out (colour, shape) pairs (not shuffled)."""
        return self._loader("heldout", shuffle=False)
