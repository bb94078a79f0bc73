"""Personalization on shapes (report Sec. 7): finetune the quickstart base's cross-attention key/value projections on
two made-up concepts (the shape "zorb" and the style "vexa", 8 captioned images each), with and without prior
preservation, and score what the finetune learned, what it kept and whether a frozen ControlNet still works.

    python benchmarks/personalization.py --threads 1            # both variants (<= 10 minutes of training each)
    python benchmarks/personalization.py --variants prior --max-steps 50   # smoke run

Training is ``lit-edify fit --config recipes/tiny/personalize.yaml`` (the project's LightningCLI, Personalize module,
ConceptFolderDataModule and Trainer) in a child process; the checkpoint is exported with ``lit-edify personalize
export`` and the file applied to a fresh copy of the base, which is what every figure below samples from.
Metrics (32 px images, the shapes judge with ``concepts=True``):

* trainable_pct: trained share of the tiny U-Net (and of the paper presets ``base2.7b`` / ``upsampler1k1.6b``);
* shape / style: fraction of 16 held-out prompts per concept (colours and backgrounds none of its 8 images has)
  whose image the judge reads as a zorb / as hatched; the base's rate on the same prompts for reference;
* concept_recall: both concepts' rates together (32 prompts); confused: a zorb prompt drawn hatched or a vexa
  prompt drawn as a zorb;
* prior_drop_pts: mean of the colour / background / shape adherence on the 64 original test prompts, base minus
  finetune, in points;
* min pixel distance: smallest RMS distance (0-255 levels) between a generated concept image and any training
  image (near copies would be close to 0; the closest two training images are printed for scale);
* controlnet_f1_kept: edge F1 (``benchmarks/controlnet_adherence.py``) of the frozen canny ControlNet on the
  finetuned U-Net / on the base, for zorb prompts with hints from rendered zorb scenes.

The last line is ``personalization: trainable_pct=<x> concept_recall=<y> prior_drop_pts=<z> controlnet_f1_kept=<w>``
for the recipe's configuration (``noprior``: with prior preservation the tiny run learned neither concept).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from controlnet_adherence import edge_f1, save_grid  # noqa: E402 (after the path set-up)

from lit_edify.benchmark import fit_recipe, run_in_child  # noqa: E402

RECIPE = ROOT / "recipes/tiny/personalize.yaml"
CONCEPTS = ("zorb", "vexa")
PRIOR_IMAGES = 64  # class images of the "prior" variant (the recipe's prior_prompts, prior_ratio 0.5)


def train(out: Path, base: str, data: str, prior: bool, max_steps: int | None, minutes: float, threads: int,
          extra: list[str]) -> dict:
    """``lit-edify fit`` of the tiny recipe in this process; returns wall seconds, steps and the checkpoint."""
    torch.set_num_threads(threads)
    args = ["--config", str(RECIPE), "--model.init_args.base_ckpt", base, "--data.init_args.root", data,
            "--model.init_args.prior_cache", str(out.parent / "prior_images.safetensors"), *extra,
            "--model.init_args.prior_images", str(PRIOR_IMAGES if prior else 0)]
    cli, seconds, ckpt = fit_recipe(args, out, minutes, max_steps)
    return {"seconds": seconds, "steps": cli.trainer.global_step, "ckpt": str(ckpt),
            "trainable_fraction": cli.model.trainable_fraction}


def _child(queue, *args) -> None:
    try:
        queue.put(train(*args))
    except Exception as e:  # report instead of hanging the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})


# ----------------------------------------------------------------------------------------------- metrics
def paper_fractions() -> dict:
    from lit_edify.nn.presets import build_unet
    from lit_edify.personalization import trainable_fraction

    out = {}
    for preset in ("base2.7b", "upsampler1k1.6b"):
        with torch.device("meta"):
            out[preset] = trainable_fraction(build_unet(preset), ["crossattn_kv"])
    return out


def concept_scores(model, seed: int = 0) -> tuple[dict, dict]:
    """Held-out concept prompts: drawn rates, confusion and the images (per concept)."""
    from lit_edify.data_modules.concepts import heldout_concept_prompts
    from lit_edify.data_modules.judge import judge_image

    rates, images = {}, {}
    for concept in CONCEPTS:
        ps = heldout_concept_prompts(concept, 16)
        imgs = model.generate([p["caption"] for p in ps], seed=seed)
        judged = [judge_image(x, concepts=True) for x in imgs]
        shape_hit = [j["shape"] == "zorb" for j in judged]
        style_hit = [j["style"] == "vexa" for j in judged]
        drawn, other = (shape_hit, style_hit) if concept == "zorb" else (style_hit, shape_hit)
        rates[concept] = {"drawn": float(np.mean(drawn)), "confused": float(np.mean(other)),
                          "color": float(np.mean([j["color"] == p["color"] for j, p in zip(judged, ps)]))}
        images[concept] = imgs
    rates["recall"] = float(np.mean([rates[c]["drawn"] for c in CONCEPTS]))
    rates["confused"] = float(np.mean([rates[c]["confused"] for c in CONCEPTS]))
    return rates, images


def adherence_pts(model, n: int = 64) -> tuple[float, dict]:
    from lit_edify.data_modules.judge import adherence
    from lit_edify.data_modules.shapes import evaluation_prompts

    ps = evaluation_prompts(n=n, seed=0, split="test")
    imgs = model.generate([p["caption"] for p in ps], seed=0, **{k: [p[k] for p in ps]
                                                                 for k in ("pitch", "dof", "media_type")})
    a = adherence(imgs, ps)
    return 100 * float(np.mean([a["color"], a["background"], a["shape"]])), a


def min_distance(images: torch.Tensor, train: torch.Tensor) -> float:
    """Smallest RMS distance (0-255 levels) between any generated image and any training image."""
    d = torch.cdist(images.flatten(1).double(), train.flatten(1).double()) / images[0].numel() ** 0.5
    return float(d.min() * 127.5)


def controlnet_f1(model, cn_path: str, n: int = 16) -> tuple[float, torch.Tensor]:
    """Edge F1 of the frozen canny ControlNet on ``model``'s U-Net, zorb prompts with hints of rendered zorbs."""
    from lit_edify.data_modules.concepts import heldout_concept_prompts
    from lit_edify.data_modules.hints import canny
    from lit_edify.data_modules.shapes_render import render
    from lit_edify.pipelines.controlled import controlled_text_to_image, load_controlnet

    ps = heldout_concept_prompts("zorb", n, seed=1)
    src = torch.stack([torch.from_numpy(render(p["scene"], 32, multiple=16)["image"]) for p in ps])
    hint = canny(src)
    cn = load_controlnet(cn_path, model)
    out = controlled_text_to_image(model, [p["caption"] for p in ps], [(cn, hint, 1.0)], seed=0,
                                   guidance=cn.cfg.sampling.guidance)
    pred = canny(out)
    return float(np.mean([edge_f1(p[0].numpy() > 0, h[0].numpy() > 0) for p, h in zip(pred, hint)])), out


