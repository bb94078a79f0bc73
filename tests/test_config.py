"""Typed configuration groups (issue 14 item 7): nested YAML sections, class defaults kept for the fields a recipe
leaves out, plain-dict checkpoints, and checkpoints with the older flat hyper-parameters still loading."""
import json
from pathlib import Path

import pytest
import torch

from lit_edify.commands.fit import build_cli
from lit_edify.io import atomic_save
from lit_edify.modules import BaseModel, Upsampler
from lit_edify.modules.config import NoiseConfig, OptimConfig, coerce, flat
from lit_edify.pipelines.checkpoints import load_module

ROOT = Path(__file__).resolve().parents[1]


def test_a_partial_section_updates_the_modules_own_defaults(tmp_path):
    """An upsampler recipe that gives only noise.resolution keeps the upsampler's noise range, not BaseModel's."""
    recipe = tmp_path / "up.yaml"
    recipe.write_text("model:\n  class_path: lit_edify.modules.upsampler.Upsampler\n  init_args:\n"
                      "    factor: 2\n    noise: {resolution: 32}\n    optim: {lr: 0.003}\n"
                      "    net: {overrides: {pos_embed_size: 8}}\n"
                      "data:\n  class_path: lit_edify.data_modules.shapes.ShapesDataModule\n"
                      "trainer: {logger: false, enable_checkpointing: false}\n")
    cli = build_cli(["--config", str(recipe), "--model.init_args.sampling.steps", "3"], run=False)
    cfg = cli.model.cfg
    assert cfg.noise.resolution == 32 and cfg.noise.sigma_max == 2.0 and cfg.noise.band_cutoffs == [2.0]
    assert cfg.optim.lr == 0.003 and cfg.optim.warmup_steps == OptimConfig().warmup_steps
    assert cfg.sampling.steps == 3 and cfg.sampling.guidance == 1.0          # the upsampler's guidance default
    assert cli.model.hparams["factor"] == 2


def test_groups_are_copied_and_unknown_fields_are_named():
    shared = NoiseConfig(resolution=16)
    a = coerce(NoiseConfig, shared)
    a.sigma_max = 1.0
    assert shared.sigma_max == 80.0                              # a module never mutates a caller's (or default) group
    assert coerce(NoiseConfig, {"sigma_max": 4.0}, NoiseConfig(resolution=64)) == NoiseConfig(resolution=64,
                                                                                              sigma_max=4.0)
    with pytest.raises(TypeError, match=r"no field\(s\) \['sigma_mx'\]"):
        coerce(NoiseConfig, {"sigma_mx": 4.0})
    with pytest.raises(TypeError, match="unexpected keyword argument 'sigma_mx'"):
        BaseModel(**flat(sigma_mx=4.0))


def test_checkpoint_hparams_are_nested_plain_dicts(tiny_base_kwargs):
    model = BaseModel(**flat(**tiny_base_kwargs))
    hp = dict(model.hparams)
    assert set(hp) == {"net", "noise", "conditioning", "optim", "sampling"}
    assert json.loads(json.dumps(hp)) == json.loads(json.dumps(model.cfg.hparams()))   # JSON-able, no objects
    assert hp["noise"]["resolution"] == 16 and hp["optim"]["lr"] == 1e-3 and hp["sampling"]["steps"] == 4


def _flat_checkpoint(model, flat_hparams: dict, path: Path) -> Path:
    atomic_save({"lit_edify_class": f"{type(model).__module__}.{type(model).__qualname__}",
                 "hyper_parameters": flat_hparams, "state_dict": model.state_dict()}, path)
    return path


def test_checkpoints_with_flat_hparams_still_load(tiny_base_kwargs, tmp_path):
    """A checkpoint written before the groups existed (flat names, all arguments as save_hyperparameters wrote them)
    rebuilds the same module: same configuration, bit-identical denoiser."""
    up_kw = {**tiny_base_kwargs, "resolution": 32, "factor": 2, "sigma_max": 2.0, "band_cutoffs": [2.0],
             "band_starts": [0.25], "guidance": 1.5, "fused_adamw": False, "channels_last": False}
    for cls, kw in ((BaseModel, tiny_base_kwargs), (Upsampler, up_kw)):
        torch.manual_seed(0)
        model = cls(**flat(**kw)).eval()
        old = _flat_checkpoint(model, dict(kw), tmp_path / f"{cls.__name__}.ckpt")
        loaded = load_module(old)
        assert type(loaded) is cls and loaded.cfg == model.cfg
        x, sigma = torch.randn(2, 3, kw["resolution"], kw["resolution"]), torch.tensor([0.2, 1.5])
        ctx, mask = model.encode_conditions(["a red circle", "a blue square"], drop=False)
        with torch.no_grad():
            assert torch.equal(model.denoise(x, sigma, ctx, mask), loaded.denoise(x, sigma, ctx, mask))
    assert loaded.cfg.optim.fused is False and loaded.cfg.sampling.guidance == 1.5 and loaded.hparams.factor == 2


