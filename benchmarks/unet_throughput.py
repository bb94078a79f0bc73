"""Training-step throughput and peak memory: EdifyUNet (wavelet packet) vs diffusers UNet2DConditionModel.

For the "tiny" and "small100m" presets at 64 and 256 px, training steps (forward, MSE loss,
backward, AdamW step) are timed for our U-Net and for a diffusers ``UNet2DConditionModel`` with the
same level widths and a parameter count within 10% (checked: the script stops otherwise), under the same
threads, memory format and dtype, after warm-up steps; each step is timed on its own and the median is
reported with the spread (min-max). Both work on the same 3-channel pixels (as
DeepFloyd IF does; ours sees them as 48 x H/4 x W/4 wavelet coefficients). Every configuration
runs in its own forked process so that peak memory is measured separately: on CPU the growth of the
process's peak RSS over its RSS before the model is built (approximate: it also counts library
pages first touched by the child), on CUDA ``max_memory_allocated``.

Needs the ``bench`` extra (``pip install diffusers``). Usage::

    python benchmarks/unet_throughput.py          # CPU, 2 threads, channels-last, ~10 min on 2 idle cores
    python benchmarks/unet_throughput.py --device cuda --bf16 --iters 20 --iters256 20 --warmup256 5 \
        --batch64 32 --batch256 8

Last line: ``unet_throughput: speedup_vs_diffusers_256px=<x> speedup_vs_diffusers_64px=<y>`` = median
images/s of our small100m over diffusers' at 256 and 64 px.
"""

from __future__ import annotations

import argparse
import resource
import time

from lit_edify.benchmark import run_in_child

# diffusers config per preset: same widths per level as ours, layers_per_block = num_res_blocks,
# cross-attention blocks only at the deepest level (+ its mid block); counts within 10% of ours (checked).
DIFFUSERS = {
    "tiny": dict(block_out_channels=(64, 64, 128), attention_head_dim=32, norm_num_groups=16),
    "small100m": dict(block_out_channels=(128, 256, 256, 512), attention_head_dim=64),
}
CONTEXT_LEN = 80  # 77 text tokens + camera/media tokens


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _build(impl: str, preset: str):
    from lit_edify.nn.presets import UNET_PRESETS, build_unet

    kw = UNET_PRESETS[preset]
    if impl == "ours":
        return build_unet(preset), kw["context_dim"]
    from diffusers import UNet2DConditionModel

    cfg = DIFFUSERS[preset]
    n = len(cfg["block_out_channels"])
    down = ["DownBlock2D"] * (n - 1) + ["CrossAttnDownBlock2D"]
    up = ["CrossAttnUpBlock2D"] + ["UpBlock2D"] * (n - 1)
    model = UNet2DConditionModel(
        in_channels=3, out_channels=3, layers_per_block=kw["num_res_blocks"],
        down_block_types=tuple(down), up_block_types=tuple(up),
        cross_attention_dim=kw["context_dim"], **cfg)
    return model, kw["context_dim"]


