"""Streaming Hugging Face datasets, bucketed on the fly.

A streamed dataset has no index, so image sizes (and buckets) are only known once an image is
decoded. :class:`StreamingBucketDataset` therefore decodes each example, puts it in a per-bucket
buffer and emits a *full batch* whenever a buffer reaches ``batch_size``: batches are single-bucket,
as for the map-style path. Use it with ``DataLoader(batch_size=None)``.

Sharding: the stream is split over ``world_size * num_workers`` consumers with
``datasets.distributed.split_dataset_by_node`` (by shards when their number divides evenly, else by
example), consumer index ``rank * num_workers + worker_id``; so every rank and worker reads a
disjoint part.

By default (``repeat=True``) the stream restarts with the next epoch's shuffle when it ends, so it is
infinite: set ``trainer.max_steps``. This also keeps ranks from running out of data at different
steps (which would hang distributed training).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from torch.utils.data import IterableDataset, get_worker_info

from .captions import clean_caption
from .hf_source import image_value
from .imageio import BadSample, load_rgb
from .records import aesthetic_weights, normalise_meta
from .samples import SampleMaker, collate_with_report

__all__ = ["StreamingBucketDataset", "estimate_aesthetic_mean"]


def estimate_aesthetic_mean(hf_ds, column: str = "aesthetic", rows: int = 2048) -> float | None:
    """Mean of the first ``rows`` finite, positive scores of a stream (``None`` if the column is absent)."""
    features = getattr(hf_ds, "features", None)
    if features is not None and column not in features:
        return None
    scores = []
    for row in hf_ds.select_columns([column]).take(rows):
        meta = normalise_meta({"aesthetic": row.get(column)}, None)
        if meta["aesthetic_raw"] is not None:
            scores.append(meta["aesthetic_raw"])
    if not scores:
        return None
    return aesthetic_weights(scores)[1]


class StreamingBucketDataset(IterableDataset):
    """Yields collated single-bucket batches (dicts as in :mod:`lit_edify.data_modules.samples`).

    Args:
        hf_ds: a ``datasets.IterableDataset`` whose image column is undecoded (``{"bytes", "path"}``),
            bytes or paths.
        maker: sample maker (buckets, caption mixing, decompression guard).
        batch_size: samples per emitted batch.
        image_column, caption_column, long_caption_column: column names (the caption columns may
            be absent). Columns ``aesthetic``, ``pitch``, ``dof``, ``media_type`` are used if present.
        media_types: labels for string ``media_type`` values.
        aesthetic_mean: normaliser of aesthetic scores (weights = score / mean); ``None``: weight 1.
        seed: shuffle seed (``hf_ds.shuffle(seed, buffer_size)``) and caption-choice seed.
        shuffle_buffer: size of the streaming shuffle buffer (0: no shuffling).
        rank, world_size: distributed position of this process.
        repeat: restart the stream when it ends (infinite iterable).
        drop_last: with ``repeat=False``, drop incomplete buffers at the end instead of emitting them.
    """

    def __init__(
        self,
        hf_ds,
        maker: SampleMaker,
        batch_size: int,
        *,
        image_column: str = "image",
        caption_column: str = "text",
        long_caption_column: str = "long_caption",
        media_types: Sequence[str] | None = None,
        aesthetic_mean: float | None = None,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        repeat: bool = True,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.hf_ds = hf_ds
        self.maker = maker
        self.batch_size = batch_size
        self.image_column = image_column
        self.caption_column = caption_column
        self.long_caption_column = long_caption_column
        self.media_types = list(media_types) if media_types else None
        self.aesthetic_mean = aesthetic_mean
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.rank, self.world_size = int(rank), int(world_size)
        self.repeat = repeat
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the next iteration (changes the shuffle); call before creating the iterator."""
        self.epoch = int(epoch)

    def _stream(self, worker: int, workers: int):
        from datasets.distributed import split_dataset_by_node

        ds = self.hf_ds
        if self.shuffle_buffer > 0:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        return split_dataset_by_node(ds, rank=self.rank * workers + worker, world_size=self.world_size * workers)

    def _sample(self, row: dict, rng: random.Random) -> dict:
        src = image_value(row.get(self.image_column))
        img = load_rgb(src, self.maker.max_pixels)
        aspect = self.maker.aspect_of(*img.size)
        meta = normalise_meta(row, self.media_types, Counter())
        weight = 1.0
        if self.aesthetic_mean is not None and meta["aesthetic_raw"] is not None:
            weight = aesthetic_weights([meta["aesthetic_raw"]], self.aesthetic_mean)[0][0]
        meta["aesthetic"] = weight
        caption = clean_caption(row.get(self.caption_column))
        long_caption = clean_caption(row.get(self.long_caption_column))
        return self.maker.make(img, aspect, caption, long_caption, meta, rng)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ds = self._stream(worker, workers)
        rng = random.Random(hash((self.seed, self.epoch, self.rank, worker)))
        buffers: dict[str, list[dict]] = {a: [] for a in self.maker.shapes}
        report: dict = {"attempted": 0, "skipped": [], "notes": []}
        ready: list[dict] | None = None  # one batch held back so the last report always has a carrier
        epoch, seen = self.epoch, 0
        while True:
            ds.set_epoch(epoch)
            for chunk in ds.iter(batch_size=32):
                keys = list(chunk)
                for values in zip(*(chunk[k] for k in keys)):
                    row = dict(zip(keys, values))
                    seen += 1
                    report["attempted"] += 1
                    cell = row.get(self.image_column)
                    path = cell.get("path") if isinstance(cell, dict) else None
                    try:
                        sample = self._sample(row, rng)
                    except Exception as exc:  # BadSample or unexpected: skip the example, never stop
                        reason = (
                            str(exc) if isinstance(exc, BadSample) else f"unexpected error: {type(exc).__name__}: {exc}"
                        )
                        report["skipped"].append((path or f"stream[rank {self.rank} worker {worker} #{seen}]", reason))
                        continue
                    buf = buffers[sample["aspect"]]
                    buf.append(sample)
                    if len(buf) == self.batch_size:
                        if ready is not None:
                            yield collate_with_report(ready, report)
                            report = {"attempted": 0, "skipped": [], "notes": []}
                        ready, buffers[sample["aspect"]] = buf, []
            if not self.repeat:
                break
            if seen == 0:
                raise RuntimeError(
                    f"the stream gave no examples to rank {self.rank} worker {worker}; use fewer workers "
                    "or ranks than the dataset has shards/examples"
                )
            epoch += 1
        for buf in buffers.values():
            if buf and not self.drop_last:
                if ready is not None:
                    yield collate_with_report(ready, report)
                    report = {"attempted": 0, "skipped": [], "notes": []}
                ready = buf
        if ready is not None:
            yield collate_with_report(ready, report)
