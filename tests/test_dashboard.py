"""What a user sees in TensorBoard (docs/tensorboard.md), read back from the event file of a real tiny fit."""
import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from lit_edify.modules.config import flat
from lit_edify.callbacks.samples import SampleGrid, captioned_grid
from lit_edify.data_modules.shapes import ShapesDataModule
from lit_edify.modules.base import BaseModel

STEPS, VAL_EVERY, LOG_EVERY = 30, 10, 5


class Recording(BaseModel):
    """BaseModel that keeps the per-sample training losses and sigmas it logs, to check the logged means."""

    def _log_sigma_buckets(self, loss, sigma, split):
        if split == "train" and not self.trainer.sanity_checking:
            self.seen.append((self.trainer.global_step, loss.detach().clone(), sigma.detach().clone()))
        super()._log_sigma_buckets(loss, sigma, split)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_base_kwargs):
    """30 steps of the tiny base model on shapes, validation every 10 steps, a 4-image grid each time."""
    root = tmp_path_factory.mktemp("tb")
    torch.manual_seed(0)
    model = Recording(**flat(**tiny_base_kwargs))
    model.seen = []
    dm = ShapesDataModule(resolution=16, train_size=STEPS * 4, val_size=8, batch_size=4, multiple=16)
    grid = SampleGrid(num_images=4, steps=2)
    trainer = L.Trainer(max_steps=STEPS, val_check_interval=VAL_EVERY, log_every_n_steps=LOG_EVERY,
                        limit_val_batches=2, num_sanity_val_steps=1, accelerator="cpu", devices=1,
                        logger=TensorBoardLogger(root, name="", default_hp_metric=False), callbacks=[grid],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    acc = EventAccumulator(trainer.log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return trainer, grid, acc, model.seen


def _scalars(acc, tag):
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_training_losses_per_sigma_are_curves_over_steps(run):
    _, _, acc, seen = run
    tags = [t for t in acc.Tags()["scalars"] if t.startswith("train/loss_sigma_1e")]
    assert tags, acc.Tags()["scalars"]
    counts = {t: len(acc.Scalars(t)) for t in tags}
    assert max(counts.values()) == STEPS // LOG_EVERY, counts  # one point per logging step, not per epoch
    for t in tags:
        steps = [e.step for e in acc.Scalars(t)]
        assert all(s % LOG_EVERY == LOG_EVERY - 1 for s in steps), (t, steps)  # written with train/loss
        assert all(math.isfinite(e.value) and e.value > 0 for e in acc.Scalars(t))
    # each point is the mean over every sample of its decade in the last LOG_EVERY training steps
    # (the batch trained at global_step g is logged at TensorBoard step g)
    for t in tags:
        d = int(t.rsplit("1e", 1)[1])
        for e in acc.Scalars(t):
            window = [(l, sg) for g, l, sg in seen if e.step - LOG_EVERY < g <= e.step]
            losses = torch.cat([l[sg.log10().floor() == d] for l, sg in window])
            assert math.isclose(e.value, losses.mean().item(), rel_tol=1e-5), (t, e.step)
    # validation keeps one value per validation, at the step of val/loss
    val_steps = sorted(_scalars(acc, "val/loss"))
    assert len(val_steps) == STEPS // VAL_EVERY
    for t in (t for t in acc.Tags()["scalars"] if t.startswith("val/loss_sigma_1e")):
        assert set(_scalars(acc, t)) <= set(val_steps)


def test_hp_metric_is_the_validation_loss_and_never_the_placeholder(run):
    _, _, acc, _ = run
    hp, val = _scalars(acc, "hp_metric"), _scalars(acc, "val/loss")
    assert -1.0 not in hp.values()
    assert hp.keys() == val.keys() and all(math.isclose(hp[s], val[s], rel_tol=1e-6) for s in hp)


def test_hparams_tab_shows_the_curated_hyperparameters(run):
    _, _, acc, _ = run
    content = acc.PluginTagToContent("hparams")
    session = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    shown = {k: (v.string_value or v.number_value) for k, v in session.hparams.items()}
    assert shown["unet"] == "tiny" and shown["resolution"] == 16 and shown["batch_size"] == 4
    assert math.isclose(shown["lr"], 1e-3) and shown["max_steps"] == STEPS and shown["sample_steps"] == 4
    assert {"sigma_min", "sigma_max", "p_mean", "p_std", "guidance", "bands"} <= shown.keys()
    assert len(shown) <= 16                                               # a few, not the whole config
    metrics = [m.name.tag for m in experiment.metric_infos]
    assert metrics[0] == "hp_metric" and "val/loss" in metrics
    assert not any("loss_sigma" in m for m in metrics)


def test_sample_grid_is_logged_at_the_step_of_its_validation_scalars(run):
    trainer, _, acc, _ = run
    image_steps = [e.step for e in acc.Images("samples")]
    assert image_steps == sorted(_scalars(acc, "val/loss")) == [9, 19, 29]
    assert [e.step for e in acc.Tensors("samples/prompts/text_summary")] == image_steps


def test_saved_grid_has_a_caption_band_under_each_row_with_text(run):
    trainer, grid, acc, _ = run
    png = np.asarray(Image.open(grid.last_path).convert("RGB"))
    assert grid.last_path.name == f"step_{STEPS:07d}.png"
    raw_h, raw_w = 2 * 16 + 3, 2 * 16 + 3                                # torchvision grid of 2x2 16-px cells
    assert png.shape[0] > raw_h and png.shape[1] > raw_w
    k, pad, cell = 8, 2, 16 * 8                                           # 16-px cells upscaled x8 (min_cell 128)
    assert png.shape[1] == 2 * cell + 3 * pad
    first = png[pad: pad + cell, pad: pad + cell].astype(int)
    assert (first == np.repeat(np.repeat(first[::k, ::k], k, 0), k, 1)).all()  # nearest upscaling
    assert png.shape[0] > 2 * cell + 3 * pad + 2 * 10                     # a band of >= 1 text line per row
    band1 = png[pad + cell: pad + cell + 10, pad: pad + cell]             # the first line under the first cell
    assert (band1 < 128).any() and (band1 == 255).mean() > 0.5            # dark text on white
    tb = acc.Images("samples")[-1]
    assert (tb.height, tb.width) == png.shape[:2]                          # TensorBoard gets the same image


def test_captioned_grid_keeps_pixels_and_draws_only_given_captions():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 48)
    out = captioned_grid(images, ["a red circle", "", "", ""], nrow=2, min_cell=96, padding=2)
    k, ch, cw = 2, 64, 96
    assert out.shape[0] == 3 and out.shape[2] == 2 * cw + 3 * 2
    up = torch.nn.functional.interpolate(images, scale_factor=k, mode="nearest")
    expect = (up * 255).round() / 255
    assert torch.allclose(out[:, 2: 2 + ch, 2: 2 + cw], expect[0], atol=1e-6)
    band_h = out.shape[1] - 2 * ch - 3 * 2                                # only the first row has a band
    assert band_h > 0
    assert torch.allclose(out[:, 2 + ch + band_h + 2: 2 + 2 * ch + band_h + 2, 2: 2 + cw], expect[2], atol=1e-6)
    band = out[:, 2 + ch: 2 + ch + band_h]
    assert (band[:, :, 2: 2 + cw] < 0.5).any()                            # text under the captioned cell
    assert (band[:, :, 2 + cw + 2: 2 + 2 * cw + 2] == 1).all()            # nothing under the empty one
    with pytest.raises(ValueError, match="captions"):
        captioned_grid(images, ["one"], nrow=2)


def test_every_recipe_logger_turns_off_the_placeholder_hp_metric():
    import pathlib

    import yaml

    loggers = []
    for path in sorted(pathlib.Path(__file__).parents[1].glob("recipes/**/*.yaml")):
        logger = (yaml.safe_load(path.read_text()).get("trainer") or {}).get("logger")
        for entry in logger if isinstance(logger, list) else [logger]:
            if isinstance(entry, dict) and entry.get("class_path", "").endswith("TensorBoardLogger"):
                loggers.append((path.name, entry.get("init_args", {}).get("default_hp_metric")))
    assert loggers and all(flag is False for _, flag in loggers), loggers
