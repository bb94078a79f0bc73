"""``ImageTextDataModule``: image-text pairs from a folder or a Hugging Face dataset (report Sec. 3.3-3.5).

Sources (exactly one):

* ``root``: a folder of images with same-named ``.txt`` captions, optionally ``metadata.jsonl``
  (columns ``caption``, ``long_caption``, ``aesthetic``, ``pitch``, ``dof``, ``media_type``); see
  :mod:`lit_edify.data_modules.folder_index`. ``lit-edify data tuxpaint|fashion-mnist`` writes this format.
* ``hf_dataset``: a ``save_to_disk`` directory or a ``load_dataset`` name/path (e.g.
  ``"imagefolder"`` + ``hf_data_dir``), columns ``image_column``, ``caption_column``, optional
  ``long_caption_column`` and ``aesthetic``/``pitch``/``dof``/``media_type``. With
  ``streaming=True`` data is read lazily and bucketed on the fly (:mod:`lit_edify.data_modules.streaming`).

Every image goes to the nearest of the aspect buckets (1:1, 4:3, 3:4, 16:9, 9:16 by default) and
is resized/center-cropped to that bucket's shape at ``resolution``; batches come from one bucket
(``BucketBatchSampler``: deterministic in ``(seed, epoch)``, disjoint across ranks). Batches are dicts
of the shared sample contract (:mod:`lit_edify.data_modules.samples`): ``image`` float ``(B, 3, H, W)`` in
``[-1, 1]``, ``caption`` list of str, ``pitch``/``dof``/``media_type`` int64 ``(B,)`` (-1 unknown),
``aesthetic`` float ``(B,)`` (normalised to mean 1 over the training set; 1.0 without scores),
``aspect`` list of str.

Bad files (zero-byte, corrupt, truncated, too large, missing caption, ...) are skipped and counted:
files whose header cannot be read at ``setup()``, others when they are loaded (a bad file is
replaced by another file of the same bucket, so batches keep their size). Skips are logged per
epoch; :attr:`ImageTextDataModule.bad_samples` maps each bad file to its reason. If more than
``max_bad_fraction`` of the data is bad, training stops with a summary (:class:`BadFractionError`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter

import lightning as L
import torch
from torch.utils.data import DataLoader

from .buckets import ASPECT_RATIOS, BucketBatchSampler
from .captions import CaptionMixer, clean_caption
from .folder_index import index_folder
from .imageio import DEFAULT_MAX_PIXELS
from .records import BadFractionError, SkipLedger, aesthetic_weights, normalise_meta
from .samples import REPORT_KEY, EpochLoader, ImageTextDataset, ResumableLoader, SampleMaker, fit_progress

__all__ = ["ImageTextDataModule", "BadFractionError"]

log = logging.getLogger("lit_edify.data_modules.image_text")


def _in_val(name: str, seed: int, fraction: float) -> bool:
    """Stable split: depends only on the sample's name and the seed (adding files moves no others)."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha1(f"{seed}:{name}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


