"""The command line: SLURM auto-requeue, resume after requeue, sampling, and the user-facing error paths."""
import json
import os
import signal
import stat
from pathlib import Path

import lightning as L
import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment

from lit_edify.data_modules.buckets import ASPECT_RATIOS, bucket_shape
from lit_edify.cli import build_cli, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", str(ROOT / "recipes/tiny/base32.yaml"), "--model.init_args.noise.resolution", "16",
        "--model.init_args.net.overrides",
        json.dumps({"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1],
                    "head_dim": 16, "context_dim": 32, "pos_embed_size": 4}),
        "--model.init_args.sampling.steps", "2", "--data.init_args.resolution", "16", "--data.init_args.multiple", "8",
        "--data.init_args.batch_size", "4", "--data.init_args.val_size", "4", "--data.init_args.train_size", "64",
        "--trainer.limit_val_batches", "0"]


class SendSignal(L.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture
def slurm_env(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"                       # records the requeue request instead of talking to SLURM
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/scontrol.log\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for k, v in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
                 "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "lit-edify",
                 "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(k, v)
    return tmp_path


def test_slurm_requeue_on_sigusr1_and_resume(slurm_env):
    root = slurm_env / "run"
    args = TINY + ["--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root), "--trainer.max_steps", "4"]
    cli = build_cli(args, run=False)
    env = cli.trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal == signal.SIGUSR1
    cli.trainer.callbacks.append(SendSignal(at_step=2))
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        cli.trainer.fit(cli.model, cli.datamodule)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert (slurm_env / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert (root / "hpc_ckpt_1.ckpt").is_file()
    # the requeued job starts the same command again: Lightning resumes from the HPC checkpoint by itself
    again = build_cli(args, run=False)
    again.trainer.fit(again.model, again.datamodule)
    assert again.trainer.global_step == 4
    assert again.trainer.fit_loop.epoch_loop._batches_that_stepped == 4


def test_unknown_recipe_key_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "recipes/tiny/base32.yaml"), "--model.init_args.learning_rat", "1"])
    assert info.value.code != 0
    assert "learning_rat" in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path, cli_error):
    err = cli_error(["sample", "--ckpt", str(tmp_path / "nope.ckpt"), "--prompt", "a red circle"])
    assert err.startswith("lit-edify: error: FileNotFoundError: ") and "not found: train one with" in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found: train one with"):
        main(["sample", "--ckpt", str(tmp_path / "nope.ckpt"), "--prompt", "a red circle", "--debug"])


UNET = json.dumps({"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1],
                   "head_dim": 16, "context_dim": 32, "pos_embed_size": 8})
TINY_UP = ["--config", str(ROOT / "recipes/tiny/upsampler64.yaml"), "--model.init_args.noise.resolution", "32",
           "--model.init_args.net.overrides", UNET, "--model.init_args.sampling.steps", "2",
           "--data.init_args.resolution", "32", "--data.init_args.multiple", "16", "--data.init_args.batch_size", "2",
           "--data.init_args.val_size", "5", "--data.init_args.train_size", "20", "--trainer.limit_val_batches", "0"]


def test_fit_then_sample_both_plans_for_every_aspect(tmp_path):
    from PIL import Image

    ckpts = {}
    for name, args in [("base", TINY), ("up", TINY_UP)]:
        root = tmp_path / name
        main(["fit", *args, "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
              "--trainer.max_steps", "2"])
        ckpts[name] = str(next(root.rglob("last.ckpt")))
    for aspect in ASPECT_RATIOS:
        h, w = bucket_shape(aspect, 16, 8)   # the base's bucket at 16 px (U-Net multiple 8)
        out = tmp_path / aspect.replace(":", "x")
        main(["sample", "--ckpt", ckpts["base"], "--prompt", "a red circle", "--prompt", "a blue square",
              "--aspect", aspect, "--steps", "2", "--out", str(out / "base")])
        assert Image.open(out / "base" / "000.png").size == (w, h)
        assert (out / "base" / "prompts.txt").read_text().count("\n") == 2
        for plan in ("cascade", "switch"):
            main(["sample", "--ckpt", ckpts["base"], "--upsampler-ckpt", ckpts["up"], "--plan", plan,
                  "--prompt", "a red circle", "--aspect", aspect, "--steps", "2", "--upsampler-steps", "2",
                  "--out", str(out / plan)])
            assert Image.open(out / plan / "000.png").size == (2 * w, 2 * h)