def load_training_images(folder: Path) -> torch.Tensor:
    from PIL import Image

    files = sorted(folder.glob("*.png"))
    return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 127.5 - 1)
                        .permute(2, 0, 1) for f in files])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=str(ROOT / "runs/quickstart/version_0/checkpoints/final.ckpt"),
                   help="the quickstart base (the canny ControlNet below was trained on it)")
    p.add_argument("--canny", default=str(ROOT / "runs/controlnet_adherence_canny3300/canny/final.ckpt"))
    p.add_argument("--variants", default="noprior,prior", help="comma-separated subset of noprior,prior")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per variant (max_time)")
    p.add_argument("--max-steps", type=int, help="override the recipe's max_steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reuse", action="store_true", help="score <out>/<variant>/final.ckpt without training")
    p.add_argument("--out", default=str(ROOT / "runs" / "personalization"))
    p.add_argument("--fit-arg", action="append", default=[], help="extra `lit-edify fit` argument (repeatable)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    from lit_edify.commands.personalize import export_personalization
    from lit_edify.data_modules.concepts import write_concept_folder
    from lit_edify.personalization import apply_personalization
    from lit_edify.modules.controlnet import load_frozen_base

    data = out / "concepts"
    write_concept_folder(data, list(CONCEPTS), n=8)
    train_images = load_training_images(data)
    pair = torch.cdist(train_images.flatten(1).double(), train_images.flatten(1).double())
    pair_min = float((pair + 1e9 * torch.eye(len(pair))).min() / train_images[0].numel() ** 0.5 * 127.5)
    print(f"concept folder: {len(train_images)} images; the two closest training images are {pair_min:.1f}/255 "
          "apart (RMS)", flush=True)
    fractions = paper_fractions()
    base = load_frozen_base(a.base)  # frozen, with its path and weights hash (what ControlNets check)
    base_pts, base_adh = adherence_pts(base)
    base_rates, base_imgs = concept_scores(base)
    base_f1, base_cn = controlnet_f1(base, a.canny)
    print(f"base: adherence {base_pts:.1f} pts (colour {base_adh['color']:.2f} background {base_adh['background']:.2f} "
          f"shape {base_adh['shape']:.2f}); zorb drawn {base_rates['zorb']['drawn']:.2f}, vexa drawn "
          f"{base_rates['vexa']['drawn']:.2f} on the held-out concept prompts; canny ControlNet edge F1 {base_f1:.3f} "
          "on zorb hints", flush=True)

    results = {}
    for variant in [v for v in a.variants.split(",") if v]:
        run = out / variant
        if not a.reuse:
            r = run_in_child(f"training {variant}", _child, run, a.base, str(data), variant == "prior", a.max_steps,
                             a.minutes, a.threads, a.fit_arg)
            print(f"trained {variant}: {r['steps']} steps in {r['seconds'] / 60:.1f} min ({a.threads} thread(s), "
                  "another job on the other core)", flush=True)
        else:
            r = {}
        file = run / "concepts.safetensors"
        info = export_personalization(run / "final.ckpt", file)
        model = copy.deepcopy(base)
        apply_personalization(model, file)
        pts, adh = adherence_pts(model)
        rates, imgs = concept_scores(model)
        f1, cn_out = controlnet_f1(model, a.canny)
        dist = min_distance(torch.cat([imgs[c] for c in CONCEPTS]), train_images)
        pct = 100 * info["parameters"] / sum(t.numel() for t in base.net.parameters())
        results[variant] = {"train": r, "file_bytes": info["bytes"], "file_values": info["parameters"],
                            "trainable_pct": pct,
                            "adherence_pts": pts, "prior_drop_pts": base_pts - pts, "rates": rates,
                            "controlnet_f1": f1, "controlnet_f1_kept": f1 / max(base_f1, 1e-9),
                            "min_distance_255": dist}
        save_grid([base_imgs["zorb"], imgs["zorb"], base_imgs["vexa"], imgs["vexa"]], out / f"{variant}_concepts.png")
        save_grid([base_cn, cn_out], out / f"{variant}_controlnet.png")
        print(f"{variant}: {pct:.2f}% of the U-Net trained; file {info['bytes']:,} bytes "
              f"({info['parameters']:,} values x 4 bytes = {4 * info['parameters']:,}); zorb drawn {rates['zorb']['drawn']:.2f} (colour right "
              f"{rates['zorb']['color']:.2f}), vexa drawn {rates['vexa']['drawn']:.2f} (colour right "
              f"{rates['vexa']['color']:.2f}); recall {rates['recall']:.2f}, confused {rates['confused']:.2f}; "
              f"adherence {pts:.1f} pts (drop {base_pts - pts:+.1f}; colour {adh['color']:.2f} background "
              f"{adh['background']:.2f} shape {adh['shape']:.2f}); min pixel distance to the training images "
              f"{dist:.1f}/255; canny F1 {f1:.3f} ({f1 / max(base_f1, 1e-9):.2f} of the base's)", flush=True)

    from lit_edify.personalization import trainable_fraction

    kv = 100 * trainable_fraction(base.net, ["crossattn_kv"])
    print(f"cross-attention key/value share: tiny {kv:.2f}%, base2.7b {100 * fractions['base2.7b']:.2f}%, "
          f"upsampler1k1.6b {100 * fractions['upsampler1k1.6b']:.2f}%; trained here: "
          + ", ".join(f"{v} {r['trainable_pct']:.2f}%" for v, r in results.items()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"base": {"adherence_pts": base_pts, "rates": base_rates,
                                                           "controlnet_f1": base_f1}, "paper": fractions,
                                                  "variants": results}, indent=1, default=str))
    head = results.get("noprior") or next(iter(results.values()))
    print(f"personalization: trainable_pct={head['trainable_pct']:.2f} concept_recall={head['rates']['recall']:.3f} "
          f"prior_drop_pts={head['prior_drop_pts']:.1f} controlnet_f1_kept={head['controlnet_f1_kept']:.3f}")
    return results


if __name__ == "__main__":
    main()
