import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def save_module(module, path) -> str:
    """A minimal lit-edify checkpoint (what the safe loader reads) without a Trainer; ``from conftest import
    save_module`` in a test file (tests/ is on sys.path under pytest)."""
    from lit_edify.modules.registry import class_path

    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "lit_edify_class": class_path(type(module))}, path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_base_kwargs():
    """Smallest BaseModel settings that still exercise every code path (16 px, narrow U-Net)."""
    return dict(unet="tiny", unet_overrides={"model_channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1,
                                              "attention_levels": (1,), "head_dim": 16, "context_dim": 32,
                                              "pos_embed_size": 4},
                resolution=16, max_text_length=16, sample_steps=4, warmup_steps=1, lr=1e-3)


@pytest.fixture
def cli_error(capsys):
    """``cli_error(argv)``: run ``lit-edify argv``, assert it fails with exit code 1, no traceback and the error as
    the last stderr line (library progress bars may come before it), and return that line."""
    from lit_edify.cli import main

    def run(argv: list[str]) -> str:
        capsys.readouterr()
        assert main(list(argv)) == 1
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert "Traceback" not in err and lines and lines[-1].startswith("lit-edify: error: "), lines
        return lines[-1]

    return run
