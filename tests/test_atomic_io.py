"""Atomic writes (lit_edify.io): a writer killed mid-save leaves the previous file whole and loadable."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from lit_edify.modules.config import flat
from lit_edify.io import atomic_path, atomic_save, save_image_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]

#: a child that starts saving a new version of argv[1] and blocks in the middle of it (inside pickling, after the
#: file has been opened) until it is killed; argv[2] is created once it is there
SLOW_SAVE = """
import sys, time, torch
from lit_edify.io import atomic_save

class Slow:
    def __reduce__(self):
        open(sys.argv[2], "w").close()
        time.sleep(120)
        return (int, (0,))

save = atomic_save if sys.argv[3] == "atomic" else lambda obj, path: torch.save(obj, path)
save({"weights": torch.zeros(1000), "slow": Slow()}, sys.argv[1])
"""


def _kill_mid_save(path: Path, how: str) -> None:
    flag = path.with_name("saving")
    child = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(path), str(flag), how], cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the child never started saving"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL


def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_file_loadable(tmp_path):
    path = tmp_path / "weights.pt"
    atomic_save({"weights": torch.arange(1000.0)}, path)
    _kill_mid_save(path, "atomic")
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["saving", "weights.pt"]


def test_the_same_kill_destroys_a_plain_torch_save(tmp_path):
    """The test above is not vacuous: the plain torch.save it replaces leaves a broken file."""
    path = tmp_path / "weights.pt"
    torch.save({"weights": torch.arange(1000.0)}, path)
    _kill_mid_save(path, "plain")
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "prompts.txt"
    write_text_atomic(path, "old\n")
    with pytest.raises(ZeroDivisionError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            1 / 0
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.txt"]


def test_images_keep_their_format_and_replace_the_old_file(tmp_path):
    path = tmp_path / "sub" / "grid.png"
    save_image_atomic(torch.zeros(3, 4, 6), path)
    save_image_atomic(torch.ones(2, 3, 4, 6), path, nrow=2, padding=0)
    img = Image.open(path)
    assert img.format == "PNG" and img.size == (12, 4) and img.getpixel((0, 0)) == (255, 255, 255)
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]


def test_sample_grid_files_are_written_whole(tmp_path, tiny_base_kwargs):
    from types import SimpleNamespace

    from lit_edify.callbacks.samples import SampleGrid
    from lit_edify.modules.base import BaseModel

    torch.manual_seed(0)
    model = BaseModel(**flat(**tiny_base_kwargs)).eval()
    grid = SampleGrid(prompts=["a red circle", "a blue square"], steps=1, out_dir=str(tmp_path))
    grid._write(SimpleNamespace(global_step=7, loggers=[]), model)
    assert Image.open(tmp_path / "step_0000007.png").format == "PNG"
    assert (tmp_path / "step_0000007.txt").read_text() == "a red circle\na blue square\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000007.png", "step_0000007.txt"]
