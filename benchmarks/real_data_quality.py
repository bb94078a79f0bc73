"""Real-data quality of the laptop recipe: the Fashion-MNIST quickstart trained for its budget, then scored.

    python benchmarks/real_data_quality.py                   # 7000 steps + 2000 samples, about 30-40 min on 2 cores
    python benchmarks/real_data_quality.py --steps 3000      # shorter budget

Runs ``lit-edify quickstart --data fashion-mnist`` (the tiny base recipe + ``recipes/tiny/fashion_mnist.yaml``
through the same LightningCLI and Trainer users run; the data is prepared from the Debian package
``dataset-fashion-mnist`` on first use), which writes FID / KID of ``--num-images`` samples against the 10k test
images (TF-Inception), the accuracy of a real-image classifier on the samples and artefact statistics. For the
shapes dataset it scores a trained quickstart checkpoint (``--shapes-ckpt``; default: the quickstart's own) the
same way, so the 4-pixel block-border ratio (generated / real, 1.0 = no wavelet-block artefacts) is printed for
both datasets.

Last line: ``real_data_quality: fid=<x> classifier_acc=<y> cpu_minutes=<z>`` with ``cpu_minutes`` = training
wall-clock minutes x training threads (core-minutes, so machines with different core counts compare).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def quickstart(args: list[str], out: Path) -> dict:
    from lit_edify.quickstart import main

    rc = main([*args, "--out", str(out)])
    if rc != 0:
        raise SystemExit(f"lit-edify quickstart {' '.join(args)} failed with exit status {rc}")
    return json.loads((out / "report.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the quickstart's, 7000)")
    p.add_argument("--num-images", type=int, default=2000, help="generated images for FID / KID / accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shapes-ckpt", default="runs/quickstart/version_0/checkpoints/final.ckpt",
                   help="trained shapes quickstart checkpoint to score (trained first if missing)")
    p.add_argument("--out", default="runs/real_data_quality")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    # runs/<out>_fashion-mnist and _shapes: siblings of the quickstart's folders, so they share its metrics cache
    # (runs/.cache: the 10k test images' Inception features and the classifier, computed once)
    out = Path(a.out)
    fm_args = ["--data", "fashion-mnist", "--num-images", str(a.num_images), "--seed", str(a.seed)]
    if a.steps:
        fm_args += ["--steps", str(a.steps)]
    fm = quickstart(fm_args, out.with_name(out.name + "_fashion-mnist"))
    shapes_args = ["--ckpt", a.shapes_ckpt] if Path(a.shapes_ckpt).is_file() else ["--seed", str(a.seed)]
    shapes = quickstart(shapes_args, out.with_name(out.name + "_shapes"))

    s, art = fm["scores"], fm["artefacts"]
    rows = [("fashion-mnist", f"{art['block_ratio_vs_real']:.3f}", f"{art['channel_spread'] * 255 / 2:.2f}/255"),
            ("shapes", f"{shapes['artefacts']['block_ratio_vs_real']:.3f}",
             f"{shapes['artefacts']['channel_spread'] * 255 / 2:.2f}/255 "
             f"(real {shapes['artefacts']['channel_spread_real'] * 255 / 2:.2f}/255)")]
    print("\n| data | block-border ratio (generated / real) | mean channel spread |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nFashion-MNIST: {fm['steps']} steps in {fm['train_s'] / 60:.1f} min on {a.threads} thread(s); "
          f"{int(s['num_images'])} samples: FID {s['fid']:.1f}, KID {s['kid_mean']:.4f} +- {s['kid_std']:.4f}, "
          f"classifier accuracy {s['classifier_accuracy']:.3f} (real test images {s['classifier_real_accuracy']:.3f})")
    print(f"real_data_quality: fid={s['fid']:.2f} classifier_acc={s['classifier_accuracy']:.4f} "
          f"cpu_minutes={fm['train_s'] / 60 * a.threads:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