class ImageTextDataModule(L.LightningDataModule):
    """Image-text DataModule over a folder or a Hugging Face dataset; see the module docstring.

    Args:
        root: image folder (``.txt`` captions, optional ``metadata.jsonl``).
        hf_dataset, hf_split, hf_data_dir, streaming: Hugging Face source (instead of ``root``).
        image_column, caption_column, long_caption_column: Hugging Face column names.
        resolution, multiple: stage resolution; bucket shapes are multiples of ``multiple``.
        aspects: allowed buckets (default all five).
        batch_size: per-rank batch size. num_workers: loader processes.
        seed: shuffling, split and caption-choice seed.
        p_long: probability of the long caption when both exist. p_drop_caption: empty-caption rate.
        val_fraction: share of samples held out for validation (by a hash of the name).
        max_bad_fraction: stop with a summary when more than this share of the data is bad.
        max_pixels: decompression-bomb guard (stored pixels); ``None`` disables ours.
        require_caption: images without any caption are bad (``False``: use an empty caption).
        caption_fallback_encoding: encoding for caption files that are not UTF-8 (``None``: bad).
        media_types: labels for string ``media_type`` values (index = id); others map to -1.
        aesthetic_mean: aesthetic normaliser; default the training-set mean (streaming: estimated
            from the first 2048 rows).
        drop_last: drop each bucket's incomplete last batch.
        shuffle_buffer: streaming shuffle buffer (0: off).
        stream_repeat: restart a stream when it ends (infinite; set ``trainer.max_steps``). ``False``:
            one pass per epoch (ranks may then get different numbers of batches: single-process only).
        index_path: where the folder's size index is cached (default next to the data).
        pin_memory, persistent_workers, prefetch_factor: passed to ``DataLoader``.
        cache_mb: decoded training samples kept in memory per loader process, in MiB (0: off). When the
            training set fits, each file is read and decoded once per process instead of once per epoch
            (Fashion-MNIST's 20k images at 32 px take 240 MiB); each worker process keeps its own cache.
    """

    def __init__(
        self,
        root: str | None = None,
        hf_dataset: str | None = None,
        hf_split: str = "train",
        hf_data_dir: str | None = None,
        streaming: bool = False,
        image_column: str = "image",
        caption_column: str = "text",
        long_caption_column: str = "long_caption",
        resolution: int = 256,
        multiple: int = 32,
        aspects: list[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        p_long: float = 0.5,
        p_drop_caption: float = 0.0,
        val_fraction: float = 0.0,
        max_bad_fraction: float = 0.01,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        require_caption: bool = True,
        caption_fallback_encoding: str | None = "cp1252",
        media_types: list[str] | None = None,
        aesthetic_mean: float | None = None,
        drop_last: bool = False,
        shuffle_buffer: int = 1000,
        stream_repeat: bool = True,
        index_path: str | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        cache_mb: float = 0.0,
    ) -> None:
        super().__init__()
        if (root is None) == (hf_dataset is None):
            raise ValueError("give exactly one data source: data.root (an image folder) or data.hf_dataset")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if streaming and hf_dataset is None:
            raise ValueError("streaming=True needs data.hf_dataset; a folder (data.root) is indexed instead")
        if streaming and val_fraction > 0:
            raise ValueError("val_fraction is not supported with streaming=True; set it to 0")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if cache_mb < 0 or (cache_mb > 0 and streaming):
            raise ValueError(f"cache_mb must be >= 0 (and 0 with streaming=True), got {cache_mb}")
        self.save_hyperparameters()
        self.aspects = list(aspects) if aspects else list(ASPECT_RATIOS)
        self.mixer = CaptionMixer(p_long, p_drop_caption)
        self.maker = SampleMaker(resolution, multiple, self.aspects, self.mixer, max_pixels, caption_fallback_encoding)
        self.ledger = SkipLedger(max_bad_fraction)
        self.train_set = None
        self.val_set = None
        self._hf = None
        self._logged_epoch: int | None = None

    # ------------------------------------------------------------------ indexing
    def prepare_data(self) -> None:
        """Build/refresh the size index once per node (cached for ``setup`` on every rank)."""
        hp = self.hparams
        if hp.root is not None:
            index_folder(
                hp.root, max_pixels=hp.max_pixels, index_path=hp.index_path, require_caption=hp.require_caption
            )
        elif not hp.streaming:
            from .hf_source import hf_sizes, open_hf, undecoded

            hf_sizes(undecoded(open_hf(hp.hf_dataset, hp.hf_split, hp.hf_data_dir), hp.image_column), hp.image_column)

    def _folder_items(self) -> tuple[list[dict], list[tuple[str, str]], None]:
        hp = self.hparams
        idx = index_folder(
            hp.root, max_pixels=hp.max_pixels, index_path=hp.index_path, require_caption=hp.require_caption
        )
        items = []
        for rec in idx.records:
            row = rec["meta"]
            items.append(
                {
                    "name": rec["key"],
                    "path": os.path.join(hp.root, rec["key"]),
                    "aspect": self.maker.aspect_of(rec["width"], rec["height"]),
                    "caption": clean_caption(row.get("caption")),
                    "long_caption": clean_caption(row.get("long_caption")),
                    "caption_file": os.path.join(hp.root, rec["caption_file"]) if rec["caption_file"] else None,
                    "meta_row": row,
                }
            )
        return items, idx.bad, None

    def _hf_items(self) -> tuple[list[dict], list[tuple[str, str]], object]:
        from .hf_source import ImageValue, hf_items, open_hf, undecoded

        hp = self.hparams
        ds = undecoded(open_hf(hp.hf_dataset, hp.hf_split, hp.hf_data_dir), hp.image_column)
        items, bad = hf_items(
            ds, f"{hp.hf_dataset}[{hp.hf_split}]", self.maker.aspect_of, image_column=hp.image_column,
            caption_column=hp.caption_column, long_caption_column=hp.long_caption_column,
            max_pixels=hp.max_pixels, require_caption=hp.require_caption,
        )  # fmt: skip
        return items, bad, ImageValue(ds, hp.image_column)

    def _annotate(self, items: list[dict], val: list[bool]) -> None:
        """Parse metadata into ints and normalise aesthetic scores over the training items."""
        unknown: Counter = Counter()
        for it in items:
            meta = normalise_meta(it.pop("meta_row"), self.hparams.media_types, unknown)
            it.update(
                pitch=meta["pitch"], dof=meta["dof"], media_type=meta["media_type"], aesthetic_raw=meta["aesthetic_raw"]
            )
        if unknown:
            log.warning(
                "media_type labels not in data.media_types were set to -1 (unknown): %s; list them in "
                "data.media_types to use them",
                dict(unknown.most_common(10)),
            )
        train_raw = [it["aesthetic_raw"] for it, v in zip(items, val) if not v]
        _, mean = aesthetic_weights(train_raw, self.hparams.aesthetic_mean)
        weights, _ = aesthetic_weights([it.pop("aesthetic_raw") for it in items], mean)
        for it, w in zip(items, weights):
            it["aesthetic"] = w
        self.aesthetic_mean = mean

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Index the data (sizes, captions, metadata), split train/val, normalise aesthetic scores.

        Raises:
            BadFractionError: more than ``max_bad_fraction`` of the files are bad (message lists them).
        """
        if self.train_set is not None:
            return
        hp = self.hparams
        if hp.streaming:
            self._setup_streaming()
            return
        items, bad, getter = self._folder_items() if hp.root is not None else self._hf_items()
        self.ledger.candidates = len(items) + len(bad)
        self.ledger.add_index_bad(bad)
        if bad:
            log.warning("skipping %d bad files found while indexing:\n%s", len(bad), self.ledger.summary())
        self.ledger.check()
        if not items:
            raise ValueError(f"no usable images in {hp.root or hp.hf_dataset!r}:\n{self.ledger.summary()}")
        val = [_in_val(it["name"], hp.seed, hp.val_fraction) for it in items]
        self._annotate(items, val)
        train_items = [it for it, v in zip(items, val) if not v]
        val_items = [it for it, v in zip(items, val) if v]
        if not train_items:
            raise ValueError(f"val_fraction={hp.val_fraction} left no training samples; lower it")
        self.train_set = ImageTextDataset(train_items, self.maker, getter, seed=hp.seed,
                                          cache_bytes=int(hp.cache_mb * 2**20))
        if val_items:
            val_maker = SampleMaker(
                hp.resolution,
                hp.multiple,
                self.aspects,
                CaptionMixer(hp.p_long, 0.0),
                hp.max_pixels,
                hp.caption_fallback_encoding,
            )
            self.val_set = ImageTextDataset(val_items, val_maker, getter, seed=hp.seed, deterministic=True)

    def _setup_streaming(self) -> None:
        from .hf_source import open_hf, undecoded
        from .streaming import StreamingBucketDataset, estimate_aesthetic_mean

        hp = self.hparams
        ds = undecoded(open_hf(hp.hf_dataset, hp.hf_split, hp.hf_data_dir, streaming=True), hp.image_column)
        mean = hp.aesthetic_mean if hp.aesthetic_mean is not None else estimate_aesthetic_mean(ds)
        self.aesthetic_mean = mean
        self._hf = ds
        rank, world = self._rank_world()
        self.train_set = StreamingBucketDataset(
            ds,
            self.maker,
            hp.batch_size,
            image_column=hp.image_column,
            caption_column=hp.caption_column,
            long_caption_column=hp.long_caption_column,
            media_types=hp.media_types,
            aesthetic_mean=mean,
            seed=hp.seed,
            shuffle_buffer=hp.shuffle_buffer,
            rank=rank,
            world_size=world,
            repeat=hp.stream_repeat,
            drop_last=hp.drop_last,
        )

    def _rank_world(self) -> tuple[int, int]:
        """``(rank, world_size)`` from the attached Trainer, else ``torch.distributed``, else ``(0, 1)``."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    # ------------------------------------------------------------------ loaders
    def _loader_kwargs(self) -> dict:
        hp = self.hparams
        kw = {"num_workers": hp.num_workers, "pin_memory": hp.pin_memory}
        if hp.num_workers > 0:
            kw["persistent_workers"] = hp.persistent_workers
            if hp.prefetch_factor is not None:
                kw["prefetch_factor"] = hp.prefetch_factor
        return kw

    def _bucket_loader(self, dataset: ImageTextDataset, shuffle: bool) -> EpochLoader:
        hp = self.hparams
        rank, world = self._rank_world()
        sampler = BucketBatchSampler(
            dataset.bucket_of,
            hp.batch_size,
            shuffle=shuffle,
            seed=hp.seed,
            num_replicas=world,
            rank=rank,
            drop_last=hp.drop_last and shuffle,
        )
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate, **self._loader_kwargs())
        return EpochLoader(loader, sampler)

    def train_dataloader(self) -> EpochLoader:
        """Single-bucket batches; Lightning sets the sampler's epoch at each epoch start."""
        self.setup("fit")
        if self.hparams.streaming:
            kw = self._loader_kwargs()
            kw["persistent_workers"] = False  # workers must be re-created to see the new epoch
            return EpochLoader(DataLoader(self.train_set, batch_size=None, **kw), self.train_set)
        loader = self._bucket_loader(self.train_set, shuffle=True)  # resumes mid-epoch exactly
        return ResumableLoader(loader.loader, loader.sampler, lambda: fit_progress(self.trainer))

    def val_dataloader(self):
        """Validation batches (no shuffling, deterministic captions, no caption dropout); ``[]`` if no split."""
        self.setup("validate")
        return [] if self.val_set is None else self._bucket_loader(self.val_set, shuffle=False)

    # ------------------------------------------------------------------ accounting
    @property
    def bad_samples(self) -> dict[str, str]:
        """Every bad file or row met so far (at indexing and in loaded batches) -> reason."""
        return dict(self.ledger.bad)

    def skip_report(self) -> str:
        """Human-readable summary of bad samples by reason, with examples."""
        return self.ledger.summary()

    def on_before_batch_transfer(self, batch, dataloader_idx: int = 0):
        """Remove ``batch["_data_report"]``, count its skips, enforce ``max_bad_fraction``.

        Lightning calls this on every batch in the main process; call it yourself when iterating the
        loaders manually.

        Raises:
            BadFractionError: too many bad samples (message has the summary).
        """
        if isinstance(batch, dict) and REPORT_KEY in batch:
            self._maybe_log_epoch()
            self.ledger.add_report(batch.pop(REPORT_KEY))
            self.ledger.check()
        return batch

    def _maybe_log_epoch(self, final: bool = False) -> None:
        trainer = getattr(self, "trainer", None)
        epoch = trainer.current_epoch if trainer is not None else 0
        if self._logged_epoch is None:
            self._logged_epoch = epoch
        if epoch == self._logged_epoch and not final:
            return
        skips = self.ledger.pop_epoch()
        n = sum(skips.values())
        if n:
            log.warning(
                "epoch %d: skipped %d bad samples (%s); total so far:\n%s",
                self._logged_epoch,
                n,
                ", ".join(f"{k}: {v}" for k, v in skips.most_common()),
                self.ledger.summary(),
            )
        else:
            log.info("epoch %d: no bad samples while loading", self._logged_epoch)
        if trainer is not None and trainer.logger is not None:
            trainer.logger.log_metrics(
                {"data/skipped_in_epoch": float(n), "data/bad_total": float(len(self.ledger.bad))},
                step=trainer.global_step,
            )
        self._logged_epoch = epoch

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self._maybe_log_epoch(final=True)