def test_cli_resume_with_ckpt_path_rebuilds_the_module_from_its_checkpoint(tmp_path):
    """`lit-edify fit ... --ckpt_path last.ckpt` (what the SLURM script runs): LightningCLI re-parses the model from
    the checkpoint's hyper-parameters, which must name the class and hold the nested groups."""
    from test_cli import TINY  # tests/ is on sys.path under pytest

    from lit_edify.cli import main

    root, every_step = tmp_path / "run", tmp_path / "ckpt.yaml"
    every_step.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                          "      init_args: {every_n_train_steps: 1, save_last: true}\n")
    common = [*TINY, "--config", str(every_step), "--trainer.default_root_dir", str(root), "--trainer.logger", "false"]
    assert main(["fit", *common, "--trainer.max_steps", "2"]) == 0
    ckpt = next(root.rglob("last.ckpt"))
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["_class_path"] == "lit_edify.modules.base.BaseModel" and hp["noise"]["resolution"] == 16
    ckpt = ckpt.rename(ckpt.with_name("step2.ckpt"))
    assert main(["fit", *common, "--trainer.max_steps", "3", "--ckpt_path", str(ckpt)]) == 0
    resumed = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 3 and resumed["hyper_parameters"]["noise"] == hp["noise"]


def test_lr_schedule_warmup_constant_then_linear_decay_to_zero():
    from lit_edify.modules.mixin import lr_factor

    f = [lr_factor(s, warmup_steps=4, total_steps=20, decay_fraction=0.25) for s in range(21)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4:15] == [1.0] * 11   # warmup, then constant
    assert f[15:] == [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]                     # the last 5 = 25% of 20 steps: linear to 0
    assert [lr_factor(s, 4) for s in (3, 10_000)] == [1.0, 1.0]            # no decay: constant forever
    with pytest.raises(ValueError, match=r"decay_fraction must be in \[0, 1\)"):
        OptimConfig(decay_fraction=1.0)


def test_decay_fraction_follows_the_trainers_max_steps(tmp_path):
    """Through LightningCLI: the rate the last step used is lr / decay_steps and the rate after it is exactly 0; a
    decay with no max_steps fails with a message naming the fix."""
    from test_cli import TINY  # tests/ is on sys.path under pytest

    args = [*TINY, "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
            "--model.init_args.optim", json.dumps({"lr": 0.01, "warmup_steps": 1, "decay_fraction": 0.5})]
    cli = build_cli([*args, "--trainer.max_steps", "4"], run=False)
    seen = []
    cli.model.on_train_batch_start = lambda *a: seen.append(cli.trainer.optimizers[0].param_groups[0]["lr"])
    cli.trainer.fit(cli.model, cli.datamodule)
    assert seen == pytest.approx([0.01, 0.01, 0.01, 0.005]) and cli.trainer.optimizers[0].param_groups[0]["lr"] == 0
    cli = build_cli([*args, "--trainer.max_steps", "-1", "--trainer.max_epochs", "-1"], run=False)
    with pytest.raises(ValueError, match="set trainer.max_steps"):
        cli.model.configure_optimizers()


def test_max_time_arg_is_lightnings_days_hours_minutes_seconds():
    from lit_edify.commands.fit import max_time_arg

    assert max_time_arg(12) == "00:00:12:00" and max_time_arg(0.5) == "00:00:00:30"
    assert max_time_arg(1500.5) == "01:01:00:30"     # 25 h 0 min 30 s: a day, not hour 25


def test_learned_loss_weight_trains_the_logvar_and_logs_the_plain_loss(tmp_path):
    """noise.learned_loss_weight: the step optimises EDM2's uncertainty-weighted loss (LossLogvar's parameters are
    in the optimizer and move), while train/loss stays the plain EDM loss of the same batch."""
    from test_cli import TINY

    from lit_edify.diffusion.edm import uncertainty_weighted

    args = [*TINY, "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
            "--model.init_args.noise", json.dumps({"learned_loss_weight": True}), "--trainer.max_steps", "3"]
    cli = build_cli(args, run=False)
    model = cli.model
    seen = []
    step = model.training_step

    def spy(batch, batch_idx):
        out = step(batch, batch_idx)
        with model.seeded(1_000_003 * model.trainer.global_step + 7_919 * batch_idx + 1):
            raw, sigma = model.diffusion_loss(batch)
        seen.append((out.detach(), uncertainty_weighted(raw, model.loss_logvar(sigma)).mean().detach(),
                     model.trainer.callback_metrics.get("train/loss"), raw.mean().detach()))
        return out

    model.training_step = spy
    cli.trainer.fit(model, cli.datamodule)
    assert model.loss_logvar.linear.weight.abs().sum() > 0  # trained from its zero initialisation
    out, expected, logged, raw = seen[-1]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logged, raw, rtol=1e-5, atol=1e-6)
