"""Laplacian diffusion (switch plan) vs plain EDM on Fashion-MNIST at 32 and 64 px, equal CPU budget, 3 seeds.

    python benchmarks/laplacian_vs_edm.py          # full run: ~6-7 h on 2 idle cores (2.4 h of it training)
    python benchmarks/laplacian_vs_edm.py --budget-cpu-min 0.3 --num-images 50 --num-reference 200 \\
        --seeds 0 --resolutions 32                 # smoke run, ~7 min
    python benchmarks/laplacian_vs_edm.py --reuse  # keep the stages already trained with the same settings
    python benchmarks/laplacian_vs_edm.py --arms edm --out runs/lve_edm  # one arm per process (one per core)

Every stage is trained by the suite's LightningCLI and Trainer (``lit_edify.benchmark.fit_recipe``, one fresh child
process per fit): ``recipes/tiny/base32.yaml`` (BaseModel) or ``recipes/tiny/upsampler64.yaml`` (Upsampler), then
``recipes/tiny/fashion_mnist.yaml`` (ImageTextDataModule on ``data/fashion_mnist``: the 60k training images less
the recipe's 0.5 % validation hash; batch 32; AdamW lr 2e-3, 100 warm-up steps; the recipe's EMA callback,
half-life 10k images, ramp-up 0.1), and ``--model.init_args.*`` / ``--data.init_args.*`` overrides for the stage.
Every stage trains at a constant learning rate after warm-up with the plain EDM loss weight
(``optim.decay_fraction 0``, ``noise.learned_loss_weight false``, as the 32 px seeds were measured): a CPU budget
has no step count for the recipe's final decay to end on.
A stage's images come from the DataModule at its own resolution, as ``lit-edify fit`` feeds them (the 16 px
images differ from ``down(x32, 2)`` by 0.017 mean absolute value, far below the noise at every switch).
Validation is off, data loading runs in the training process (``num_workers 0``) and
``lit_edify.callbacks.budget.CpuBudget`` stops the fit once the process has used the stage's CPU seconds
(``time.process_time``: all threads, not wall time, so a shared machine does not bias the comparison; set-up and
the text-encoder load are not counted). The EMA weights are exported (``ema.safetensors``), the .ckpt files deleted.

Arms at R px (R = 32 or 64; every network is the ``tiny`` U-Net with the base recipe's overrides, as the quickstart
trains it, and ``pos_embed_size = resolution / 4``):

* **EDM R**: one BaseModel at R px, ``band_factors=[]``, sigma in [0.002, 80], P_mean -1.0, P_std 1.4.
* **Laplacian R**: a 16 px BaseModel (``band_factors=[]``, sigma_max 80, P -1.0 / 1.4) and one Upsampler
  (factor 2, sigma_max = ``--cutoff``, P -1.0 / 1.2) per octave: 16 -> 32, or 16 -> 32 -> 64 (3 Laplacian
  levels; Fashion-MNIST resized to 64 px by the DataModule). The upsampler at 16 * 2^k px attenuates its k
  detail bands j = 0 .. k-1 (finest first) between ``cutoff * 2^j / 8`` and ``cutoff * 2^j``, which matches the
  stage below at the switch. Sampling is the switch plan (``lit_edify.diffusion.plans``): 16 px from sigma 80 to
  cutoff / 2, the resolution switch (Eq. 6-10), each upsampler from cutoff to the next switch (cutoff / 2), the
  last one to 0. Each stage is trained on the sigma interval it samples (16 px: [cutoff / 2, 80], a middle
  upsampler [cutoff / 2, cutoff], the last [0.002, cutoff]); ``--full-range`` trains every stage down to 0.002
  as the previous version did (76 % of the 16 px stage's training sigmas then fall below its switch level).

Both arms sample with ``--nfe`` (32) dpmpp_2m denoiser evaluations per image; the Laplacian split is
``--nfe-split32`` (16 + 16) / ``--nfe-split64`` (14 + 3 + 15: the steps EDM's 32-step Karras schedule takes in each
stage's sigma interval, in 64 px units; the same rule gives 17 + 15 at 32 px). ``--budget-cpu-min``: CPU minutes
per arm, one value or one per ``--resolutions`` entry (default 8 at 32 px, 16 at 64 px); a Laplacian stage gets
its share of the NFE as its share of the budget (the previous version's rule); fits run one after another with
``--train-threads`` (1) each.

Evaluation per (resolution, arm, seed), guidance ``--guidance`` in every stage (``GeneratorEvaluator``): FID and
KID (TF-Inception pool3) of ``--num-images`` images against ``--num-reference`` Fashion-MNIST test images (a seeded
shuffle of the 10k at R px through the same DataModule; the prompts are their class captions), caption-classifier
accuracy, sampling wall seconds per image (``--threads``), FLOPs per image (matmul / conv / attention) and NFE
counted from the U-Net calls. Printed: mean ± std over ``--seeds``, the settings of every stage, which arm wins
each metric ("clear" when the gap exceeds twice its standard error) and last
``laplacian_vs_edm: fid_lap=<a> fid_edm=<b> sample_time_ratio=<lap/edm>`` (32 px means; ``fid_lap64=`` /
``fid_edm64=`` / ``sample_time_ratio64=`` when 64 px ran). ``--out`` (``runs/laplacian_vs_edm/``) holds
results.json (rewritten after every evaluation; earlier evaluations with the same sampling and scoring settings that
this run does not redo are kept in it), samples_<arm><R>_seed<s>.png, samples_real<R>.png and
res<R>/seed<s>/<stage>/ (logs, ema.safetensors, train_stats.json).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lit_edify.benchmark import fit_recipe, markdown_table, run_grid, run_in_child  # noqa: E402

OUT = ROOT / "runs" / "laplacian_vs_edm"
RECIPES = {"base": ROOT / "recipes/tiny/base32.yaml", "up": ROOT / "recipes/tiny/upsampler64.yaml"}
DATA_RECIPE = ROOT / "recipes/tiny/fashion_mnist.yaml"
ARM_NAMES = {"edm": "EDM", "lap": "Laplacian"}


@dataclass
class StageSpec:
    """One trained stage of an arm: recipe kind, resolution, noise settings, NFE and share of the arm's budget."""
    name: str
    kind: str                     # "base" (BaseModel) or "up" (Upsampler, factor 2)
    resolution: int
    sigma_min: float
    sigma_max: float
    p_mean: float
    p_std: float
    band_factors: list
    band_cutoffs: list
    band_starts: list
    nfe: int
    share: float


