"""ControlNet adherence on shapes (report Sec. 5): train each tiny ControlNet on the frozen quickstart base, then
score its samples against the hints at control weights 0 (= the base alone, bit for bit), 0.5, 1 and 1.5.

    python benchmarks/controlnet_adherence.py                      # train canny, depth, inpaint (<= 20 min each)
    python benchmarks/controlnet_adherence.py --hints canny --threads 1
    python benchmarks/controlnet_adherence.py --reuse              # score checkpoints already in --out

Training is ``lit-edify fit --config recipes/tiny/controlnet_<hint>.yaml`` (the project's LightningCLI, module,
data, EMA and Trainer) in a child process, with ``--trainer.max_time`` as the budget. Evaluation uses
``--n`` test prompts of the shapes dataset (``evaluation_prompts``); each prompt's scene renders the source image
the hint comes from. Metrics (32 px images, the judge's 32 px grid):

* edge (canny): F1 between OpenCV Canny of the output and the hint (1-pixel tolerance: an edge pixel counts as
  matched when the other map has an edge within the 3x3 neighbourhood), averaged over prompts;
* depth: IoU between the object region of the depth hint (nearness > 0.4: objects are >= 0.58, the ground
  <= -0.2) and the object the judge finds in the output (pixels of the judged colour, 3x3 majority-filtered);
* inpaint, per task (replace: an object's mask and the prompt of the same shape in another colour; inpaint:
  free-form strokes; outpaint: border bands): mean absolute error outside the mask before compositing, in
  1/255 units of [0, 255] images, and the judge's colour + shape accuracy on the output (the prompt's colour
  and shape; for replace they are only inside the mask).

Sample grids go to ``<out>/<hint>_grid.png``; the last line is
``controlnet_adherence: edge_f1=<x> depth_iou=<y> inpaint_judge=<z>`` (at control weight 1; ``n/a`` when a hint
type was not run).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_edify.benchmark import fit_recipe, run_in_child  # noqa: E402 (after the path set-up)

WEIGHTS = (0.0, 0.5, 1.0, 1.5)
HINTS = ("canny", "depth", "inpaint")


def train(hint: str, out: Path, base: str, max_steps: int | None, minutes: float, threads: int,
          extra: list[str] = ()) -> dict:
    """``lit-edify fit`` of the tiny recipe for ``hint`` (plus ``extra`` arguments) in this process; returns wall
    seconds and the checkpoint."""
    torch.set_num_threads(threads)
    args = ["--config", str(ROOT / f"recipes/tiny/controlnet_{hint}.yaml"), "--model.init_args.base_ckpt", base,
            *extra]
    cli, seconds, ckpt = fit_recipe(args, out / hint, minutes, max_steps)
    return {"seconds": seconds, "steps": cli.trainer.global_step, "ckpt": str(ckpt)}


def _child(queue, *args) -> None:
    try:
        queue.put(train(*args))
    except Exception as e:  # report instead of hanging the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})


# ----------------------------------------------------------------------------------------------- metrics
def _near(edges: np.ndarray) -> np.ndarray:
    """Pixels within 1 pixel (3x3) of an edge pixel."""
    p = np.pad(edges, 1)
    h, w = edges.shape
    return np.any([p[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)


def edge_f1(pred: np.ndarray, ref: np.ndarray) -> float:
    """F1 of two binary edge maps with a 1-pixel tolerance (1.0 when both are empty)."""
    if not pred.any() and not ref.any():
        return 1.0
    precision = (pred & _near(ref)).sum() / max(pred.sum(), 1)
    recall = (ref & _near(pred)).sum() / max(ref.sum(), 1)
    return float(2 * precision * recall / max(precision + recall, 1e-12))


def judged_object(img: torch.Tensor) -> np.ndarray:
    """Binary mask (judge grid = image size at 32 px) of the pixels of the colour the judge reads."""
    from lit_edify.data_modules.judge import _PALETTE, _PALETTE_NAMES, _majority3, _to_numpy_255, judge_image

    rgb = _to_numpy_255(img)
    label = ((rgb[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1).argmin(-1)
    color = judge_image(img)["color"]
    ids = [i for i, n in enumerate(_PALETTE_NAMES) if n == ("object", color)]
    return _majority3(np.isin(label, ids))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ----------------------------------------------------------------------------------------------- evaluation
def prompts_and_sources(n: int, resolution: int):
    from lit_edify.data_modules.shapes import ShapesDataset, evaluation_prompts

    ps = evaluation_prompts(n=n, seed=0, split="test")
    src = [ShapesDataset.render(p["scene"], resolution, multiple=16) for p in ps]
    batch = {k: torch.stack([s[k] for s in src]) for k in src[0]}
    return ps, batch


def _labels(ps):
    return {k: [p[k] for p in ps] for k in ("pitch", "dof", "media_type")}


GUIDANCE: list[float | None] = [None]  # --guidance: None = each ControlNet's sampling default


def sample(cn, captions, hint, weight, ps, seed=0):
    """Controlled samples (base alone at weight 0) with CFG over text and hint at the benchmark's guidance."""
    from lit_edify.pipelines.controlled import controlled_text_to_image

    g = cn.cfg.sampling.guidance if GUIDANCE[0] is None else GUIDANCE[0]
    return controlled_text_to_image(cn.base, captions, [(cn, hint, weight)], seed=seed, guidance=g, **_labels(ps))


