"""`lit-edify quickstart`: trains on steps (not time), then writes samples and a report; the image-data
evaluation scores FID / KID / classifier accuracy and the artefact statistics against real images."""
import argparse
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lit_edify.modules.config import flat
from lit_edify import quickstart

ROOT = Path(__file__).resolve().parents[1]
SMALL = """
model:
  init_args:
    noise: {resolution: 16}
    net:
      overrides: {model_channels: 16, channel_mult: [1, 2], num_res_blocks: 1, attention_levels: [1],
                  head_dim: 16, context_dim: 32, pos_embed_size: 4}
    sampling: {steps: 2}
data:
  init_args: {resolution: 16, multiple: 8, batch_size: 4, val_size: 4}
trainer:
  limit_val_batches: 0
  callbacks: []
"""


def test_shapes_quickstart_stops_on_steps_and_reports(tmp_path):
    small = tmp_path / "small.yaml"
    small.write_text(SMALL)
    out = tmp_path / "qs"
    rc = quickstart.main(["--config", str(ROOT / "recipes/tiny/base32.yaml"), "--config", str(small),
                          "--steps", "3", "--out", str(out), "--num-prompts", "8"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3                                  # stopped on steps, not on the time cap
    assert report["test"]["n"] == 8 and report["heldout"]["n"] == 12
    assert set(report["targets"]) == {"color", "background", "shape", "pitch", "dof"}
    assert isinstance(report["meets_targets"], bool) and report["artefacts"]["block_ratio_vs_real"] > 0
    assert (out / "samples.png").is_file() and (out / "heldout.png").is_file()
    assert "meet" in (out / "report.md").read_text()
    # the sampling settings the scores came from: the recipes' (base32's solver and guidance, SMALL's steps)
    assert report["sampling"] == {"solver": "dpmpp_2m", "steps": 2, "guidance": 5.0, "guidance_interval": [0.5, 80.0],
                                  "autoguidance": 1.0}
    assert "guidance 5 for sigma in [0.5, 80]" in (out / "report.md").read_text()
    # re-scored from its checkpoint with another guidance interval: the report says which one
    ckpt = next(out.rglob("final.ckpt"))
    again = tmp_path / "again"
    assert quickstart.main(["--ckpt", str(ckpt), "--out", str(again), "--num-prompts", "8",
                            "--guidance", "2", "--guidance-interval", "0", "1000"]) == 0
    sampling = json.loads((again / "report.json").read_text())["sampling"]
    assert sampling["guidance"] == 2.0 and sampling["guidance_interval"] == [0.0, 1000.0]
    assert "guidance 2 for sigma in [0, 1000]" in (again / "report.md").read_text()


def test_quickstart_refuses_an_empty_guidance_interval(capsys):
    with pytest.raises(SystemExit):
        quickstart.parse(["--guidance-interval", "5", "1"])
    assert "--guidance-interval: guidance interval must be (lo, hi) with 0 <= lo < hi, got (5.0, 1.0)" in \
        capsys.readouterr().err


def test_image_data_evaluation_scores_against_real_images(tmp_path, tiny_base_kwargs):
    folder = tmp_path / "test"
    g = torch.Generator().manual_seed(0)
    for cls, value in (("dark", 40), ("light", 215)):
        (folder / cls).mkdir(parents=True)
        for i in range(12):                                      # greyscale squares, one class darker
            a = (torch.rand(16, 16, generator=g) * 30 + value).clamp(0, 255).to(torch.uint8)
            Image.fromarray(a.numpy(), "L").convert("RGB").save(folder / cls / f"{i}.png")
            (folder / cls / f"{i}.txt").write_text(f"a {cls} square\n")
    from lit_edify.modules.base import BaseModel

    torch.manual_seed(0)
    model = BaseModel(**flat(**tiny_base_kwargs)).eval()
    a = argparse.Namespace(out=tmp_path / "qs", num_images=8, num_reference=24, sample_steps=2, solver="ddim",
                           guidance=1.0, autoguidance=1.0, classifier_steps=20)
    a.out.mkdir()
    report = quickstart.evaluate_images(model, a, folder)
    s = report["scores"]
    assert s["num_images"] == 8 and s["fid"] > 0 and 0 <= s["classifier_accuracy"] <= 1
    assert report["artefacts"]["channel_spread_real"] == 0.0     # the real images are greyscale
    assert (a.out / "samples.png").is_file()
