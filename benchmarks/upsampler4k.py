"""Acceptance figures of the 4K upsampler (issue 11, report Sec. 4) with the tiny 64 -> 256 px chain.

    python benchmarks/upsampler4k.py --up1k runs/tiny_upsampler1k_wallpapers/version_0/checkpoints/last.ckpt \
        --up4k runs/tiny_upsampler4k/version_0/checkpoints/last.ckpt

(train them with recipes/tiny/upsampler1k_wallpapers.yaml, then recipes/tiny/upsampler4k.yaml; the wallpapers come
from `apt-get install plasma-workspace-wallpapers`). Prints, on held-out wallpaper crops (the images the data
module's stable split keeps out of training):

* fidelity: PSNR(down(output), input) of the SDEdit baseline (the same 1K model, noise rescaled, no ControlNet:
  a fresh Upsampler4K) and of the 4K upsampler at w_r in {0, 1, 3}; per-channel colour drift
  |mean(down(output)) - mean(input)| in 8-bit units; detail-band energy mean((x - up(down(x)))^2) of the outputs,
  the real crops and bicubic upsampling;
* seams: 512 px outputs from 128 px tiles, blended and not, ratio of the mean absolute difference across tile
  borders to that between other neighbouring pixels;
* memory: peak RSS while sampling (VmHWM, reset after loading the model) of a fresh process per output size
  (1024, 2048, 4096 px) at one tile size, and of the same sampler with a free denoiser (what the output-sized
  buffers alone cost); time per megapixel.

The headline is the last line: ``upsampler4k: psnr_gain_vs_sdedit_db=<x> seam_ratio=<y> peak_gib_4096=<z>``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lit_edify.benchmark import run_in_child
from lit_edify.data_modules.highres import load_scaled, scan_images, split
from lit_edify.diffusion.laplacian import down, up
from lit_edify.diffusion.tiled import TiledDenoiser, seam_ratio
from lit_edify.io import save_image_atomic


def held_out_crops(root: str, short_side: int, crop: int, per_image: int = 2) -> torch.Tensor:
    """Crops (N, 3, crop, crop) in [-1, 1] of the held-out wallpapers (the split of the recipes: fraction 0.2, seed
    0), at the scale where the shorter side is ``short_side``: ``per_image`` crops spread along the longer side."""
    _, val = split(scan_images(root, 1024, one_per_folder=True), 0.2, 0)
    out = []
    for p in val:
        im = load_scaled(p, short_side)
        h, w = im.shape[-2:]
        for k in range(per_image):
            top = (h - crop) // 2 if h > w else 0
            left = (w - crop) * k // max(1, per_image - 1) if w >= h else (w - crop) // 2
            top = (h - crop) * k // max(1, per_image - 1) if h > w else (h - crop) // 2
            out.append(im[:, top:top + crop, left:left + crop])
    return torch.stack(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), averaged over the batch."""
    mse = (a - b).square().flatten(1).mean(1)
    return float((10 * torch.log10(4 / mse)).mean())


def detail_energy(x: torch.Tensor, f: int = 4) -> float:
    """mean((x - up(down(x, f), f))^2): energy of the detail band the 4x stage adds."""
    return float((x - up(down(x, f), f)).square().mean())


def colour_drift(out: torch.Tensor, x_low: torch.Tensor, f: int = 4) -> float:
    """Largest per-image, per-channel |mean(down(out)) - mean(x_low)| in 8-bit units (255 per [0, 1])."""
    d = (down(out, f).mean(dim=(-2, -1)) - x_low.mean(dim=(-2, -1))).abs()
    return float(d.max() * 0.5 * 255)