def eval_edges(cn, ps, batch) -> tuple[dict, list]:
    from lit_edify.data_modules.hints import canny

    hint = canny(batch["image"])
    rows, grid = {}, [hint.expand(-1, 3, -1, -1) * 2 - 1]
    for w in WEIGHTS:
        out = sample(cn, [p["caption"] for p in ps], hint, w, ps)
        pred = canny(out)
        rows[w] = {"edge_f1": float(np.mean([edge_f1(p[0].numpy() > 0, h[0].numpy() > 0)
                                             for p, h in zip(pred, hint)]))}
        grid.append(out)
    return rows, grid


def eval_depth(cn, ps, batch) -> tuple[dict, list]:
    hint = batch["depth"]
    region = (hint[:, 0] > 0.4).numpy()
    rows, grid = {}, [hint.expand(-1, 3, -1, -1)]
    for w in WEIGHTS:
        out = sample(cn, [p["caption"] for p in ps], hint, w, ps)
        rows[w] = {"depth_iou": float(np.mean([iou(judged_object(o), r) for o, r in zip(out, region)]))}
        grid.append(out)
    return rows, grid


def inpaint_cases(ps, batch, seed=0):
    """Per task: masks (N, 1, H, W), prompts (captions) and the expected (colour, shape) per image."""
    from lit_edify.data_modules.hints import border_mask, object_mask, stroke_mask
    from lit_edify.data_modules.shapes_render import OBJECT_COLORS, caption_long

    rng = np.random.default_rng(seed)
    n, _, h, w = batch["image"].shape
    colors = list(OBJECT_COLORS)
    new = [colors[(colors.index(p["color"]) + 1 + i % (len(colors) - 1)) % len(colors)] for i, p in enumerate(ps)]
    replaced = [dataclasses.replace(p["scene"], objects=(dataclasses.replace(p["scene"].objects[0], color=c),))
                for p, c in zip(ps, new)]
    return {
        "replace": (object_mask(batch["mask"]), [caption_long(s) for s in replaced],
                    [(c, p["shape"]) for c, p in zip(new, ps)]),
        "inpaint": (torch.stack([stroke_mask(h, w, rng) for _ in range(n)]), [p["caption"] for p in ps],
                    [(p["color"], p["shape"]) for p in ps]),
        "outpaint": (torch.stack([border_mask(h, w, rng) for _ in range(n)]), [p["caption"] for p in ps],
                     [(p["color"], p["shape"]) for p in ps]),
    }


def eval_inpaint(cn, ps, batch) -> tuple[dict, list]:
    from lit_edify.data_modules.hints import inpaint_control
    from lit_edify.data_modules.judge import judge_image

    rows, grid = {}, []
    img = batch["image"]
    for task, (mask, captions, want) in inpaint_cases(ps, batch).items():
        hint = inpaint_control(img, mask, task)
        grid.append(hint[:, :3] + mask * torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1))  # masked input, magenta
        for w in WEIGHTS:
            out = sample(cn, captions, hint, w, ps)
            keep = (1 - mask).expand_as(out)
            mae = ((out - img).abs() * 127.5 * keep).flatten(1).sum(1) / keep.flatten(1).sum(1)
            judged = [judge_image(o) for o in out]
            ok = [j["color"] == c and j["shape"] == s for j, (c, s) in zip(judged, want)]
            rows[(task, w)] = {"mae_outside_255": float(mae.mean()), "judge": float(np.mean(ok))}
            if w == 1.0:
                grid.append(out)
    return rows, grid


