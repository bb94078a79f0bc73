"""Image-text samples: decoding into bucket shapes, caption choice, skip-and-replace of bad files.

Per-sample dict (the shared contract of the project's datasets)::

    {"image": float32 (3, H, W) in [-1, 1], (H, W) = bucket_shape(aspect, resolution, multiple)
     "caption": str (after long/short mixing and caption dropout; "" = unconditional)
     "pitch": int, "dof": int, "media_type": int (-1 = unknown)
     "aesthetic": float (normalised weight, mean 1 over the dataset; 1.0 without scores)
     "aspect": str (a key of lit_edify.data_modules.buckets.ASPECT_RATIOS)}

``torch.utils.data.default_collate`` batches these. :meth:`ImageTextDataset.collate` does the same
and adds ``batch["_data_report"] = {"attempted": int, "skipped": [(name, reason)], "notes": [...]}``
so that bad files met inside worker processes are counted by the DataModule in the main process
(``ImageTextDataModule.on_before_batch_transfer`` removes the key before the batch reaches the model).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .buckets import ASPECT_RATIOS, bucket_shape, nearest_bucket
from .captions import CaptionMixer, clean_caption, decode_caption
from .imageio import BadSample, load_tensor

__all__ = ["SampleMaker", "ImageTextDataset", "EpochLoader", "collate_with_report"]

REPORT_KEY = "_data_report"


class SampleMaker:
    """Turns an image source plus annotations into a sample dict (see module docstring).

    Args:
        resolution, multiple: stage resolution; bucket shapes are ``bucket_shape(a, resolution, multiple)``.
        aspects: allowed buckets (subset of the five); an image goes to the nearest allowed one.
        mixer: caption mixing / dropout.
        max_pixels: decompression-bomb guard.
        caption_fallback: encoding tried for caption files that are not UTF-8 (``None``: such a
            caption makes the sample bad).
    """

    def __init__(
        self,
        resolution: int,
        multiple: int,
        aspects: Sequence[str],
        mixer: CaptionMixer,
        max_pixels: int | None,
        caption_fallback: str | None = "cp1252",
    ) -> None:
        unknown = [a for a in aspects if a not in ASPECT_RATIOS]
        if unknown or not aspects:
            raise ValueError(f"aspects must be a non-empty subset of {list(ASPECT_RATIOS)}, got {list(aspects)}")
        self.shapes = {a: bucket_shape(a, resolution, multiple) for a in aspects}
        self.mixer = mixer
        self.max_pixels = max_pixels
        self.caption_fallback = caption_fallback

    def aspect_of(self, width: int, height: int) -> str:
        """Nearest allowed bucket (log aspect-ratio distance, as ``buckets.nearest_bucket``)."""
        if len(self.shapes) == len(ASPECT_RATIOS):
            return nearest_bucket(width, height)
        log_r = math.log(width / height)
        return min(self.shapes, key=lambda a: abs(log_r - math.log(ASPECT_RATIOS[a][0] / ASPECT_RATIOS[a][1])))

    def read_caption_file(self, path: str) -> tuple[str | None, str | None]:
        """``(caption, note)``; ``note`` says when a fallback encoding was needed.

        Raises:
            BadSample: unreadable file, or not UTF-8 and no fallback configured.
        """
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise BadSample(f"cannot read caption file: {exc.strerror or exc}") from None
        try:
            text, enc = decode_caption(data, self.caption_fallback)
        except UnicodeDecodeError:
            raise BadSample("caption file is not UTF-8 (set data.caption_fallback_encoding to accept it)") from None
        note = None if enc == "utf-8" else f"caption decoded as {enc}"
        return clean_caption(text), note

    def make(
        self,
        src,
        aspect: str,
        caption: str | None,
        long_caption: str | None,
        meta: dict,
        rng: random.Random,
    ) -> dict:
        """Build one sample. ``meta`` has ``pitch, dof, media_type`` (ints) and ``aesthetic`` (weight).

        Raises:
            BadSample: the image cannot be decoded.
        """
        image = load_tensor(src, self.shapes[aspect], self.max_pixels)
        return {
            "image": image,
            "caption": self.mixer(caption, long_caption, rng),
            "pitch": int(meta["pitch"]),
            "dof": int(meta["dof"]),
            "media_type": int(meta["media_type"]),
            "aesthetic": float(meta["aesthetic"]),
            "aspect": aspect,
        }


def collate_with_report(samples: list[dict], report: dict) -> dict:
    """``default_collate(samples)`` plus ``batch["_data_report"] = report``."""
    batch = default_collate(samples)
    batch[REPORT_KEY] = report
    return batch


class ImageTextDataset(Dataset):
    """Map-style dataset over indexed items; a bad item is replaced by another of the same bucket.

    Args:
        items: one dict per sample with ``name, aspect, caption, long_caption, caption_file``
            (absolute path or ``None``), ``pitch, dof, media_type, aesthetic`` and either ``path``
            (image file) or ``row`` (index for ``image_getter``).
        maker: see :class:`SampleMaker`.
        image_getter: ``row -> image source`` for items with a ``row`` (Hugging Face datasets).
        seed: base seed of the replacement choice and, when ``deterministic``, of caption choice.
        deterministic: caption choice depends only on ``(seed, index)`` (for validation); otherwise
            it uses a per-process RNG seeded from ``torch.initial_seed()`` (differs per worker and
            epoch, reproducible under ``seed_everything``).
        max_retries: replacement attempts before giving up on an index.
        cache_bytes: decoded samples kept in memory by this process, in bytes (0: off). A cached index reads and
            decodes no file again; its caption is still drawn anew (same RNG use as a fresh load, so a run gives
            the same batches with and without the cache). Samples past the budget are loaded every time.

    ``__getitem__`` never raises for a bad file unless ``max_retries`` replacements in its bucket
    are bad too (then ``RuntimeError``); every failure is recorded and reported by :meth:`collate`.
    """

    def __init__(
        self,
        items: list[dict],
        maker: SampleMaker,
        image_getter: Callable[[int], object] | None = None,
        *,
        seed: int = 0,
        deterministic: bool = False,
        max_retries: int = 16,
        cache_bytes: int = 0,
    ) -> None:
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.items = items
        self.maker = maker
        self.image_getter = image_getter
        self.seed = int(seed)
        self.deterministic = deterministic
        self.max_retries = max_retries
        self._by_bucket: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            self._by_bucket.setdefault(it["aspect"], []).append(i)
        self._known_bad: dict[int, str] = {}
        self._rng: random.Random | None = None
        self._rng_seed: int | None = None
        self._pending = {"attempted": 0, "skipped": [], "notes": []}
        self.cache_bytes, self._cache_used = int(cache_bytes), 0
        self._cache: dict[int, tuple[dict, str | None]] = {}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def bucket_of(self) -> list[str]:
        """Bucket name of every index (input of ``BucketBatchSampler``)."""
        return [it["aspect"] for it in self.items]

    def _caption_rng(self, index: int) -> random.Random:
        if self.deterministic:
            return random.Random(self.seed * 1_000_003 + index)
        seed = torch.initial_seed()
        if self._rng is None or self._rng_seed != seed:
            self._rng, self._rng_seed = random.Random(seed), seed
        return self._rng

    def _load(self, index: int) -> dict:
        if index in self._known_bad:
            raise BadSample(self._known_bad[index])
        it = self.items[index]
        if index in self._cache:
            sample, caption = self._cache[index]
            return {**sample, "caption": self.maker.mixer(caption, it.get("long_caption"), self._caption_rng(index))}
        caption = it.get("caption")
        if it.get("caption_file") and caption is None:
            caption, note = self.maker.read_caption_file(it["caption_file"])
            if note:
                self._pending["notes"].append((it["name"], note))
        src = it["path"] if "path" in it else self.image_getter(it["row"])  # type: ignore[misc]
        sample = self.maker.make(src, it["aspect"], caption, it.get("long_caption"), it, self._caption_rng(index))
        size = sum(v.nbytes for v in sample.values() if isinstance(v, torch.Tensor))
        if self._cache_used + size <= self.cache_bytes:
            self._cache[index], self._cache_used = (sample, caption), self._cache_used + size
        return sample

    def __getitem__(self, index: int) -> dict:
        candidates = [index]
        members = self._by_bucket[self.items[index]["aspect"]]
        if len(members) > 1:
            pick = random.Random(self.seed * 7_919 + index)
            others = pick.sample(members, min(len(members), self.max_retries + 1))
            candidates += [j for j in others if j != index][: self.max_retries]
        for j in candidates:
            self._pending["attempted"] += 1
            try:
                return self._load(j)
            except Exception as exc:  # BadSample, or anything unexpected: one file must not stop training
                reason = str(exc) if isinstance(exc, BadSample) else f"unexpected error: {type(exc).__name__}: {exc}"
                self._known_bad[j] = reason
                self._pending["skipped"].append((self.items[j]["name"], reason))
        raise RuntimeError(
            f"{len(candidates)} samples in a row were bad in bucket {self.items[index]['aspect']!r}, e.g. "
            + "; ".join(f"{n}: {r}" for n, r in self._pending["skipped"][-3:])
            + ". Check the data folder (most of this bucket is unreadable)."
        )

    def take_report(self) -> dict:
        """Failures and notes recorded in this process since the last call."""
        out, self._pending = self._pending, {"attempted": 0, "skipped": [], "notes": []}
        return out

    def collate(self, samples: list[dict]) -> dict:
        """Collate function for ``DataLoader``: default collation plus this process's report."""
        return collate_with_report(samples, self.take_report())