def _status_kib(key: str) -> int:
    """A /proc/self/status entry in KiB (VmHWM: peak resident set size since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _peak_child(queue, ckpt: str, side: int, tile: int, overlap: int, steps: int, free: bool) -> None:
    """Child: upsample a (side/4)^2 input to side^2 with the given tile; peak RSS and seconds."""
    try:
        torch.set_num_threads(1)
        from lit_edify.modules.upsampler4k import Upsampler4K
        from lit_edify.pipelines.checkpoints import load_module

        model = load_module(ckpt)
        assert isinstance(model, Upsampler4K)
        if free:  # the sampler and tiler with a denoiser that costs nothing: the image-sized buffers alone
            model.denoise = lambda x, s, c, m, x_low, canvas=None: up(x_low, 4).to(x) + 0 * x
        low = torch.rand(1, 3, side // 4, side // 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
        # warm-up (text encoder etc.); the sampler and tiler alone, without the colour fix
        model.upsample(low[..., :16, :16], steps=1, tile=tile, recon_guidance=0.0, restore_low=False)
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
        start = time.perf_counter()
        out = model.upsample(low, steps=steps, tile=tile, tile_overlap=overlap, recon_guidance=0.0, restore_low=False)
        seconds = time.perf_counter() - start
        assert out.shape[-1] == side and torch.isfinite(out).all()
        queue.put({"peak_gib": _status_kib("VmHWM") / 2**20, "seconds": seconds})
    except Exception as e:  # noqa: BLE001
        queue.put({"error": f"{type(e).__name__}: {e}"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--up1k", required=True, help="the tiny 1K stage the 4K model started from (SDEdit baseline)")
    p.add_argument("--up4k", required=True, help="the trained Upsampler4K")
    p.add_argument("--root", default="/usr/share/wallpapers")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--weights", default="0,1,3", help="reconstruction guidance weights to compare")
    p.add_argument("--per-image", type=int, default=2, help="held-out crops per held-out image")
    p.add_argument("--mem-sizes", default="1024,2048,4096")
    p.add_argument("--mem-tile", type=int, default=256)
    p.add_argument("--mem-steps", type=int, default=1)
    p.add_argument("--out", default="runs/upsampler4k/benchmark")
    a = p.parse_args()
    torch.set_num_threads(1)
    from lit_edify.modules.upsampler4k import Upsampler4K
    from lit_edify.pipelines.checkpoints import load_module

    out_dir = Path(a.out)
    model = load_module(a.up4k)
    sdedit = Upsampler4K(a.up1k).eval()  # zero ControlNet: the 1K model with the rescaled noise range
    real = held_out_crops(a.root, 256, 256, a.per_image)
    x_low = down(real, 4)
    print(f"held-out crops: {real.shape[0]} of 256 px (inputs {tuple(x_low.shape[-2:])} px), {a.steps} steps, "
          "one CPU thread (timings under contention with other jobs)")
    bicubic = F.interpolate(x_low, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    e_real, e_bic = detail_energy(real), detail_energy(bicubic)
    raw = {"restore_low": False}  # the sampler alone: the colour fix (on by default) is its own row
    rows = {"sdedit": sdedit.upsample(x_low, steps=a.steps, recon_guidance=0.0, tile=256, **raw)}
    weights = [float(w) for w in a.weights.split(",")]
    for w in weights:
        start = time.perf_counter()
        rows[f"w_r={w:g}"] = model.upsample(x_low, steps=a.steps, recon_guidance=w, tile=256, **raw)
        print(f"  w_r={w:g}: {time.perf_counter() - start:.1f} s")
    rows["w_r=1+fix"] = model.upsample(x_low, steps=a.steps, recon_guidance=1.0, tile=256, restore_low=True)
    print(f"detail energy: real {e_real:.5f}  bicubic {e_bic:.5f}  (rows w_r=*: the sampler alone; w_r=1+fix: with "
          "the colour fix restore_low, what `lit-edify upsample` does by default)")
    for name, y in rows.items():
        print(f"{name:8s} psnr_down_db={psnr(down(y, 4), x_low):.2f} colour_drift_8bit={colour_drift(y, x_low):.2f} "
              f"detail_energy={detail_energy(y):.5f} detail_vs_real={detail_energy(y) / e_real:.2f}")
    grid = torch.cat([up(x_low, 4), bicubic, rows["sdedit"], *[rows[f"w_r={w:g}"] for w in weights], real])
    save_image_atomic((grid + 1) / 2, out_dir / "heldout_grid.png", nrow=real.shape[0])
    print(f"grid: {out_dir / 'heldout_grid.png'} (rows: input, bicubic, SDEdit, "
          + ", ".join(f"w_r={w:g}" for w in weights) + ", real)")

    # seams: 512 px outputs from 128 px tiles, held-out crops at the 4K scale of a 512 px image
    big = held_out_crops(a.root, 512, 512, 1)[:1]
    low = down(big, 4)
    seams, grid = {}, model.tile_multiple()
    rows_, cols_ = TiledDenoiser(None, 128, 32, grid).edges(512, 512)
    for blend in (True, False):
        y = model.upsample(low, steps=a.steps, tile=128, tile_overlap=32, blend=blend, **raw)
        seams[blend] = seam_ratio(y, rows_, cols_, period=grid)
        save_image_atomic((y + 1) / 2, out_dir / f"seams_{'blended' if blend else 'unblended'}.png")
        print(f"seams {'blended' if blend else 'unblended'}: ratio {seams[blend]:.3f} against pairs on the same "
              f"{grid} px grid ({seam_ratio(y, rows_, cols_):.3f} against all pairs, which counts the network's "
              "4 px blocks)")
    print(f"seams (512 px from 128 px tiles, overlap 32): blended {seams[True]:.3f}  unblended {seams[False]:.3f}"
          f"  real crop {seam_ratio(big, rows_, cols_, period=grid):.3f}")

    # memory and time per output size at one tile size, each in a fresh process
    sizes = [int(s) for s in a.mem_sizes.split(",")]
    mem = {}
    for side in sizes:
        m = run_in_child(f"{side} px", _peak_child, a.up4k, side, a.mem_tile, 32, a.mem_steps, False,
                         start_method="spawn")
        b = run_in_child(f"{side} px buffers", _peak_child, a.up4k, side, a.mem_tile, 32, a.mem_steps, True,
                         start_method="spawn")
        mem[side] = (m["peak_gib"], b["peak_gib"])
        mp = side * side / 1e6
        print(f"{side} px: peak_rss_gib={m['peak_gib']:.3f} buffers_only_gib={b['peak_gib']:.3f} "
              f"beyond_buffers_gib={m['peak_gib'] - b['peak_gib']:.3f} seconds={m['seconds']:.1f} "
              f"s_per_mp_per_step={m['seconds'] / mp / a.mem_steps:.2f} (tile {a.mem_tile}, {a.mem_steps} step(s))")
    if 2048 in mem and 4096 in mem:
        g = (mem[4096][0] - mem[4096][1]) / max(1e-9, mem[2048][0] - mem[2048][1])
        print(f"growth beyond buffers 2048 -> 4096: {g:.2f}x")

    gain = psnr(down(rows[f"w_r={weights[-1]:g}"], 4), x_low) - psnr(down(rows["sdedit"], 4), x_low)
    if 1.0 in weights:
        gain = psnr(down(rows["w_r=1"], 4), x_low) - psnr(down(rows["sdedit"], 4), x_low)
    peak = mem.get(4096, (math.nan,))[0]
    print(f"upsampler4k: psnr_gain_vs_sdedit_db={gain:.2f} seam_ratio={seams[True]:.3f} peak_gib_4096={peak:.2f}")


if __name__ == "__main__":
    main()