def test_default_root_dir_moves_the_recipe_logger(tmp_path):
    """The tiny recipe's TensorBoard logger names runs/tiny_base32; --trainer.default_root_dir wins over it."""
    cli = build_cli([*TINY, "--trainer.default_root_dir", str(tmp_path / "run")], run=False)
    assert Path(cli.trainer.logger.save_dir) == tmp_path / "run"
    assert Path(cli.trainer.default_root_dir) == tmp_path / "run"
    plain = build_cli(TINY, run=False)
    assert Path(plain.trainer.logger.save_dir) == Path("runs/tiny_base32")


def test_plain_progress_lines_when_stdout_is_not_a_terminal(tmp_path, capsys):
    """Under pytest stdout is captured (not a TTY), as in a SLURM output file: fit prints step lines."""
    cli = build_cli([*TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "4",
                     "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("train/loss" in ln and "steps/s" in ln and "ETA" in ln for ln in lines)


def test_a_fit_that_fails_before_its_first_step_leaves_no_run_folder(tmp_path, cli_error):
    root = tmp_path / "run"
    err = cli_error(["fit", *TINY, "--trainer.default_root_dir", str(root), "--data.init_args.batch_size", "0"])
    assert "batch_size" in err
    assert not root.exists()  # no config.yaml, no empty logger version folder
    keep = tmp_path / "existing"
    (keep / "version_0").mkdir(parents=True)
    (keep / "notes.txt").write_text("mine")
    cli_error(["fit", *TINY, "--trainer.default_root_dir", str(keep), "--data.init_args.batch_size", "0"])
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt", "version_0"]  # what was there stays


def test_an_unknown_sample_solver_fails_before_training(tmp_path, cli_error):
    err = cli_error(["fit", *TINY, "--trainer.default_root_dir", str(tmp_path / "r"),
                     "--model.init_args.sampling.solver", "rk4"])
    assert "unknown solver 'rk4'" in err and not (tmp_path / "r").exists()


class StepLog(L.Callback):
    """Records the optimizer steps a run makes; stops it right after the step that sends SIGUSR1 (the job is
    killed after SLURM's requeue in a real cluster)."""

    def __init__(self, signal_at=None):
        self.steps, self.signal_at = [], signal_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(trainer.global_step)
        if trainer.global_step == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)
            trainer.should_stop = True


def test_two_slurm_requeues_one_run_folder_and_the_newest_checkpoint_wins(slurm_env):
    """As recipes/slurm/train.sbatch runs it: one logger version per job, Lightning resuming from the newest
    HPC checkpoint after each requeue."""
    root = slurm_env / "run"
    args = TINY + ["--trainer.default_root_dir", str(root), "--trainer.logger.init_args.version", "job4242",
                   "--trainer.max_steps", "6"]
    logs = []
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        for signal_at in (2, 4, None):  # the job, its first requeue, its second requeue
            cli = build_cli(args, run=False)
            log = StepLog(signal_at)
            cli.trainer.callbacks.append(log)
            cli.trainer.fit(cli.model, cli.datamodule)
            logs.append(log.steps)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert logs == [[1, 2], [3, 4], [5, 6]]  # each requeue continues from the newest HPC checkpoint
    assert (slurm_env / "scontrol.log").read_text().split() == ["requeue", "4242"] * 2
    assert sorted(p.name for p in root.iterdir()) == ["hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt", "job4242"]
