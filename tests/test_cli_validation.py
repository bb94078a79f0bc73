"""`lit-edify sample` and `lit-edify data` reject bad arguments before doing any work, with a clear message."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_edify.data_modules.prepare import MARKER
from lit_edify.data_modules.prepare import main as data_main
from lit_edify.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _sample_error(tmp_path, capsys, *extra, prompt="a red circle") -> str:
    """Run `lit-edify sample` on a checkpoint that does not exist: a validation error must come first."""
    with pytest.raises(SystemExit) as info:
        main(["sample", "--ckpt", str(tmp_path / "missing.ckpt"), "--prompt", prompt, *extra])
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "lots"])
def test_guidance_must_be_finite(tmp_path, capsys, value):
    err = _sample_error(tmp_path, capsys, f"--guidance={value}", "--out", str(tmp_path / "out"))
    assert "--guidance" in err and ("finite" in err or "must be a number" in err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--steps", "--upsampler-steps"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_steps_must_be_at_least_one(tmp_path, capsys, flag, value):
    err = _sample_error(tmp_path, capsys, flag, value)
    assert flag in err and f"must be an integer >= 1, got {value}" in err


def test_out_naming_an_existing_file_is_refused_before_sampling(tmp_path, capsys):
    out = tmp_path / "grid.png"
    out.write_bytes(b"user file")
    err = _sample_error(tmp_path, capsys, "--out", str(out))
    assert "exists and is not a folder" in err
    assert out.read_bytes() == b"user file"


def test_out_below_a_file_is_not_writable(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = _sample_error(tmp_path, capsys, "--out", str(tmp_path / "file" / "samples"))
    assert "is not writable" in err


def test_control_characters_in_a_prompt_are_refused(tmp_path, capsys):
    err = _sample_error(tmp_path, capsys, prompt="a red\x1b[31m circle")
    assert "--prompt number 1 contains the control character '\\x1b' at position 5" in err


def test_undecodable_prompt_bytes_are_refused(tmp_path, capsys):
    err = _sample_error(tmp_path, capsys, prompt=os.fsdecode(b"a caf\xe9 on a hill"))  # how argv carries them
    assert "--prompt number 1 is not valid UTF-8 text" in err


def test_undecodable_prompt_bytes_from_a_real_command_line(tmp_path):
    cmd = [sys.executable, "-m", "lit_edify.cli", "sample", "--ckpt", os.fsencode(tmp_path / "missing.ckpt"),
           "--prompt", b"a caf\xe9 on a hill"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2
    assert res.stderr.decode().strip().splitlines() == [  # one line, no usage block
        "lit-edify sample: error: --prompt number 1 is not valid UTF-8 text; pass the caption UTF-8 encoded "
        "(see lit-edify sample --help)"]


def test_a_missing_upsampler_checkpoint_is_found_before_loading_the_base(tmp_path, cli_error):
    (tmp_path / "base.ckpt").write_bytes(b"")  # would fail to load: the missing upsampler must be reported first
    err = cli_error(["sample", "--ckpt", str(tmp_path / "base.ckpt"), "--upsampler-ckpt", str(tmp_path / "up.ckpt"),
                     "--prompt", "a red circle"])
    assert re.search("FileNotFoundError: --upsampler-ckpt .* not found", err)


# ---------------------------------------------------------------------------------------------- lit-edify data
def _stamps(root: Path) -> Path:
    (root / "animals").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(root / "animals" / "frog.png")
    (root / "animals" / "frog.txt").write_text("A frog.\n")
    return root


def _tux(stamps, out, *extra) -> int:
    return data_main(["tuxpaint", "--stamps-dir", str(stamps), "--out", str(out), "--no-svg", *extra])


def test_data_refuses_a_folder_with_user_files(tmp_path, capsys):
    stamps, out = _stamps(tmp_path / "stamps"), tmp_path / "mine"
    (out / "animals").mkdir(parents=True)
    (out / "animals" / "frog.txt").write_text("my own notes\n")
    assert _tux(stamps, out) == 2
    assert "is not empty: it holds files that `lit-edify data` did not write" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == ["animals", "frog.txt"]     # nothing written, nothing replaced
    assert (out / "animals" / "frog.txt").read_text() == "my own notes\n"
    assert _tux(stamps, out, "--force") == 0                                        # unless the user insists
    assert (out / "animals" / "frog.png").is_file()


def test_data_may_rewrite_its_own_output_but_not_another_commands(tmp_path, capsys):
    stamps, out = _stamps(tmp_path / "stamps"), tmp_path / "data"
    assert _tux(stamps, out) == 0 and (out / MARKER).is_file()
    assert _tux(stamps, out) == 0                                                   # its own earlier output
    rc = data_main(["fashion-mnist", "--out", str(out), "--source-dir", str(tmp_path / "none")])
    assert rc == 2 and "holds the output of `lit-edify data tuxpaint`" in capsys.readouterr().err


def test_data_out_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert _tux(_stamps(tmp_path / "stamps"), tmp_path / "f") == 2
    assert "exists and is not a folder" in capsys.readouterr().err
