"""Aspect-ratio buckets (Edify Image report, Sec. 3.4).

The report supports five aspect ratios, 1:1, 4:3, 3:4, 16:9 and 9:16. Every training image is put in
the bucket with the closest aspect ratio and every batch is drawn from a single bucket, so all images
of a batch share one shape.

This module provides:

* :data:`ASPECT_RATIOS` -- bucket name -> ``(width, height)`` ratio.
* :func:`bucket_shape` -- the pixel shape ``(H, W)`` of a bucket at a given resolution.
* :func:`nearest_bucket` -- which bucket an image of a given size belongs to.
* :class:`BucketBatchSampler` -- a distributed-aware batch sampler that yields single-bucket batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

# the bucket geometry lives in the library (lit_edify.aspect, so models need not import the data layer)
from lit_edify.aspect import ASPECT_RATIOS, bucket_shape, nearest_bucket

__all__ = ["ASPECT_RATIOS", "bucket_shape", "nearest_bucket", "BucketBatchSampler"]


def _dist_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None or rank is None:
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas - 1}], got {rank}")
    return num_replicas, rank


class _EpochHook:
    """``batch_sampler.sampler`` stand-in: Lightning calls ``set_epoch`` on it each epoch."""

    def __init__(self, owner: "BucketBatchSampler") -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)


class BucketBatchSampler(Sampler[list[int]]):
    """Yields batches of dataset indices, every batch from a single aspect bucket.

    Each step draws one *global batch* of ``batch_size * num_replicas`` indices from one bucket; rank
    ``r`` gets its slice ``[r * batch_size, (r + 1) * batch_size)``. So at every step all ranks work on
    the same bucket (same image shape) and every rank yields the same number of batches, as DDP needs.

    Per epoch, every bucket's indices are shuffled (``shuffle=True``), cut into global batches, and the
    global batches of all buckets are put in one random order (buckets interleave randomly, as in
    the report's "randomly sample a batch of examples from a bin"). The order depends only on
    ``(seed, epoch)``, so all ranks agree without communicating. With ``shuffle=False`` indices keep
    their dataset order and buckets come one after another in order of first appearance.

    The last global batch of a bucket can be incomplete (``m < batch_size * num_replicas`` indices):

    * ``drop_last=True``: it is dropped; every yielded batch has exactly ``batch_size`` indices and
      no index repeats. At most ``batch_size * num_replicas - 1`` indices per bucket are skipped.
    * ``drop_last=False`` (default): it is kept and split evenly over the ranks; each rank gets
      ``ceil(m / num_replicas)`` indices. When ``m`` is not a multiple of ``num_replicas`` the batch is
      padded by repeating the bucket's first indices (at most ``num_replicas - 1`` repeats per bucket).
      Without padding (a single rank, or bucket sizes divisible by ``num_replicas``) every index is
      used exactly once per epoch across all ranks.

    Call :meth:`set_epoch` before each epoch to get a new order. Lightning's loops call
    ``dataloader.batch_sampler.sampler.set_epoch(epoch)``; this class exposes such a ``sampler``
    attribute (a small hook that forwards to :meth:`set_epoch`), so inside a Trainer the epoch advances
    automatically.

    Multi-GPU with Lightning: this sampler shards the data itself, so run the Trainer with
    ``use_distributed_sampler=False``; otherwise Lightning tries to rebuild it around a
    ``DistributedSampler`` and gets a ``TypeError`` that says so.

    Args:
        bucket_of: bucket name (any hashable; normally a key of :data:`ASPECT_RATIOS`) of each dataset
            index, ``len(bucket_of) == len(dataset)``.
        batch_size: indices per batch per rank.
        shuffle: shuffle within buckets and interleave buckets randomly.
        seed: base seed of the order.
        num_replicas, rank: distributed world size and this process's rank; default to
            ``torch.distributed``'s when it is initialised, else 1 and 0.
        drop_last: drop the incomplete last global batch of each bucket (see above).
    """

    def __init__(
        self,
        bucket_of: Sequence[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if isinstance(bucket_of, Sampler):
            raise TypeError(
                "BucketBatchSampler got a Sampler instead of a sequence of bucket names. This happens "
                "when Lightning tries to inject a DistributedSampler; BucketBatchSampler shards by rank "
                "itself, so set `Trainer(use_distributed_sampler=False)`."
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.num_replicas, self.rank = _dist_defaults(num_replicas, rank)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        groups: dict[str, list[int]] = {}
        for i, b in enumerate(bucket_of):
            groups.setdefault(b, []).append(i)
        self._groups = {b: torch.tensor(ix, dtype=torch.long) for b, ix in groups.items()}
        self.sampler = _EpochHook(self)
        self._skip = 0

    @property
    def buckets(self) -> list[str]:
        """Bucket names present, in order of first appearance."""
        return list(self._groups)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch; the order of the next iteration depends on ``(seed, epoch)``."""
        self.epoch = int(epoch)

    def _global_batches_of(self, n: int) -> int:
        g = self.batch_size * self.num_replicas
        return n // g if self.drop_last else math.ceil(n / g)

    def __len__(self) -> int:
        """Number of batches this rank yields per epoch (the same on every rank)."""
        return sum(self._global_batches_of(len(ix)) for ix in self._groups.values())

    def _global_batches(self) -> list[torch.Tensor]:
        gen = torch.Generator()
        # Mix seed and epoch so that (seed, epoch + 1) and (seed + 1, epoch) give unrelated orders.
        gen.manual_seed((self.seed * 1_000_003 + self.epoch * 7_919 + 12_345) % (2**63))
        size = self.batch_size * self.num_replicas
        out: list[torch.Tensor] = []
        for ix in self._groups.values():
            if self.shuffle:
                ix = ix[torch.randperm(len(ix), generator=gen)]
            for k in range(self._global_batches_of(len(ix))):
                chunk = ix[k * size : (k + 1) * size]
                short = -len(chunk) % self.num_replicas  # pad to a multiple of num_replicas
                if short:
                    chunk = torch.cat([chunk, ix.repeat(math.ceil(short / len(ix)))[:short]])
                out.append(chunk)
        if self.shuffle:
            out = [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]
        return out

    def skip_next(self, batches: int) -> None:
        """Start the next iteration at its ``batches``-th batch (mid-epoch resume); skipped batches are never
        loaded. Applies once."""
        if not 0 <= batches <= len(self):
            raise ValueError(f"cannot skip {batches} batches of an epoch of {len(self)}")
        self._skip = int(batches)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        for chunk in self._global_batches()[skip:]:
            per_rank = len(chunk) // self.num_replicas
            yield chunk[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()