def save_grid(images: list, path: Path) -> None:
    from lit_edify.io import save_image_atomic

    rows = torch.cat([((x.float().clamp(-1, 1) + 1) / 2)[:8] for x in images])
    big = torch.nn.functional.interpolate(rows, scale_factor=4, mode="nearest")
    save_image_atomic(big, path, nrow=min(8, images[0].shape[0]), padding=2)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hints", default=",".join(HINTS), help="comma-separated subset of canny,depth,inpaint")
    p.add_argument("--base", default=str(ROOT / "runs/quickstart/version_0/checkpoints/final.ckpt"))
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per ControlNet (max_time)")
    p.add_argument("--max-steps", type=int, help="override the recipe's max_steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=48, help="evaluation prompts")
    p.add_argument("--guidance", type=float, help="CFG scale (text + hint) for every sample; default: each "
                   "ControlNet's own sampling default (its guidance hyper-parameter)")
    p.add_argument("--reuse", action="store_true", help="score <out>/<hint>/final.ckpt without training")
    p.add_argument("--out", default=str(ROOT / "runs" / "controlnet_adherence"))
    p.add_argument("--fit-arg", action="append", default=[], help="extra `lit-edify fit` argument (repeatable), "
                   "e.g. --fit-arg=--model.init_args.known_weight=4")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    GUIDANCE[0] = a.guidance
    out = Path(a.out)
    hints = [h for h in a.hints.split(",") if h]
    bad = [h for h in hints if h not in HINTS]
    if bad:
        raise SystemExit(f"unknown hint(s) {bad}; choose from {list(HINTS)}")
    results, trained = {}, {}
    for hint in hints:
        ckpt = out / hint / "final.ckpt"
        if not a.reuse:
            r = run_in_child(f"training {hint}", _child, hint, out, a.base, a.max_steps, a.minutes, a.threads,
                             a.fit_arg)
            trained[hint] = r
            print(f"trained {hint}: {r['steps']} steps in {r['seconds'] / 60:.1f} min ({a.threads} thread(s))",
                  flush=True)
        from lit_edify.pipelines.checkpoints import load_module

        cn = load_module(ckpt)
        print(f"{hint}: checkpoint {ckpt} {ckpt.stat().st_size / 1e6:.1f} MB, "
              f"{sum(p.numel() for p in cn.controlnet.parameters()) / 1e6:.2f} M ControlNet parameters, guidance "
              f"{cn.cfg.sampling.guidance if a.guidance is None else a.guidance}", flush=True)
        ps, batch = prompts_and_sources(a.n, cn.cfg.noise.resolution)
        fn = {"canny": eval_edges, "depth": eval_depth, "inpaint": eval_inpaint}[hint]
        torch.manual_seed(0)
        rows, grid = fn(cn, ps, batch)
        results[hint] = rows
        save_grid(grid, out / f"{hint}_grid.png")

    print(f"\n{'hint':8s} {'task':9s} " + " ".join(f"{'w=' + str(w):>8s}" for w in WEIGHTS) + "  metric")
    for hint, rows in results.items():
        if hint == "inpaint":
            for task in ("replace", "inpaint", "outpaint"):
                for m in ("mae_outside_255", "judge"):
                    print(f"{hint:8s} {task:9s} " + " ".join(f"{rows[(task, w)][m]:8.3f}" for w in WEIGHTS) + f"  {m}")
        else:
            m = next(iter(rows[WEIGHTS[0]]))
            print(f"{hint:8s} {'-':9s} " + " ".join(f"{rows[w][m]:8.3f}" for w in WEIGHTS) + f"  {m}")
    summary = {
        "edge_f1": results["canny"][1.0]["edge_f1"] if "canny" in results else None,
        "depth_iou": results["depth"][1.0]["depth_iou"] if "depth" in results else None,
        "inpaint_judge": (float(np.mean([results["inpaint"][(t, 1.0)]["judge"]
                                         for t in ("replace", "inpaint", "outpaint")]))
                          if "inpaint" in results else None),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"trained": trained, "summary": summary,
                                                  "results": {h: {str(k): v for k, v in r.items()}
                                                              for h, r in results.items()}}, indent=1))
    fmt = {k: "n/a" if v is None else f"{v:.3f}" for k, v in summary.items()}
    print(f"controlnet_adherence: edge_f1={fmt['edge_f1']} depth_iou={fmt['depth_iou']} "
          f"inpaint_judge={fmt['inpaint_judge']}")
    return summary


if __name__ == "__main__":
    main()