class EpochLoader:
    """A ``DataLoader`` wrapped so that Lightning (a) leaves its batch sampler alone (no
    ``DistributedSampler`` injection: ``BucketBatchSampler`` already splits by rank) and (b) calls
    ``self.sampler.set_epoch(epoch)`` at each epoch start (``epoch_target`` must have ``set_epoch``).

    Iterating yields the inner loader's batches; ``len()`` is the inner loader's length when known.
    """

    def __init__(self, loader: DataLoader, epoch_target) -> None:
        self.loader = loader
        self.sampler = epoch_target
        self.batch_sampler = None

    @property
    def dataset(self):
        return self.loader.dataset

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def fit_progress(trainer) -> tuple[int, int]:
    """(epoch, batches processed in it) of a Lightning trainer's fit loop: what :class:`ResumableLoader` saves.
    A batch counts once its optimizer step ran, so a checkpoint from ``on_train_batch_end`` resumes after it."""
    loop = trainer.fit_loop
    return loop.epoch_progress.current.processed, loop.epoch_loop.batch_progress.current.processed


class ResumableLoader(EpochLoader):
    """An :class:`EpochLoader` over a :class:`~lit_edify.data_modules.buckets.BucketBatchSampler` that resumes mid-epoch
    exactly.

    Lightning stores :meth:`state_dict` in every checkpoint and, when it resumes, calls :meth:`load_state_dict`
    before it iterates (``CombinedLoader._state_dicts``). The state is the epoch and the number of batches the
    optimizer has consumed in it, read from the trainer by ``progress() -> (epoch, batches done)``; the resumed
    iteration starts at that batch of that epoch's order (skipped batches are never loaded, with or without
    workers), so sample order, noise and losses continue as in an uninterrupted run.
    """

    def __init__(self, loader: DataLoader, epoch_target, progress) -> None:
        super().__init__(loader, epoch_target)
        self.progress = progress

    def state_dict(self) -> dict:
        epoch, done = (int(v) for v in self.progress())
        if done >= len(self.loader):  # saved at the end of an epoch: the next batch is the next epoch's first
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip_next(state["batches_done"])
