"""Images per second of ImageTextDataModule on the Tux Paint folder (256 px, 2 workers by default).

    python benchmarks/dataloader_throughput.py [--root data/tuxpaint] [--resolution 256]
        [--num-workers 2] [--batch-size 16] [--epochs 2]

If ``--root`` does not exist it is written first from the Debian package tuxpaint-stamps-default
(``lit-edify data tuxpaint --out ROOT``). Timing covers whole epochs of the train loader (decode, EXIF,
alpha compositing, resize/crop to the bucket shape, caption reading, collation, worker transfer),
after ``setup()`` (the size index is built/refreshed before the clock starts). The first batch of
each epoch (worker start-up) is excluded; images are counted from the batches received.
The last line is ``dataloader_throughput: images_per_s=<x>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data/tuxpaint")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--multiple", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    if not os.path.isdir(args.root):
        from lit_edify.data_modules.prepare import main as prepare

        print(f"{args.root} missing: preparing it from tuxpaint-stamps-default")
        if prepare(["tuxpaint", "--out", args.root]) != 0:
            return 2

    from lit_edify.data_modules.image_text import ImageTextDataModule

    dm = ImageTextDataModule(
        root=args.root,
        resolution=args.resolution,
        multiple=args.multiple,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        seed=0,
    )
    t0 = time.perf_counter()
    dm.prepare_data()
    dm.setup("fit")
    print(
        f"root={args.root} images={len(dm.train_set)} bad={len(dm.bad_samples)} index_s={time.perf_counter() - t0:.2f}"
    )
    print("buckets:", dict(Counter(dm.train_set.bucket_of)))
    print(
        f"resolution={args.resolution} batch_size={args.batch_size} num_workers={args.num_workers} "
        f"torch_threads={torch.get_num_threads()} cpus={os.cpu_count()}"
    )

    loader = dm.train_dataloader()
    timed_images, timed_s = 0, 0.0
    for epoch in range(args.epochs):
        loader.sampler.set_epoch(epoch)
        n_images, start = 0, None
        t_epoch = time.perf_counter()
        for batch in loader:
            dm.on_before_batch_transfer(batch, 0)
            if start is None:  # exclude worker start-up and the first batch
                start = time.perf_counter()
                continue
            n_images += batch["image"].shape[0]
        elapsed = time.perf_counter() - (start or t_epoch)
        print(
            f"epoch {epoch}: {n_images} images in {elapsed:.2f} s after the first batch "
            f"({n_images / max(elapsed, 1e-9):.1f} images/s; whole epoch {time.perf_counter() - t_epoch:.2f} s)"
        )
        timed_images += n_images
        timed_s += elapsed
    if dm.bad_samples:
        print(dm.skip_report())
    print(f"dataloader_throughput: images_per_s={timed_images / max(timed_s, 1e-9):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
