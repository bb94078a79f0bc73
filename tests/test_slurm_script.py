"""recipes/slurm/train.sbatch run with a fake ``srun`` that records the command it would launch."""
import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes/slurm/train.sbatch"


def launch(tmp_path: Path, **env) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "srun"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/srun.args\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    full = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "1",
            "RUN_DIR": str(tmp_path / "run"), **env}
    subprocess.run(["bash", str(SCRIPT), "recipes/tiny/base32.yaml", "--trainer.max_steps", "10"], env=full,
                   check=True, cwd=ROOT)
    return (tmp_path / "srun.args").read_text().split("\n")[:-1]


def value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def test_gpu_node(tmp_path):
    args = launch(tmp_path, SLURM_GPUS_PER_NODE="4")
    assert value(args, "--trainer.accelerator") == "gpu" and value(args, "--trainer.devices") == "4"
    assert value(args, "--trainer.default_root_dir") == str(tmp_path / "run")
    assert value(args, "--trainer.logger.init_args.version") == "job77"
    assert "--ckpt_path" not in args and args[-2:] == ["--trainer.max_steps", "10"]


def test_cpu_node_does_not_ask_for_zero_devices(tmp_path):
    args = launch(tmp_path, SLURM_GPUS_PER_NODE="0", SLURM_NTASKS_PER_NODE="2")
    assert value(args, "--trainer.accelerator") == "cpu" and value(args, "--trainer.devices") == "2"


def test_resume_prefers_the_hpc_checkpoint_and_keeps_only_the_newest(tmp_path):
    ckpts = tmp_path / "run" / "job77" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"x")
    args = launch(tmp_path, SLURM_GPUS_PER_NODE="0")
    assert value(args, "--ckpt_path") == str(ckpts / "last.ckpt")  # no HPC checkpoint: continue from last.ckpt
    for n in (2, 10, 3):
        (tmp_path / "run" / f"hpc_ckpt_{n}.ckpt").write_bytes(b"x")
    args = launch(tmp_path, SLURM_GPUS_PER_NODE="0")
    assert "--ckpt_path" not in args  # Lightning restores the newest HPC checkpoint itself
    assert sorted(p.name for p in (tmp_path / "run").glob("hpc_ckpt_*.ckpt")) == ["hpc_ckpt_10.ckpt"]
