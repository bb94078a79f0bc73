"""`lit-edify benchmark` end to end: fit a tiny model for 2 steps, benchmark it at 2 solvers x 2 step counts."""
import json
import math
from pathlib import Path

import pytest

from lit_edify.benchmark import expected_nfe, markdown_table
from lit_edify.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes/tiny/base32.yaml")
UNET = json.dumps({"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1],
                   "head_dim": 16, "context_dim": 32, "pos_embed_size": 4})
DATA16 = ["--data.init_args.resolution", "16", "--data.init_args.multiple", "8", "--data.init_args.val_size", "4"]
TINY = ["--config", RECIPE, "--model.init_args.noise.resolution", "16", "--model.init_args.net.overrides", UNET,
        "--model.init_args.sampling.steps", "2", *DATA16, "--data.init_args.batch_size", "4",
        "--data.init_args.train_size", "64", "--trainer.limit_val_batches", "0"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    main(["fit", *TINY, "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
          "--trainer.max_steps", "2"])
    return str(next(root.rglob("last.ckpt")))


def test_expected_nfe_counts_heuns_last_euler_step():
    assert [expected_nfe(s, 8) for s in ("euler", "ddim", "dpmpp_2m", "heun")] == [8, 8, 8, 15]
    assert expected_nfe("heun", 1) == 1
    with pytest.raises(ValueError, match="unknown solver"):
        expected_nfe("rk4", 4)


def test_benchmark_writes_one_record_per_solver_and_steps(ckpt, tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["benchmark", "--config", RECIPE, "--ckpt", ckpt, "--solvers", "heun,dpmpp_2m", "--steps", "2,3",
               "--num-images", "4", "--batch-size", "2", "--guidance", "2.0", "--out", str(out),
               "--cache-dir", str(tmp_path / "cache"), *DATA16])
    assert rc == 0
    report = json.loads((out / "benchmark.json").read_text())
    records = report["records"]
    assert sorted((r["solver"], r["steps"]) for r in records) == [("dpmpp_2m", 2), ("dpmpp_2m", 3), ("heun", 2),
                                                                  ("heun", 3)]
    nfe = {(r["solver"], r["steps"]): r["nfe"] for r in records}
    assert nfe == {("heun", 2): 3, ("heun", 3): 5, ("dpmpp_2m", 2): 2, ("dpmpp_2m", 3): 3}
    for r in records:
        assert r["nfe_measured"] == r["nfe"]           # U-Net calls per generate batch, counted by a hook
        assert r["sec_per_image"] > 0 and r["num_images"] == 4
        assert math.isfinite(r["fid"]) and r["fid"] > 0 and math.isfinite(r["kid_mean"])
        assert 0.0 <= r["adherence/color"] <= 1.0      # the shapes judge runs for ShapesDataModule
    assert report["adherence"] == "shapes" and report["num_reference"] == 4 and report["guidance"] == 2.0
    md = (out / "benchmark.md").read_text()
    for (solver, steps), n in nfe.items():
        assert f"| {solver} | {steps} | {n} | " in md
    assert len([line for line in md.splitlines() if line.startswith(("| heun", "| dpmpp"))]) == 4
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("benchmark: best_fid=")
    best = min(records, key=lambda r: r["fid"])
    assert f"solver={best['solver']} steps={best['steps']}" in printed[-1]


def test_benchmark_refuses_mismatched_resolution_and_unknown_solver(ckpt, tmp_path):
    # the recipe's own data is 32 px, the fitted model 16 px: FID between the two would be meaningless
    with pytest.raises(SystemExit, match="match the recipe's data"):
        main(["benchmark", "--config", RECIPE, "--ckpt", ckpt, "--num-images", "2", "--out", str(tmp_path),
              "--data.init_args.val_size", "2"])
    with pytest.raises(SystemExit, match="unknown solver 'rk4'"):
        main(["benchmark", "--config", RECIPE, "--ckpt", ckpt, "--solvers", "rk4", *DATA16])


def test_markdown_table_formats_metrics():
    rows = [{"solver": "ddim", "steps": 8, "nfe": 8, "sec_per_image": 0.5, "fid": 12.345, "kid_mean": 0.0042,
             "classifier_accuracy": 0.75}, {"solver": "heun", "steps": 4, "nfe": 7, "sec_per_image": 0.25,
                                             "fid": float("nan")}]
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| solver | steps | NFE | s / image | FID | KID x1e3 | classifier acc. |"
    assert lines[2] == "| ddim | 8 | 8 | 0.5000 | 12.35 | 4.20 | 75.0% |"
    assert lines[3] == "| heun | 4 | 7 | 0.2500 | - | - | - |"


def test_spread_prompts_takes_every_class_from_a_sorted_reference():
    from lit_edify.benchmark import spread_prompts

    ref = [{"caption": c} for c in ["a"] * 4 + ["b"] * 4 + ["c"] * 4]
    assert [p["caption"] for p in spread_prompts(ref, 3)] == ["a", "b", "c"]
    assert [p["caption"] for p in spread_prompts(ref, 6)] == ["a", "a", "b", "b", "c", "c"]
    assert len(spread_prompts(ref, 30)) == 30 and spread_prompts(ref, 13)[12] == {"caption": "a"}
