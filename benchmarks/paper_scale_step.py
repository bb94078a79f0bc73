"""Paper-scale training step on one GPU: are the recipes' sizes and per-GPU batches real?

Builds the denoiser of ``recipes/base256.yaml`` (2.7B U-Net at 256 px) and ``recipes/upsampler1k.yaml``
(1.6B at 1024 px) as the recipes do (bf16 autocast, activation checkpointing, AdamW, EMA copy), feeds
T5-XXL-shaped text tokens (B, 512, 4096) (the frozen encoder's cost is excluded: its outputs are cached),
and runs the EDM loss under the Laplacian forward process with the recipe's per-GPU batch, halving the
batch on out-of-memory. Prints step time, images/s, peak memory and model FLOPs utilisation per model:
MFU = (forward + backward FLOPs per image, counted by ``torch.utils.flop_counter`` on the U-Net, see
``lit_edify/nn/flops.py``) x images/s / the device's dense bf16 peak (n/a on CPU or an unknown device).

    python benchmarks/paper_scale_step.py                      # on a GPU
    python benchmarks/paper_scale_step.py --preset tiny --device cpu --steps 2   # smoke test
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_edify.diffusion.edm import denoising_loss, precondition, sample_sigmas  # noqa: E402
from lit_edify.diffusion.laplacian import LaplacianSchedule  # noqa: E402
from lit_edify.nn.conditioning import ConditionEmbedder  # noqa: E402
from lit_edify.nn.flops import device_bf16_peak, training_flops_per_image  # noqa: E402
from lit_edify.nn.presets import build_unet, count_parameters  # noqa: E402

MODELS = {  # name: (preset, resolution, per-GPU batch of the recipe, band factor, cutoff, start, sigma_max)
    "base256": ("base2.7b", 256, 32, 2, 8.0, 1.0, 80.0),
    "upsampler1k": ("upsampler1k1.6b", 1024, 16, 4, 4.0, 0.5, 4.0),
}


def run(name: str, preset: str, res: int, batch: int, factor: int, cutoff: float, start: float, smax: float,
        device: str, steps: int, text_len: int, text_dim: int) -> dict:
    torch.manual_seed(0)
    if device != "cpu":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with torch.device("meta"):  # count model FLOPs without memory (same layout as the trained net)
        flops = training_flops_per_image(build_unet(preset, pos_embed_size=res // 4), res, res, text_len + 3)
    net = build_unet(preset, use_checkpoint=device != "cpu", pos_embed_size=res // 4).to(device)
    emb = ConditionEmbedder(text_dim, net.context_dim).to(device)
    params = list(net.parameters()) + list(emb.parameters())
    n_params = count_parameters(net) + count_parameters(emb)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device != "cpu")
    ema = [p.detach().clone() for p in params]
    sched = LaplacianSchedule((factor,), (cutoff,), (start,))
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    while batch >= 1:
        try:
            x0 = torch.rand(batch, 3, res, res, device=device) * 2 - 1
            tokens = torch.randn(batch, text_len, text_dim, device=device)
            mask = torch.ones(batch, text_len, dtype=torch.bool, device=device)
            labels = torch.zeros(batch, dtype=torch.long, device=device)
            times = []
            for i in range(steps + 2):
                if device != "cpu":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.autocast(device.split(":")[0], dtype=dtype, enabled=device != "cpu"):
                    ctx, cmask = emb(tokens, mask, labels, labels, labels)
                    sigma = sample_sigmas(batch, -1.2, 1.2, 0.002, smax, device=device)
                    loss = denoising_loss(lambda x, s: precondition(net, x, s, 0.5, context=ctx, context_mask=cmask),
                                          x0, sigma, sched, 0.5).mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1e-4)
                if device != "cpu":
                    torch.cuda.synchronize()
                if i >= 2:  # two warm-up steps
                    times.append(time.perf_counter() - t0)
            step = sorted(times)[len(times) // 2]
            peak = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else float("nan")
            dev_peak = device_bf16_peak(torch.cuda.get_device_name(device)) if device != "cpu" else None
            mfu = flops * batch / step / dev_peak if dev_peak else float("nan")
            print(f"{name:12s} {preset:16s} params={n_params / 1e9:.3f}B res={res} batch/GPU={batch} "
                  f"step={step:.3f}s images/s={batch / step:.1f} peak_mem={peak:.1f}GiB "
                  f"train_TFLOP/image={flops / 1e12:.3f} MFU={mfu:.1%} loss={loss.item():.3f}", flush=True)
            return {"batch": batch, "step": step, "peak": peak, "ips": batch / step, "mfu": mfu}
        except torch.OutOfMemoryError:
            print(f"{name}: batch {batch} out of memory, halving", flush=True)
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            batch //= 2
    raise RuntimeError(f"{name}: even batch 1 does not fit")


@torch.no_grad()
def sampling(device: str, preset_base: str, preset_up: str, res: int, steps: tuple[int, int], batch: int) -> dict:
    """Wall time of 1K sampling at equal NFE: cascade, switch, and a single-resolution EDM model at 1024 px.

    Random weights (only the cost is measured); CFG doubles the batch; bf16 autocast on GPU.
    """
    from lit_edify.diffusion.plans import Stage, sample_plan

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    nets = {k: build_unet(p, pos_embed_size=r // 4).to(device).eval() for k, p, r in
            (("base", preset_base, res), ("up", preset_up, 4 * res))}
    for net in nets.values():  # non-zero output layer, so the sampler does real work
        torch.nn.init.normal_(net.conv_out.weight, std=1e-3)
    ctx = torch.randn(2 * batch, 512, nets["base"].context_dim, device=device)

    def denoiser(net):
        def d(x, s):
            with torch.autocast(device.split(":")[0], dtype=dtype, enabled=device != "cpu"):
                out = precondition(net, torch.cat([x, x]), torch.cat([s, s]), 0.5, context=ctx).float()
            u, c = out.chunk(2)
            return u + 4.0 * (c - u)
        return d

    base_sched, up_sched = LaplacianSchedule((2,), (8.0,), (1.0,)), LaplacianSchedule((4,), (4.0,), (0.5,))
    n1, n2 = steps
    runs = {
        "cascade": ([Stage(denoiser(nets["base"]), base_sched, 0.002, 80.0, n1),
                     Stage(denoiser(nets["up"]), up_sched, 0.002, 4.0, n2, factor=4)], "cascade", res),
        "switch": ([Stage(denoiser(nets["base"]), base_sched, 0.002, 80.0, n1),
                    Stage(denoiser(nets["up"]), up_sched, 0.002, 4.0, n2, factor=4)], "switch", res),
        "edm_1024": ([Stage(denoiser(nets["up"]), LaplacianSchedule(), 0.002, 80.0, n1 + n2)], "cascade", 4 * res),
    }
    out = {}
    for name, (stages, plan, side) in runs.items():
        for rep in range(2):  # first run warms up
            if device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            x = sample_plan(stages, (batch, 3, side, side), plan, "dpmpp_2m", device=device)
            if device != "cpu":
                torch.cuda.synchronize()
            out[name] = (time.perf_counter() - t0) / batch
        assert x.shape[-1] == 4 * res
        print(f"sampling {name:9s} NFE={n1 + n2} (x2 for CFG) batch={batch} -> {4 * res}px: "
              f"{out[name]:.3f} s/image", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--preset", default=None, help="override the U-Net preset (e.g. tiny for a CPU smoke test)")
    p.add_argument("--only", choices=sorted(MODELS), default=None)
    p.add_argument("--sample-batch", type=int, default=4, help="images per sampling run (0 skips sampling)")
    a = p.parse_args()
    if a.device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    results = {}
    for name, (preset, res, batch, f, cut, start, smax) in MODELS.items():
        if a.only and name != a.only:
            continue
        if a.preset:
            preset, res, batch = a.preset, min(res, 64), 2
        results[name] = run(name, preset, res, batch, f, cut, start, smax, a.device, a.steps, 512, 4096)
    samp = {}
    if a.sample_batch:
        base_p, up_p, res = ("base2.7b", "upsampler1k1.6b", 256) if not a.preset else (a.preset, a.preset, 16)
        samp = sampling(a.device, base_p, up_p, res, (32, 24) if not a.preset else (3, 2), a.sample_batch)
    ratio = f" switch_vs_cascade_time={samp['switch'] / samp['cascade']:.2f}" if samp else ""
    print("paper_scale_step: " + " ".join(f"{k}_images_per_s={v['ips']:.1f} {k}_batch={v['batch']} "
                                          f"{k}_peak_GiB={v['peak']:.1f} {k}_mfu={v['mfu']:.3f}"
                                          for k, v in results.items()) + ratio)


if __name__ == "__main__":
    main()