def arm_stages(res: int, a: argparse.Namespace) -> dict[str, list[StageSpec]]:
    """The EDM and Laplacian arms at ``res`` px (module docstring)."""
    c, split = a.cutoff, (a.nfe_split32 if res == 32 else a.nfe_split64)
    edm = [StageSpec(f"edm{res}", "base", res, 0.002, 80.0, -1.0, 1.4, [], [], [], a.nfe, 1.0)]
    levels = [16 * 2**k for k in range(len(split))]
    lap = []
    for k, (r, nfe) in enumerate(zip(levels, split)):
        last, lo = k == len(levels) - 1, 0.002
        if not (last or a.full_range):
            lo = c / 2                            # the next stage's switch level, at this resolution
        if k == 0:
            lap.append(StageSpec(f"lap{r}", "base", r, lo, 80.0, -1.0, 1.4, [], [], [], nfe, nfe / a.nfe))
        else:
            lap.append(StageSpec(f"lap{r}", "up", r, lo, c, -1.0, 1.2, [2] * k, [c * 2**j for j in range(k)],
                                 [c * 2**j / 8 for j in range(k)], nfe, nfe / a.nfe))
    return {"edm": edm, "lap": lap}


# ------------------------------------------------------------------------------------------------ training
def net_overrides(resolution: int) -> dict:
    """The base recipe's U-Net overrides (the network the shapes quickstart trains, band gain included, which
    ``recipes/tiny/fashion_mnist.yaml`` turns off) with ``pos_embed_size = R / 4``: every stage of both arms gets the
    same network (the three 32 px seeds of 2026-11-28 were measured so)."""
    import yaml

    recipe = yaml.safe_load(RECIPES["base"].read_text())
    return {**recipe["model"]["init_args"]["net"].get("overrides", {}), "pos_embed_size": resolution // 4}


def train_stage(spec: StageSpec, seed: int, cpu_seconds: float, run: Path, a_dict: dict) -> dict:
    """Fit one stage through the suite's LightningCLI until CpuBudget stops it; export its EMA weights."""
    from lit_edify.callbacks.budget import CpuBudget
    from lit_edify.pipelines.checkpoints import export_safetensors

    torch.set_num_threads(a_dict["train_threads"])
    m = "--model.init_args."
    args = ["--config", str(RECIPES[spec.kind]), "--config", str(DATA_RECIPE), "--seed_everything", str(seed),
            m + "net.overrides", json.dumps(net_overrides(spec.resolution)),
            m + "noise.resolution", str(spec.resolution), m + "noise.sigma_min", str(spec.sigma_min),
            m + "noise.sigma_max", str(spec.sigma_max), m + "noise.p_mean", str(spec.p_mean),
            m + "noise.p_std", str(spec.p_std), m + "noise.band_factors", json.dumps(spec.band_factors),
            m + "noise.band_cutoffs", json.dumps(spec.band_cutoffs), m + "noise.band_starts",
            json.dumps(spec.band_starts), m + "noise.learned_loss_weight", "false", m + "optim.decay_fraction", "0",
            m + "sampling.steps", str(spec.nfe), m + "sampling.guidance",
            str(a_dict["guidance"]), "--data.init_args.root", a_dict["train_dir"], "--data.init_args.resolution",
            str(spec.resolution), "--data.init_args.seed", str(seed), "--data.init_args.num_workers", "0",
            "--data.init_args.persistent_workers", "false", "--trainer.limit_val_batches", "0",
            "--trainer.callbacks+=lit_edify.callbacks.budget.CpuBudget", "--trainer.callbacks.cpu_seconds",
            str(cpu_seconds)]
    if spec.kind == "up":
        args += [m + "factor", "2"]
    wall_cap = 4 * cpu_seconds / 60 + 10  # a safety cap only: the CPU budget ends the fit
    cli, seconds, ckpt = fit_recipe(args, run, wall_cap, max_steps=-1)
    budget = next(cb for cb in cli.trainer.callbacks if isinstance(cb, CpuBudget))
    assert budget.cpu_seconds == cpu_seconds, (budget.cpu_seconds, cpu_seconds)
    loss = cli.trainer.callback_metrics.get("train/loss")
    export_safetensors(ckpt, run / "ema.safetensors")
    for f in run.rglob("*.ckpt"):  # ~100 MB each (weights, EMA, AdamW): only the EMA export is kept
        f.unlink()
    steps = cli.trainer.global_step
    return {"steps": steps, "images": steps * cli.datamodule.hparams.batch_size, "cpu_s": budget.used,
            "budget_cpu_s": cpu_seconds, "wall_s": seconds, "final_loss": None if loss is None else float(loss),
            "spec": asdict(spec), "seed": seed}


def _train_child(queue, *args) -> None:
    try:
        queue.put(train_stage(*args))
    except Exception as e:  # report instead of hanging the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})


def trained_stage(spec: StageSpec, seed: int, cpu_seconds: float, run: Path, a: argparse.Namespace) -> dict:
    """Stats of the stage, trained now in a child process, or read back (``--reuse``, same settings)."""
    stats_path = run / "train_stats.json"
    if a.reuse and stats_path.is_file() and (run / "ema.safetensors").is_file():
        stats = json.loads(stats_path.read_text())
        if stats["spec"] == asdict(spec) and stats["budget_cpu_s"] == cpu_seconds:
            return stats
    print(f"training {spec.name} (seed {seed}): {cpu_seconds:.0f} CPU s", flush=True)
    a_dict = {"train_threads": a.train_threads, "guidance": a.guidance, "train_dir": str(a.train_dir)}
    stats = run_in_child(spec.name, _train_child, spec, seed, cpu_seconds, run, a_dict)
    stats_path.write_text(json.dumps(stats, indent=1))
    print(f"  {spec.name}: {stats['steps']} steps ({stats['images']} images) in {stats['cpu_s']:.0f} CPU s / "
          f"{stats['wall_s']:.0f} wall s, final loss {stats['final_loss']}", flush=True)
    if stats["cpu_s"] < 0.98 * cpu_seconds:
        print(f"  WARNING: {spec.name} stopped before its budget (wall-time cap); compare with care", flush=True)
    return stats


# ------------------------------------------------------------------------------------------------ evaluation
def load_reference(folder: Path, limit: int, res: int, cache_dir: Path) -> tuple[torch.Tensor, list[str]]:
    """``limit`` test images (a seeded shuffle, so any prefix mixes the classes) at ``res`` px through the
    suite's ImageTextDataModule: (N, 3, res, res) uint8 (x = u8 / 127.5 - 1, exact) and captions; cached."""
    from torch.utils.data import DataLoader, Subset

    from lit_edify.data_modules.image_text import ImageTextDataModule
    from lit_edify.io import atomic_save

    cache = cache_dir / f"{folder.name}_{limit}_{res}px.pt"
    if cache.is_file():
        d = torch.load(cache, weights_only=True)
        return d["images"], d["captions"]
    dm = ImageTextDataModule(root=str(folder), resolution=res, multiple=16, aspects=["1:1"], num_workers=0,
                             p_drop_caption=0.0, val_fraction=0.0)
    dm.prepare_data()
    dm.setup("fit")
    order = torch.randperm(len(dm.train_set), generator=torch.Generator().manual_seed(0))[:limit].tolist()
    images, captions = [], []
    for batch in DataLoader(Subset(dm.train_set, order), batch_size=500, collate_fn=dm.train_set.collate):
        u8 = ((batch["image"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        if not torch.allclose(u8.float() / 127.5 - 1, batch["image"], atol=1e-6):
            raise RuntimeError("reference images are not 8-bit exact")
        images.append(u8)
        captions += batch["caption"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"images": torch.cat(images), "captions": captions}, cache)
    return torch.cat(images), captions


class ReferenceBatches:
    """Re-iterable evaluator reference: batches {"image" in [-1, 1], "caption"} made on the fly from uint8."""

    def __init__(self, images: torch.Tensor, captions: list[str], batch_size: int = 100):
        self.images, self.captions, self.batch_size = images, captions, batch_size

    def __iter__(self):
        for i in range(0, len(self.images), self.batch_size):
            yield {"image": self.images[i : i + self.batch_size].float() / 127.5 - 1,
                   "caption": self.captions[i : i + self.batch_size]}


def plan_generate(models: list, specs: list[StageSpec], solver: str, guidance: float):
    """``generate_fn``: one model sampled alone (EDM: ``model.generate``), several by the switch plan; a stage
    that is not the last gets ``nfe + 1`` grid levels (it ends at the switch level without evaluating there)."""
    from lit_edify.diffusion.plans import sample_plan

    def generate(captions, *, aspect="1:1", seed=0, pitch=None, dof=None, media_type=None):
        labels = dict(pitch=pitch, dof=dof, media_type=media_type)
        if len(models) == 1:
            return models[0].generate(captions, steps=specs[0].nfe, solver=solver, guidance=guidance, seed=seed,
                                      aspect=aspect, **labels)
        stages = [m.stage(captions, steps=s.nfe + (k < len(models) - 1), guidance=guidance,
                          factor=1 if k == 0 else m.hparams.factor, **labels)
                  for k, (m, s) in enumerate(zip(models, specs))]
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            x = sample_plan(stages, (len(captions), 3, *models[0].image_shape(aspect)), "switch", solver, generator=g)
        return x.clamp(-1, 1)
    return generate


def flops_per_image(generate, captions: list[str]) -> float:
    """Matmul / conv / attention FLOPs of one sampling run, per image (text encodings cached by then)."""
    from torch.utils.flop_counter import FlopCounterMode

    generate(captions, seed=0)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        generate(captions, seed=0)
    return counter.get_total_flops() / len(captions)


# ------------------------------------------------------------------------------------------------ report
def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan


def pm(values: list[float], fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    m, s = mean_std(values)
    if not math.isfinite(m):
        return "-"
    return fmt.format(m * scale) + ("" if not math.isfinite(s) else " ± " + fmt.format(s * scale))


METRICS = (("fid", "FID", True), ("kid_mean", "KID", True), ("classifier_accuracy", "classifier acc.", False),
           ("sec_per_image", "s / image", True))


def verdict(res: int, recs: dict[str, list[dict]]) -> list[str]:
    """Which arm wins each metric at ``res``; 'clear' when the gap exceeds twice its standard error."""
    lines = []
    for key, name, lower in METRICS:
        (ml, sl), (me, se) = (mean_std([r[key] for r in recs[arm]]) for arm in ("lap", "edm"))
        if not (math.isfinite(ml) and math.isfinite(me)):
            continue
        winner = "tie" if ml == me else ("Laplacian" if (ml < me) == lower else "EDM") + " wins"
        n = min(len(recs["lap"]), len(recs["edm"]))
        err = math.sqrt((sl**2 + se**2) / n) if n > 1 and math.isfinite(sl) and math.isfinite(se) else math.nan
        how = ("one seed: no error bar" if not math.isfinite(err) else
               "clear" if abs(ml - me) > 2 * err else "within seed noise")
        lines.append(f"{res} px {name}: {winner} ({ml:.4g} Laplacian vs {me:.4g} EDM; {how})")
    return lines


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--resolutions", type=int, nargs="+", choices=(32, 64), default=[32, 64])
    p.add_argument("--arms", nargs="+", choices=("edm", "lap"), default=["edm", "lap"],
                   help="arms to train and score (one per process, with their own --out, to use both cores)")
    p.add_argument("--budget-cpu-min", type=float, nargs="+", default=None,
                   help="training CPU minutes per arm: one value, or one per --resolutions entry (default 8 / 16)")
    p.add_argument("--nfe", type=int, default=32, help="denoiser evaluations per image, every arm")
    p.add_argument("--nfe-split32", type=int, nargs=2, default=[16, 16], help="Laplacian 32: NFE at 16 / 32 px")
    p.add_argument("--nfe-split64", type=int, nargs=3, default=[14, 3, 15], help="Laplacian 64: NFE at 16/32/64 px")
    p.add_argument("--cutoff", type=float, default=2.0, help="detail-band cutoff = upsampler sigma_max")
    p.add_argument("--full-range", action="store_true", help="train every stage on its whole sigma range")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--solver", default="dpmpp_2m")
    p.add_argument("--num-images", type=int, default=2000, help="generated images per arm and seed")
    p.add_argument("--num-reference", type=int, default=10000, help="Fashion-MNIST test images (FID / KID)")
    p.add_argument("--batch-size", type=int, default=50, help="images per sampling call")
    p.add_argument("--threads", type=int, default=2, help="torch threads for evaluation")
    p.add_argument("--train-threads", type=int, default=1, help="torch threads of each training process")
    p.add_argument("--reuse", action="store_true", help="keep stages already trained with the same settings")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    budgets = a.budget_cpu_min or [{32: 8.0, 64: 16.0}[r] for r in a.resolutions]
    if len(budgets) not in (1, len(a.resolutions)):
        p.error("--budget-cpu-min takes one value or one per --resolutions entry")
    a.budgets = {r: 60.0 * budgets[min(i, len(budgets) - 1)] for i, r in enumerate(a.resolutions)}
    for name in ("nfe_split32", "nfe_split64"):
        if sum(getattr(a, name)) != a.nfe or min(getattr(a, name)) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive and sum to --nfe {a.nfe}")
    return a


def scored_before(path: Path, a: argparse.Namespace) -> dict:
    """Evaluations in an earlier ``results.json`` made with the same sampling and scoring settings, by
    (resolution, arm, seed); the caller keeps one only if its stages' training stats are the ones in use now."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    same = ("nfe", "nfe_split32", "nfe_split64", "guidance", "solver", "num_images", "num_reference", "batch_size")
    if any(old.get("args", {}).get(k) != getattr(a, k) for k in same):
        return {}
    return {(r["resolution"], r["arm"], r["seed"]): {k: v for k, v in r.items() if k not in ("resolution", "arm", "seed")}
            for r in old.get("runs", [])}


def main(argv=None) -> dict:
    from torchvision.utils import save_image

    from lit_edify.metrics import GeneratorEvaluator
    from lit_edify.pipelines.text2image import load_module
    from lit_edify.quickstart import prepare_data

    a = parse(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    a.train_dir, test_dir = prepare_data("fashion-mnist", ROOT / "data")
    settings = {r: {arm: st for arm, st in arm_stages(r, a).items() if arm in a.arms} for r in a.resolutions}
    summary = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "settings": {r: {arm: [asdict(s) for s in st] for arm, st in v.items()} for r, v in settings.items()},
               "runs": []}
    records: dict[int, dict[str, list[dict]]] = {}
    earlier = scored_before(out / "results.json", a)  # kept in results.json unless redone now
    previous = earlier if a.reuse else {}

    def save() -> None:
        """results.json: this run's evaluations plus the earlier ones (same settings) it did not redo."""
        done = {(r["resolution"], r["arm"], r["seed"]) for r in summary["runs"]}
        kept = [{"resolution": k[0], "arm": k[1], "seed": k[2], **v} for k, v in earlier.items() if k not in done]
        runs = sorted(summary["runs"] + kept, key=lambda r: (r["resolution"], r["seed"], r["arm"] != "edm"))
        (out / "results.json").write_text(json.dumps({**summary, "runs": runs}, indent=1, default=float))
    for res in a.resolutions:
        ref_u8, ref_caps = load_reference(test_dir, a.num_reference, res, out / "cache")
        save_image((ref_u8[:40].float() / 255), out / f"samples_real{res}.png", nrow=10)

        @functools.cache
        def scorer():  # the evaluator, prepared on first use (a fully reused resolution needs none), and prompts
            ev = GeneratorEvaluator(ReferenceBatches(ref_u8, ref_caps), fid=True, kid=True, adherence="classifier",
                                    seed=0, cache_dir=out / "cache").prepare()
            return ev, ev.default_prompts(a.num_images)
        records[res] = {"edm": [], "lap": []}
        for seed in a.seeds:
            for arm, specs in settings[res].items():
                train = {s.name: trained_stage(s, seed, a.budgets[res] * s.share,
                                               out / f"res{res}" / f"seed{seed}" / s.name, a) for s in specs}
                rec = previous.get((res, arm, seed))
                if rec is not None and rec["train"] == train:
                    print(f"scored before (--reuse): {ARM_NAMES[arm]} {res} px, seed {seed}", flush=True)
                    records[res][arm].append(rec)
                    summary["runs"].append({"resolution": res, "arm": arm, "seed": seed, **rec})
                    continue
                evaluator, prompts = scorer()
                models = [load_module(out / f"res{res}" / f"seed{seed}" / s.name / "ema.safetensors") for s in specs]
                gen = plan_generate(models, specs, a.solver, a.guidance)
                print(f"sampling + scoring {ARM_NAMES[arm]} {res} px, seed {seed}: {a.num_images} images at NFE "
                      f"{a.nfe}", flush=True)
                rec = run_grid(lambda s, n, gen=gen: gen, evaluator, prompts, [(a.solver, a.nfe)],
                               nfe_of=lambda s, n: a.nfe, count_modules=[m.net for m in models],
                               batch_size=a.batch_size, seed=1000 * seed)[0]
                rec["flops_per_image"] = flops_per_image(gen, [p["caption"] for p in prompts[:4]])
                rec["train"] = train
                records[res][arm].append(rec)
                with torch.no_grad():
                    grid = gen([p["caption"] for p in prompts[:40]], seed=123)
                save_image((grid + 1) / 2, out / f"samples_{arm}{res}_seed{seed}.png", nrow=10)
                summary["runs"].append({"resolution": res, "arm": arm, "seed": seed, **rec})
                save()
                print(f"  FID {rec['fid']:.2f}  KID {rec['kid_mean']:.4f}  classifier acc. "
                      f"{rec['classifier_accuracy']:.1%}  {rec['sec_per_image']:.4f} s/image", flush=True)

    rows, stage_rows, lines = [], [], []
    for res in a.resolutions:
        for arm, specs in settings[res].items():
            rs = records[res][arm]
            rows.append({"arm": f"{ARM_NAMES[arm]} {res} px", "stages": " -> ".join(f"{s.resolution}" for s in specs),
                         "NFE": "+".join(str(s.nfe) for s in specs), "seeds": len(rs),
                         "CPU-min / arm": f"{sum(r['train'][s.name]['cpu_s'] for r in rs for s in specs) / 60 / len(rs):.2f}",
                         "FID": pm([r["fid"] for r in rs]), "KID x1e3": pm([r["kid_mean"] for r in rs], scale=1e3),
                         "classifier acc. %": pm([r["classifier_accuracy"] for r in rs], "{:.1f}", 100),
                         "s / image": pm([r["sec_per_image"] for r in rs], "{:.4f}"),
                         "GFLOPs / image": f"{rs[0]['flops_per_image'] / 1e9:.3f}"})
            for s in specs:
                st = [r["train"][s.name] for r in rs]
                bands = ", ".join(f"x{f}: {b:g}->{c:g}" for f, b, c in zip(s.band_factors, s.band_starts,
                                                                            s.band_cutoffs)) or "none (plain EDM)"
                stage_rows.append({"arm": f"{ARM_NAMES[arm]} {res} px", "stage": f"{s.resolution} px {s.kind}",
                                   "sigma range": f"[{s.sigma_min:g}, {s.sigma_max:g}]",
                                   "P_mean / P_std": f"{s.p_mean:g} / {s.p_std:g}", "bands (start->cutoff)": bands,
                                   "NFE": s.nfe, "budget share": f"{s.share:.0%}",
                                   "CPU-min": f"{a.budgets[res] * s.share / 60:.2f}",
                                   "steps": f"{statistics.fmean(x['steps'] for x in st):.0f}",
                                   "images seen": f"{statistics.fmean(x['images'] for x in st):.0f}"})
        lines += verdict(res, records[res])
    first = next(rs[0] for rs in records[a.resolutions[0]].values() if rs)
    real_acc = first.get("classifier_real_accuracy", math.nan)
    print(f"\nFashion-MNIST, {a.num_images} generated vs {a.num_reference} real test images per FID, {a.solver}, "
          f"guidance {a.guidance}, cutoff {a.cutoff:g}, seeds {a.seeds}, equal CPU budget per arm "
          f"({', '.join(f'{r} px: {a.budgets[r] / 60:g} min' for r in a.resolutions)}, {a.train_threads} training "
          f"thread(s)); mean ± std over seeds. Classifier accuracy on held-out real images: {real_acc:.1%}.\n")
    print(markdown_table(rows, first=tuple(rows[0]), metrics=()))
    print("\nStages (training settings; steps and images are means over seeds):\n")
    print(markdown_table(stage_rows, first=tuple(stage_rows[0]), metrics=()))
    print("\n" + "\n".join(lines))
    summary["verdict"] = lines
    summary["total_wall_s"] = time.perf_counter() - t_start
    save()
    print(f"\ntotal wall time {summary['total_wall_s']:.0f} s; results, sample grids and EMA weights in {out}")
    fmt = (lambda v: f"{v:.2f}" if math.isfinite(v) else "nan")
    keys = []
    for res in a.resolutions:
        tag = "" if res == 32 else str(res)
        fl, fe = (mean_std([r["fid"] for r in records[res][arm]])[0] for arm in ("lap", "edm"))
        ratio = (mean_std([r["sec_per_image"] for r in records[res]["lap"]])[0]
                 / mean_std([r["sec_per_image"] for r in records[res]["edm"]])[0])
        keys.append(f"fid_lap{tag}={fmt(fl)} fid_edm{tag}={fmt(fe)} sample_time_ratio{tag}={ratio:.3f}")
    print("laplacian_vs_edm: " + " ".join(keys))
    return summary


if __name__ == "__main__":
    main()
