"""Aspect-ratio buckets: bucket_shape, nearest_bucket, BucketBatchSampler."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from lit_edify.data_modules.buckets import ASPECT_RATIOS, BucketBatchSampler, bucket_shape, nearest_bucket

FIVE = ["1:1", "4:3", "3:4", "16:9", "9:16"]


def test_five_buckets_of_the_report():
    assert list(ASPECT_RATIOS) == FIVE
    for name, (w, h) in ASPECT_RATIOS.items():
        assert name == f"{w}:{h}"


@pytest.mark.parametrize("resolution", [32, 64, 256, 1024])
@pytest.mark.parametrize("multiple", [8, 32])
def test_bucket_shape_properties(resolution, multiple):
    n = resolution // multiple
    for aspect in FIVE:
        h, w = bucket_shape(aspect, resolution, multiple)
        assert isinstance(h, int) and isinstance(w, int)
        assert h % multiple == 0 and w % multiple == 0 and h > 0 and w > 0
        rw, rh = ASPECT_RATIOS[aspect]
        if aspect == "1:1":
            assert (h, w) == (resolution, resolution)
        # orientation never flips
        assert (w - h) * (rw - rh) >= 0
        # portrait buckets are transposes of landscape ones
        if rh > rw:
            assert bucket_shape(f"{rh}:{rw}", resolution, multiple) == (w, h)
        aspect_err = abs(math.log((w / h) / (rw / rh)))
        area_err = abs(math.log(h * w / resolution**2))
        if n >= 8:  # enough units for a close fit
            assert aspect_err < 0.1 and area_err < 0.1, (aspect, h, w)
        elif n >= 4:
            assert aspect_err < 0.1 and area_err < 0.3, (aspect, h, w)
            assert w != h or rw == rh  # non-square buckets are non-square


@pytest.mark.parametrize("k", [2, 4])
def test_bucket_shape_scales_with_integer_factor(k):
    for aspect in FIVE:
        for r, m in [(32, 8), (64, 8), (256, 32), (64, 16)]:
            h, w = bucket_shape(aspect, r, m)
            assert bucket_shape(aspect, k * r, k * m) == (k * h, k * w)


def test_bucket_shape_errors():
    with pytest.raises(ValueError, match="valid aspect ratios are.*'16:9'"):
        bucket_shape("2:1", 256)
    with pytest.raises(ValueError, match="not a multiple"):
        bucket_shape("1:1", 100, 32)
    with pytest.raises(ValueError, match="positive"):
        bucket_shape("1:1", 0, 32)


def test_nearest_bucket():
    assert nearest_bucket(512, 512) == "1:1"
    assert nearest_bucket(640, 480) == "4:3"
    assert nearest_bucket(480, 640) == "3:4"
    assert nearest_bucket(1920, 1080) == "16:9"
    assert nearest_bucket(1080, 1920) == "9:16"
    assert nearest_bucket(3000, 1000) == "16:9"  # very wide -> widest bucket
    assert nearest_bucket(1100, 1000) == "1:1"
    for aspect in FIVE:
        h, w = bucket_shape(aspect, 256, 32)
        assert nearest_bucket(w, h) == aspect
    with pytest.raises(ValueError):
        nearest_bucket(0, 10)


def _buckets(sizes: dict[str, int]) -> list[str]:
    """Interleaved bucket assignment with the given bucket sizes."""
    out: list[str] = []
    left = dict(sizes)
    while any(left.values()):
        for b in sizes:
            if left[b]:
                out.append(b)
                left[b] -= 1
    return out


def _epoch(bucket_of, batch_size, world, **kw):
    """Batches of every simulated rank for one epoch: list (per rank) of list of batches."""
    out = []
    for rank in range(world):
        s = BucketBatchSampler(bucket_of, batch_size, num_replicas=world, rank=rank, **kw)
        s.set_epoch(3)
        batches = list(s)
        assert len(batches) == len(s)
        out.append(batches)
    return out


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_index_exactly_once_without_padding(world):
    # bucket sizes divisible by every world size used, but not by batch_size * world
    bucket_of = _buckets({"1:1": 52, "16:9": 20, "3:4": 8, "4:3": 4})
    per_rank = _epoch(bucket_of, 3, world)
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1  # same number of batches on every rank
    used = Counter(i for batches in per_rank for batch in batches for i in batch)
    assert sorted(used) == list(range(len(bucket_of)))
    assert set(used.values()) == {1}
    # at every step all ranks see the same bucket, and every batch is single-bucket
    for step in zip(*per_rank):
        assert len({bucket_of[i] for batch in step for i in batch}) == 1
    assert all(1 <= len(b) <= 3 for batches in per_rank for b in batches)


@pytest.mark.parametrize("world", [2, 4])
def test_padding_repeats_few_indices_and_keeps_ranks_equal(world):
    sizes = {"1:1": 23, "16:9": 7, "9:16": 1}
    bucket_of = _buckets(sizes)
    per_rank = _epoch(bucket_of, 4, world)
    assert len({len(b) for b in per_rank}) == 1
    for step in zip(*per_rank):
        assert len({len(b) for b in step}) == 1  # equal batch sizes across ranks at each step
    used = Counter(i for batches in per_rank for batch in batches for i in batch)
    assert sorted(used) == list(range(len(bucket_of)))  # nothing lost
    repeats = Counter()
    for i, c in used.items():
        repeats[bucket_of[i]] += c - 1
    for b in sizes:
        assert repeats[b] == -sizes[b] % world


@pytest.mark.parametrize("world", [1, 2, 4])
def test_drop_last_drops_only_incomplete_global_batches(world):
    sizes = {"1:1": 37, "4:3": 11, "9:16": 2}
    bucket_of = _buckets(sizes)
    bs = 3
    per_rank = _epoch(bucket_of, bs, world, drop_last=True)
    used = Counter(i for batches in per_rank for batch in batches for i in batch)
    assert set(used.values()) == {1}
    assert all(len(b) == bs for batches in per_rank for b in batches)
    for b, n in sizes.items():
        got = sum(1 for i in used if bucket_of[i] == b)
        assert got == n // (bs * world) * bs * world


def test_deterministic_per_seed_and_epoch_and_interleaved():
    bucket_of = _buckets({"1:1": 200, "16:9": 200, "9:16": 200})
    s = BucketBatchSampler(bucket_of, 4, seed=7, num_replicas=1, rank=0)
    s.set_epoch(0)
    a = list(s)
    s2 = BucketBatchSampler(bucket_of, 4, seed=7, num_replicas=1, rank=0)
    s2.set_epoch(0)
    assert list(s2) == a
    s.set_epoch(1)
    assert list(s) != a
    other_seed = BucketBatchSampler(bucket_of, 4, seed=8, num_replicas=1, rank=0)
    assert list(other_seed) != a
    # random interleaving: the bucket changes often, not just twice
    seq = [bucket_of[b[0]] for b in a]
    changes = sum(x != y for x, y in zip(seq, seq[1:]))
    assert changes > len(seq) // 3


def test_no_shuffle_keeps_dataset_order():
    bucket_of = ["1:1"] * 5 + ["4:3"] * 3
    s = BucketBatchSampler(bucket_of, 2, shuffle=False, num_replicas=1, rank=0)
    assert list(s) == [[0, 1], [2, 3], [4], [5, 6], [7]]
    assert len(s) == 5


def test_disjoint_across_ranks_and_bad_args():
    bucket_of = _buckets({"1:1": 40, "4:3": 40})
    r0, r1 = _epoch(bucket_of, 5, 2)
    assert not set(i for b in r0 for i in b) & set(i for b in r1 for i in b)
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler(bucket_of, 4, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler(bucket_of, 0)
    default = BucketBatchSampler(bucket_of, 4)  # torch.distributed not initialised -> 1 / 0
    assert (default.num_replicas, default.rank) == (1, 0)


def test_lightning_sets_the_epoch_and_injection_fails_loudly():
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader, DistributedSampler

    bucket_of = _buckets({"1:1": 10, "4:3": 6})
    s = BucketBatchSampler(bucket_of, 4, num_replicas=1, rank=0)
    loader = DataLoader(list(range(len(bucket_of))), batch_sampler=s)
    _set_sampler_epoch(loader, 5)  # what Lightning's fit/eval loops call each epoch
    assert s.epoch == 5
    with pytest.raises(TypeError, match="use_distributed_sampler=False"):
        BucketBatchSampler(DistributedSampler(list(range(4)), num_replicas=1, rank=0), 4)
