"""``lit-edify panorama`` refuses bad input with one-line usage errors (exit 2) before any work."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lit_edify.cli import main
from lit_edify.hdr_io import HDRError
from lit_edify.commands.panorama import SIZE_CHOICES
from lit_edify.pipelines.panorama import SIZES, hdr_to_outputs


@pytest.fixture
def files(tmp_path):
    for name in ("base.ckpt", "inpaint.ckpt", "hdr.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "wide.png")
    return tmp_path


def run(capsys, files, *extra, out=None, size="4k"):
    argv = ["panorama", "--prompt", "a red circle", "--size", size, "--out", str(out or files / "pano.exr"),
            "--ckpt", str(files / "base.ckpt"), "--inpaint-ckpt", str(files / "inpaint.ckpt"),
            "--hdr-ckpt", str(files / "hdr.ckpt"), *extra]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("lit-edify panorama: error: "), err
    return err[0]


def test_bad_arguments_are_one_line_usage_errors(capsys, files):
    assert SIZE_CHOICES == tuple(SIZES)  # the command's choices are the pipeline's sizes
    assert "--size '2k' is unknown; choose one of ['4k', '8k', '16k']" in run(capsys, files, size="2k")
    assert "(aspect 1.50); the panorama's views are square" in run(capsys, files, "--view", str(files / "wide.png"))
    assert "--hdr-width 1000 must divide the 4k width 4096" in run(capsys, files, "--hdr-width", "1000")
    assert "--hdr-width 16 must divide" in run(capsys, files, "--hdr-width", "16")
    assert "must end in .exr or .hdr" in run(capsys, files, out=files / "pano.png")
    assert "not found" in run(capsys, files, "--view", str(files / "missing.png"))
    assert "is not writable" in run(capsys, files, out=files / "base.ckpt" / "pano.exr")  # parent is a file
    if os.geteuid() != 0:  # root writes anywhere
        ro = files / "ro"
        ro.mkdir(mode=0o500)
        assert "is not writable" in run(capsys, files, out=ro / "pano.exr")
    assert "is a folder" in run(capsys, files, out=files)
    assert sorted(p.name for p in files.iterdir()) == ["base.ckpt", "hdr.ckpt", "inpaint.ckpt", "wide.png"] + (
        ["ro"] if os.geteuid() != 0 else [])


def test_a_failure_while_writing_leaves_nothing_under_the_output_names(tmp_path):
    log_hdr = torch.zeros(3, 16, 32)
    log_hdr[1, 5, 7] = float("nan")  # e.g. a broken LDR2HDR checkpoint
    with pytest.raises(HDRError, match="NaN"):
        hdr_to_outputs(log_hdr, tmp_path / "pano.exr")
    assert list(tmp_path.iterdir()) == []
