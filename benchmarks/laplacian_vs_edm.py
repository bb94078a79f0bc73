"""Laplacian diffusion (16 -> 32 px, switch plan) vs plain EDM at 32 px, same U-Net, same CPU-time budget.

    python benchmarks/laplacian_vs_edm.py                       # ~20-25 min on 2 CPU cores
    python benchmarks/laplacian_vs_edm.py --reuse               # evaluate the saved checkpoints again

Data: Fashion-MNIST (Debian ``dataset-fashion-mnist``), 28x28 greyscale upscaled to 32x32 RGB by the suite's
``ImageTextDataModule`` pipeline; 20 000 training images (``data/fashion_mnist``, prepared with
``lit-edify data fashion-mnist`` if missing) and the first ``--num-reference`` test-set images as the FID /
KID / classifier reference (``data/fashion_mnist_test``). Prompts are the class captions of the test images
("a photo of a sneaker", ...), the same for both methods.

Methods (every network is the ``tiny`` U-Net preset, ``pos_embed_size = resolution / 4``):

* **EDM**: one ``BaseModel`` at 32 px with ``band_factors=[]`` (plain EDM), sigma in [0.002, 80].
* **Laplacian**: a 16 px ``BaseModel`` (plain EDM on ``down(x, 2)``, full range [0.002, 80]) and a 32 px
  ``Upsampler`` (factor 2) whose 32-px detail band is attenuated between ``cutoff / 8`` and ``cutoff``
  (its sigma_max = cutoff). Sampling is the switch plan: 16 px from sigma 80 down to cutoff / 2, the
  resolution switch (Eq. 6-10), then 32 px from ``cutoff`` to 0.

Training: both methods get the same CPU time (``time.process_time``: all threads of the training process, not
wall time, so a shared machine does not bias the comparison). By default each method trains in its own
process with one thread, both at once (on 2 cores the tiny U-Net gains little from a second thread, and
process CPU clocks are independent); ``--no-parallel`` trains them one after the other. The Laplacian budget is split between its two
stages in proportion to their denoiser evaluations at sampling time (``--nfe-low`` of ``--nfe``: 16 of 32
by default, i.e. half / half). AdamW as in the tiny recipe (lr 2e-3, 100 warm-up steps), batch 32, EMA with
a half-life of 10k images (ramp-up 0.1 x images seen); the EMA weights are evaluated and saved.

Evaluation at equal NFE (default 32 denoiser evaluations per image, each a classifier-free-guided U-Net
call): EDM 32 dpmpp_2m steps; Laplacian ``nfe_low`` at 16 px + ``nfe - nfe_low`` at 32 px (dpmpp_2m, the
same guidance in both stages). Reported per method: FID and KID (TF-Inception pool3) against the reference,
caption-classifier accuracy, sampling wall seconds per image, FLOPs per image (``FlopCounterMode`` over one
sampling run: matmul / conv / attention FLOPs, elementwise ops are not counted) and NFE counted from the
U-Net calls. Checkpoints (EMA weights, loadable by ``lit_edify.pipelines.text2image.load_module``) go to
``runs/laplacian_vs_edm/``. The last line is
``laplacian_vs_edm: fid_lap=<a> fid_edm=<b> sample_time_ratio=<lap/edm>``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lit_edify.modules.config import flat
from lit_edify.benchmark import markdown_table, run_grid  # noqa: E402
from lit_edify.diffusion.laplacian import down  # noqa: E402
from lit_edify.io import atomic_save  # noqa: E402
from lit_edify.modules.base import BaseModel  # noqa: E402
from lit_edify.modules.upsampler import Upsampler  # noqa: E402

OUT = ROOT / "runs" / "laplacian_vs_edm"
COMMON = {"unet": "tiny", "text_encoder": "minilm", "max_text_length": 32, "sigma_min": 0.002, "lr": 2e-3,
          "weight_decay": 0.0, "warmup_steps": 100, "sample_solver": "dpmpp_2m"}


# ------------------------------------------------------------------------------------------------ data
def ensure_fashion(folder: Path, split: str, limit: int) -> Path:
    """Prepare ``limit`` Fashion-MNIST ``split`` images into ``folder`` unless it already holds that many."""
    have = sum(1 for _ in folder.rglob("*.png")) if folder.is_dir() else 0
    if have < limit:
        from lit_edify.data_modules.prepare import main as prepare

        print(f"preparing Fashion-MNIST {split} ({limit} images) in {folder}", flush=True)
        if prepare(["fashion-mnist", "--out", str(folder), "--split", split, "--limit", str(limit)]) != 0:
            raise SystemExit("Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist")
    return folder


def load_images(folder: Path, limit: int | None = None, cache_dir: Path | None = None,
                seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``limit`` images of a prepared folder (a seeded random subset in random order, so any prefix mixes the
    classes) through the suite's ImageTextDataModule pipeline (32 px, 1:1).

    Returns (N, 3, 32, 32) uint8 (x_float = u8 / 127.5 - 1, exact for this data) and N captions; cached as
    ``<cache_dir>/<folder name>_<N>_<seed>.pt``.
    """
    from torch.utils.data import DataLoader, Subset

    from lit_edify.data_modules.image_text import ImageTextDataModule

    dm = ImageTextDataModule(root=str(folder), resolution=32, multiple=16, aspects=["1:1"], num_workers=2,
                             p_drop_caption=0.0, val_fraction=0.0)
    n_all = sum(1 for _ in folder.rglob("*.png"))
    n = n_all if limit is None else min(limit, n_all)
    cache = None if cache_dir is None else cache_dir / f"{folder.name}_{n}_{seed}.pt"
    if cache is not None and cache.is_file():
        d = torch.load(cache, weights_only=True)
        return d["images"], d["captions"]
    dm.prepare_data()
    dm.setup("fit")
    order = torch.randperm(len(dm.train_set), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    images, captions = [], []
    for batch in DataLoader(Subset(dm.train_set, order), batch_size=500, num_workers=2,
                            collate_fn=dm.train_set.collate):
        u8 = ((batch["image"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        if not torch.allclose(u8.float() / 127.5 - 1, batch["image"], atol=1e-6):
            raise RuntimeError("images are not 8-bit exact; store them as float instead")
        images.append(u8)
        captions += batch["caption"]
    out = torch.cat(images), captions
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"images": out[0], "captions": out[1]}, cache)
    return out


def to_float(u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 in [-1, 1]."""
    return u8.float() / 127.5 - 1


def reference_batches(images: torch.Tensor, captions: list[str], batch_size: int = 100) -> list[dict]:
    """uint8 images + captions -> the evaluator's reference format: batches {"image" in [-1, 1], "caption"}."""
    return [{"image": to_float(images[i : i + batch_size]), "caption": captions[i : i + batch_size]}
            for i in range(0, len(images), batch_size)]


# ------------------------------------------------------------------------------------------------ models
def edm_model(resolution: int = 32, guidance: float = 2.0) -> BaseModel:
    """Plain single-resolution EDM (no Laplacian bands), the tiny U-Net, full noise range [0.002, 80]."""
    return BaseModel(**flat(**COMMON, unet_overrides={"pos_embed_size": resolution // 4}, resolution=resolution,
                     band_factors=[], band_cutoffs=[], band_starts=None, sigma_max=80.0, p_mean=-1.0, p_std=1.4,
                     sample_steps=32, guidance=guidance))


def upsampler_model(cutoff: float, guidance: float = 2.0) -> Upsampler:
    """32 px Laplacian stage (factor 2): detail band attenuated over [cutoff / 8, cutoff], sigma_max = cutoff."""
    return Upsampler(**flat(**COMMON, unet_overrides={"pos_embed_size": 8}, resolution=32, factor=2, band_factors=[2],
                     band_cutoffs=[cutoff], band_starts=[cutoff / 8], sigma_max=cutoff, p_mean=-1.0, p_std=1.2,
                     sample_steps=16, guidance=guidance))


def save_ckpt(module, path: Path) -> None:
    """The fields ``load_module`` reads: class, hyper-parameters and (EMA) weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"lit_edify_class": f"{type(module).__module__}.{type(module).__qualname__}",
                 "hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)


def train_cpu_budget(module, images: torch.Tensor, captions: list[str], cpu_seconds: float, *, factor: int = 1,
                     batch_size: int = 32, halflife_images: float = 10_000, seed: int = 0, label: str = "") -> dict:
    """Train ``module`` (its own EDM / Laplacian loss) until this process has used ``cpu_seconds`` of CPU time.

    images: (N, 3, H, W) uint8; ``factor`` > 1 trains on ``down(x, factor)``. Batches are drawn uniformly with
    replacement; noise and sigmas come from the module's seeded RNG. Ends with the EMA weights loaded.
    Returns steps, images, CPU seconds, wall seconds and the mean loss of the last 100 steps.
    """
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    ema = {k: v.detach().clone() for k, v in module.state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    module.encode_conditions(sorted(set(captions)), drop=False)  # fill the text-encoder cache outside the budget
    module.train()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    step, losses, next_report = 0, [], 60.0
    while (used := time.process_time() - cpu0) < cpu_seconds:
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x = to_float(images[idx])
        if factor > 1:
            x = down(x, factor)
        with module.seeded(1_000_003 * step + seed + 1):
            loss, _ = module.diffusion_loss({"image": x, "caption": [captions[i] for i in idx.tolist()]})
        loss = loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        seen = step * batch_size
        beta = 0.5 ** (batch_size / max(min(halflife_images, 0.1 * seen), 1e-8))
        with torch.no_grad():
            for k, v in module.state_dict().items():
                if v.is_floating_point():
                    ema[k].lerp_(v.detach(), 1 - beta)
                else:
                    ema[k].copy_(v)
        losses.append(loss.detach().item())
        if used >= next_report:
            print(f"  [{label}] {used:5.0f} / {cpu_seconds:.0f} CPU s, step {step}, loss(100) "
                  f"{sum(losses[-100:]) / len(losses[-100:]):.4f}", flush=True)
            next_report += 60.0
    module.load_state_dict(ema)
    module.eval()
    return {"steps": step, "images": step * batch_size, "cpu_s": time.process_time() - cpu0,
            "wall_s": time.perf_counter() - wall0, "loss_last100": sum(losses[-100:]) / max(1, len(losses[-100:]))}


CKPT_NAMES = {"edm": "edm32.ckpt", "low": "lap16.ckpt", "up": "lap32.ckpt"}
LABELS = {"edm": "EDM 32px", "low": "Laplacian 16px", "up": "Laplacian 32px"}


def train_job(stages: list[tuple[str, float, int]], train_dir: str, num_train: int, out: str, guidance: float,
              cutoff: float, threads: int, data=None) -> dict:
    """Train the (key, cpu_seconds, factor) stages one after the other in this process and save each checkpoint
    to ``out/CKPT_NAMES[key]``; runs in a worker process (data loaded from the cache) or inline. Returns stats."""
    torch.set_num_threads(threads)
    train_u8, train_caps = data or load_images(Path(train_dir), num_train, Path(out) / "cache")
    stats = {}
    for key, seconds, factor in stages:
        torch.manual_seed(0)
        model = upsampler_model(cutoff, guidance) if key == "up" else edm_model(32 // factor, guidance)
        stats[key] = train_cpu_budget(model, train_u8, train_caps, seconds, factor=factor, label=LABELS[key])
        save_ckpt(model, Path(out) / CKPT_NAMES[key])
    return stats


# ------------------------------------------------------------------------------------------------ sampling
def edm_generate(model, nfe: int, solver: str, guidance: float):
    """``generate_fn`` for the evaluator: ``nfe`` steps of a first-/multistep solver at 32 px."""
    def generate(captions, **kw):
        return model.generate(captions, steps=nfe, solver=solver, guidance=guidance, **kw)
    return generate


def laplacian_generate(low, up, nfe_low: int, nfe_high: int, solver: str, guidance: float):
    """``generate_fn``: switch plan, ``nfe_low`` evaluations at 16 px (``nfe_low + 1`` grid levels: the stage
    ends at the switch level without evaluating there) and ``nfe_high`` at 32 px (its grid ends at 0)."""
    from lit_edify.pipelines.text2image import text_to_image

    def generate(captions, *, aspect="1:1", seed=0, pitch=None, dof=None, media_type=None):
        return text_to_image(low, captions, upsampler=up, plan="switch", aspect=aspect, seed=seed,
                             steps=nfe_low + 1, upsampler_steps=nfe_high, solver=solver, guidance=guidance,
                             upsampler_guidance=guidance, pitch=pitch, dof=dof, media_type=media_type)
    return generate


def flops_per_image(generate, captions: list[str]) -> float:
    """Matmul / conv / attention FLOPs of one sampling run, per image (text encodings are cached by then)."""
    from torch.utils.flop_counter import FlopCounterMode

    generate(captions, seed=0)  # warm the text-encoder cache so only sampling is counted
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        generate(captions, seed=0)
    return counter.get_total_flops() / len(captions)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-cpu-min", type=float, default=8.0, help="training CPU minutes per method")
    p.add_argument("--nfe", type=int, default=32, help="denoiser evaluations per image for both methods")
    p.add_argument("--nfe-low", type=int, default=16, help="of --nfe, evaluations at 16 px (Laplacian)")
    p.add_argument("--cutoff", type=float, default=2.0, help="32-px detail-band cutoff = upsampler sigma_max")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--solver", default="dpmpp_2m")
    p.add_argument("--num-images", type=int, default=500, help="generated images per method")
    p.add_argument("--num-reference", type=int, default=1000, help="real test images (FID / KID reference)")
    p.add_argument("--num-train", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=50, help="images per sampling call")
    p.add_argument("--threads", type=int, default=2, help="torch threads for evaluation")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads of each training process")
    p.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True,
                   help="train the two methods concurrently, one process each (each has its own CPU clock)")
    p.add_argument("--reuse", action="store_true", help="load the saved checkpoints instead of training")
    p.add_argument("--out", default=str(OUT))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    from torchvision.utils import save_image

    from lit_edify.metrics import GeneratorEvaluator
    from lit_edify.pipelines.text2image import load_module

    a = parse(argv)
    if not 0 < a.nfe_low < a.nfe:
        raise SystemExit(f"--nfe-low must be in (0, {a.nfe}), got {a.nfe_low}")
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    train_dir = ensure_fashion(ROOT / "data" / "fashion_mnist", "train", a.num_train)
    test_dir = ensure_fashion(ROOT / "data" / "fashion_mnist_test", "test", a.num_reference)
    ref_u8, ref_caps = load_images(test_dir, a.num_reference, out / "cache")
    budget = 60.0 * a.budget_cpu_min
    share_low = a.nfe_low / a.nfe
    paths = {k: out / name for k, name in CKPT_NAMES.items()}
    stats_path = out / "train_stats.json"
    print(f"budget: {a.budget_cpu_min:g} CPU-min per method (process CPU time, {a.train_threads} thread(s) per "
          f"training process, {'both methods concurrently' if a.parallel else 'one after the other'}); Laplacian "
          f"split {share_low:.0%} to the 16 px stage, {1 - share_low:.0%} to the 32 px stage (its share of NFE)",
          flush=True)
    if a.reuse and all(p.is_file() for p in paths.values()) and stats_path.is_file():
        models = {k: load_module(p) for k, p in paths.items()}
        stats = json.loads(stats_path.read_text())
        print(f"reusing checkpoints in {out} (trained earlier)")
    else:
        train_u8, train_caps = load_images(train_dir, a.num_train, out / "cache")
        print(f"data: {len(train_u8)} training images, {len(ref_u8)} reference test images, "
              f"{len(set(train_caps))} classes", flush=True)
        jobs = {"edm": [("edm", budget, 1)], "lap": [("low", budget * share_low, 2), ("up", budget * (1 - share_low), 1)]}
        stats = {"budget_cpu_s": budget, "train_threads": a.train_threads}
        if a.parallel:  # one process per method, each with its own CPU clock and train_threads threads
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            del train_u8
            with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(train_job, js, str(train_dir), a.num_train, str(out), a.guidance, a.cutoff,
                                       a.train_threads) for js in jobs.values()]
                for f in futures:
                    stats.update(f.result())
        else:
            torch.set_num_threads(a.train_threads)
            for js in jobs.values():
                stats.update(train_job(js, str(train_dir), a.num_train, str(out), a.guidance, a.cutoff,
                                       a.train_threads, (train_u8, train_caps)))
            torch.set_num_threads(a.threads)
        models = {k: load_module(p) for k, p in paths.items()}
        stats_path.write_text(json.dumps(stats, indent=1))
    for k, name in (("edm", "EDM 32 px"), ("low", "Laplacian 16 px stage"), ("up", "Laplacian 32 px stage")):
        s = stats[k]
        print(f"trained {name}: {s['steps']} steps ({s['images']} images) in {s['cpu_s']:.0f} CPU s / "
              f"{s['wall_s']:.0f} wall s, final loss {s['loss_last100']:.4f}", flush=True)

    evaluator = GeneratorEvaluator(reference_batches(ref_u8, ref_caps), fid=True, kid=True, adherence="classifier",
                                   seed=0).prepare()
    prompts = evaluator.default_prompts(a.num_images)
    gens = {"edm": edm_generate(models["edm"], a.nfe, a.solver, a.guidance),
            "lap": laplacian_generate(models["low"], models["up"], a.nfe_low, a.nfe - a.nfe_low, a.solver,
                                      a.guidance)}
    nets = {"edm": [models["edm"].net], "lap": [models["low"].net, models["up"].net]}
    results = {}
    for key in ("edm", "lap"):
        print(f"sampling + scoring {key}: {a.num_images} images at NFE {a.nfe}", flush=True)
        rec = run_grid(lambda s, n, key=key: gens[key], evaluator, prompts, [(a.solver, a.nfe)],
                       nfe_of=lambda s, n: a.nfe, count_modules=nets[key], batch_size=a.batch_size, seed=0)[0]
        rec["flops_per_image"] = flops_per_image(gens[key], [p["caption"] for p in prompts[:4]])
        results[key] = rec
        with torch.no_grad():
            grid = gens[key]([p["caption"] for p in prompts[:40]], seed=123)
        save_image((grid + 1) / 2, out / f"samples_{key}.png", nrow=10)
    save_image((to_float(ref_u8[:40]) + 1) / 2, out / "samples_real.png", nrow=10)

    rows = []
    for key, name, train in (("edm", "EDM 32 px", f"{stats['edm']['steps']}"),
                             ("lap", "Laplacian 16->32 px", f"{stats['low']['steps']} + {stats['up']['steps']}")):
        r = results[key]
        rows.append({"method": name, "train steps": train, "nfe": r["nfe_measured"],
                     "sec_per_image": r["sec_per_image"], "GFLOPs / image": r["flops_per_image"] / 1e9,
                     **{k: r[k] for k in ("fid", "kid_mean", "classifier_accuracy")}})
    table = markdown_table(rows, first=("method", "train steps", "nfe", "sec_per_image", "GFLOPs / image"))
    lap, edm = results["lap"], results["edm"]
    ratio = lap["sec_per_image"] / edm["sec_per_image"]
    summary = {"args": vars(a), "train": stats, "results": results, "sample_time_ratio": ratio,
               "flops_ratio": lap["flops_per_image"] / edm["flops_per_image"],
               "classifier_real_accuracy": edm.get("classifier_real_accuracy"),
               "total_wall_s": time.perf_counter() - t_start}
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"\nFashion-MNIST 32 px, {a.num_images} generated vs {len(ref_u8)} real test images per FID "
          f"(biased high at this size), {a.solver}, guidance {a.guidance}, equal CPU budget "
          f"{a.budget_cpu_min:g} min per method; Laplacian NFE = {a.nfe_low} @16px + {a.nfe - a.nfe_low} @32px, "
          f"cutoff {a.cutoff:g} @32px. Classifier accuracy on held-out real images: "
          f"{edm.get('classifier_real_accuracy', float('nan')):.1%}.\n")
    print(table)
    print(f"\nFLOPs ratio lap/edm: {summary['flops_ratio']:.3f}; total wall time {summary['total_wall_s']:.0f} s; "
          f"checkpoints and sample grids in {out}")
    fmt = (lambda v: f"{v:.2f}" if math.isfinite(v) else "nan")
    print(f"laplacian_vs_edm: fid_lap={fmt(lap['fid'])} fid_edm={fmt(edm['fid'])} sample_time_ratio={ratio:.3f}")
    return summary


if __name__ == "__main__":
    main()