def run_one(impl: str, preset: str, res: int, batch: int, iters: int, warmup: int, device: str,
            bf16: bool, channels_last: bool, threads: int) -> dict:
    """Time ``iters`` training steps (batch of random (batch, 3, res, res) pixels) after ``warmup``."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rss0 = _rss_bytes()
    model, ctx_dim = _build(impl, preset)
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, res, res, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    target = torch.randn_like(x)
    c_noise = torch.randn(batch, device=device)
    ctx = torch.randn(batch, CONTEXT_LEN, ctx_dim, device=device)
    mask = torch.ones(batch, CONTEXT_LEN, dtype=torch.bool, device=device)
    mask[:, 40:77] = False  # padded text tokens

    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            if impl == "ours":
                out = model(x, c_noise, ctx, mask)
            else:
                out = model(x, c_noise, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
            loss = (out.float() - target).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):  # allocations, kernel selection
        step()
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    dt = times[len(times) // 2]
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    return dict(impl=impl, preset=preset, res=res, batch=batch, params=n_params, step_s=dt,
                step_min=times[0], step_max=times[-1], img_per_s=batch / dt, peak_mib=peak / 2**20)


def _child(queue, *args, **kwargs) -> None:
    try:
        queue.put(run_one(*args, **kwargs))
    except Exception as e:  # report instead of hanging the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})


def run_isolated(*args, **kwargs) -> dict:
    """run_one in a child process with its own peak-memory counter.

    CPU: forked, sharing the parent's imports; CUDA: spawned (CUDA cannot be used after a fork once
    an import has initialised it in the parent).
    """
    method = "spawn" if kwargs["device"].startswith("cuda") else "fork"
    return run_in_child(f"configuration {args[:3]}", _child, *args, start_method=method, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels-last weights and inputs for both U-Nets (default on)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5, help="timed steps per configuration at 64 px")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at 64 px")
    ap.add_argument("--iters256", type=int, default=3, help="timed steps per configuration at 256 px")
    ap.add_argument("--warmup256", type=int, default=1, help="untimed steps at 256 px")
    ap.add_argument("--batch64", type=int, default=4)
    ap.add_argument("--batch256", type=int, default=1)
    ap.add_argument("--presets", default="tiny,small100m")
    args = ap.parse_args()
    # Import once in the parent so forked children share it (CUDA is only initialised in children).
    import diffusers.models  # noqa: F401
    from diffusers import UNet2DConditionModel  # noqa: F401

    import lit_edify.nn.presets  # noqa: F401

    print(f"device={args.device} bf16={args.bf16} channels_last={args.channels_last} "
          f"threads={args.threads} context_len={CONTEXT_LEN} timed steps: 64px {args.iters} "
          f"(after {args.warmup} warm-up), 256px {args.iters256} (after {args.warmup256} warm-up); "
          "step time = median (min-max)")
    print(f"{'preset':<10} {'px':>4} {'batch':>5} {'impl':<9} {'params':>8} {'step s (min-max)':>24} "
          f"{'img/s':>8} {'peak MiB':>9}")
    results = {}
    t_start = time.time()
    for preset in args.presets.split(","):
        for res in (64, 256):
            small = res <= 64
            for impl in ("ours", "diffusers"):
                r = run_isolated(impl, preset, res, args.batch64 if small else args.batch256,
                                 iters=args.iters if small else args.iters256,
                                 warmup=args.warmup if small else args.warmup256, device=args.device,
                                 bf16=args.bf16, channels_last=args.channels_last, threads=args.threads)
                results[impl, preset, res] = r
                spread = f"{r['step_s']:.3f} ({r['step_min']:.3f}-{r['step_max']:.3f})"
                print(f"{preset:<10} {res:>4} {r['batch']:>5} {impl:<9} {r['params'] / 1e6:>7.2f}M "
                      f"{spread:>24} {r['img_per_s']:>8.3f} {r['peak_mib']:>9.0f}", flush=True)
            ours, theirs = results["ours", preset, res], results["diffusers", preset, res]
            if abs(theirs["params"] / ours["params"] - 1) > 0.10:
                raise SystemExit(f"{preset}: parameter counts differ by more than 10% "
                                 f"(ours {ours['params']:,}, diffusers {theirs['params']:,}): fix DIFFUSERS")
            print(f"{preset:<10} {res:>4} ours vs diffusers: x{ours['img_per_s'] / theirs['img_per_s']:.2f} "
                  f"images/s, x{theirs['peak_mib'] / max(ours['peak_mib'], 1):.2f} less peak memory "
                  f"(diffusers/ours params {theirs['params'] / ours['params']:.3f})", flush=True)
    print(f"total wall time {time.time() - t_start:.0f} s")
    head = "small100m" if ("ours", "small100m", 256) in results else args.presets.split(",")[-1]
    speedup = {res: results["ours", head, res]["img_per_s"] / results["diffusers", head, res]["img_per_s"]
               for res in (256, 64)}
    print(f"unet_throughput: speedup_vs_diffusers_256px={speedup[256]:.2f} "
          f"speedup_vs_diffusers_64px={speedup[64]:.2f}")


if __name__ == "__main__":
    main()
