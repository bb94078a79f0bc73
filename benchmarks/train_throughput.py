"""Training throughput of the tiny recipe under Lightning's Trainer: the eager path vs the optimised one.

    python benchmarks/train_throughput.py                 # CPU, ~6 min on 2 idle cores
    python benchmarks/train_throughput.py --compile       # adds torch.compile to the optimised arm
    python benchmarks/train_throughput.py --device cuda   # GPU: also prints MFU

Both arms train ``recipes/tiny/base32.yaml`` through the project's LightningCLI (same module, data, EMA,
logging, callbacks; validation off) for ``--warmup + --steps`` steps from the same seed, one arm per child
process. Each step is timed from one ``on_train_batch_end`` to the next, so data loading, conditioning,
optimizer, EMA and logging count. The arms differ only in:

* eager: ``channels_last=false``, ``fused_adamw=false`` (the per-tensor AdamW loop), data in the main process
  (``num_workers=0``): what the suite ran before the throughput work.
* optimised: the recipe's defaults (channels-last convolution weights, fused AdamW, data in the main process),
  plus ``compile=true`` with ``--compile`` (the U-Net through inductor, contexts padded to a fixed length) and
  ``--workers N`` rendering workers.

Prints images/s (median step) per arm, the model's achieved GFLOP/s (counted training FLOPs of the U-Net per
image, ``lit_edify.nn.flops``, times images/s), the mean training loss of both arms over windows of 50 steps (same
seed, so the curves should agree within noise), and as its last line
``train_throughput: cpu_speedup=<x> gpu_mfu=<y or n/a>``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_edify.benchmark import run_in_child  # noqa: E402 (after the path set-up)

ARMS = {
    "eager": ["--model.init_args.net.channels_last", "false", "--model.init_args.optim.fused", "false",
              "--data.init_args.num_workers", "0"],
    "optimised": [],
}


def run_arm(name: str, extra: list[str], steps: int, warmup: int, device: str, threads: int, out: str) -> dict:
    """Train one arm in this process; returns per-step seconds and losses (after warm-up)."""
    import torch
    from lightning.pytorch import Callback

    from lit_edify.cli import build_cli

    torch.set_num_threads(threads)

    class StepTimer(Callback):
        def __init__(self):
            self.times, self.losses, self._last = [], [], None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.perf_counter()
            if self._last is not None:
                self.times.append(now - self._last)
            self._last = now
            self.losses.append(float(outputs["loss"]))

    args = ["--config", str(ROOT / "recipes/tiny/base32.yaml"), "--trainer.max_steps", str(steps + warmup),
            "--trainer.max_time", "00:01:00:00", "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
            "--trainer.default_root_dir", f"{out}/{name}",
            "--trainer.accelerator", "gpu" if device == "cuda" else "cpu", *extra]
    timer = StepTimer()
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        cli = build_cli(args, run=False)
    finally:
        sys.argv = argv
    from lit_edify.callbacks.ema import EMA
    cli.trainer.callbacks.extend([EMA(halflife_images=10_000, rampup_ratio=0.1), timer])
    from lit_edify.nn.flops import training_flops_per_image
    res = cli.model.cfg.noise.resolution
    flops = training_flops_per_image(cli.model.net, res, res, cli.model.cfg.conditioning.max_text_length + 3)
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    total = time.perf_counter() - t0
    timed = sorted(timer.times[warmup:])
    step = timed[len(timed) // 2]
    batch = cli.datamodule.hparams.batch_size
    return {"arm": name, "step_s": step, "step_p10": timed[len(timed) // 10], "step_p90": timed[9 * len(timed) // 10],
            "images_per_s": batch / step, "fit_s": total, "losses": timer.losses, "flops_per_image": flops,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu"}


def _child(queue, *args) -> None:
    try:
        queue.put(run_arm(*args))
    except Exception as e:  # report instead of hanging the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=500, help="timed steps per arm (after --warmup)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="torch.compile in the optimised arm")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="rendering workers (DataLoader processes), optimised arm")
    p.add_argument("--out", default=str(ROOT / "runs" / "train_throughput"))
    a = p.parse_args(argv)
    arms = dict(ARMS)
    if a.compile:
        arms["optimised"] = arms["optimised"] + ["--model.init_args.net.compile", "true"]
    if a.workers:
        arms["optimised"] = arms["optimised"] + ["--data.init_args.num_workers", str(a.workers)]
    results = {}
    for name, extra in arms.items():
        r = run_in_child(f"arm {name}", _child, name, extra, a.steps, a.warmup, a.device, a.threads, a.out)
        results[name] = r
        gflops = r["flops_per_image"] * r["images_per_s"] / 1e9
        print(f"{name:10s} {r['images_per_s']:7.1f} images/s  {gflops:5.1f} GFLOP/s  step {r['step_s'] * 1e3:.1f} ms "
              f"(p10 {r['step_p10'] * 1e3:.1f}, p90 {r['step_p90'] * 1e3:.1f})  fit {r['fit_s']:.0f} s "
              f"(incl. start-up{' and compilation' if name == 'optimised' and a.compile else ''})", flush=True)
    e, o = results["eager"]["losses"], results["optimised"]["losses"]
    print("mean training loss per 50 steps (same seed):")
    print(f"{'steps':>10} {'eager':>8} {'optimised':>10}")
    for i in range(0, min(len(e), len(o)) - 49, 50):
        print(f"{i:>4}-{i + 49:<5} {sum(e[i:i + 50]) / 50:8.4f} {sum(o[i:i + 50]) / 50:10.4f}")
    speedup = results["optimised"]["images_per_s"] / results["eager"]["images_per_s"]
    mfu = "n/a"
    if a.device == "cuda":
        from lit_edify.nn.flops import device_bf16_peak
        peak = device_bf16_peak(results["optimised"]["device_name"])
        if peak:
            mfu = f"{results['optimised']['flops_per_image'] * results['optimised']['images_per_s'] / peak:.3f}"
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "results.json").write_text(json.dumps(results, indent=1))
    label = "gpu_speedup" if a.device == "cuda" else "cpu_speedup"
    print(f"train_throughput: {label}={speedup:.2f} gpu_mfu={mfu}")
    return results


if __name__ == "__main__":
    main()
