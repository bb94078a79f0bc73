"""Checkpoints can only instantiate this project's modules; corrupt files fail with one line; `lit-edify export`
writes .safetensors that every sampling entry point loads to bit-identical denoiser outputs."""
import json
import os
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors import safe_open
from safetensors.torch import save_file

from lit_edify.modules.config import flat
from lit_edify.callbacks.ema import EMA
from lit_edify.cli import main
from lit_edify.modules.base import BaseModel
from lit_edify.pipelines.checkpoints import CheckpointError, load_module, read_checkpoint

torch.set_num_threads(1)


def _batches(n=2):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, "caption": ["a red circle"] * 4}
            for _ in range(n)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_base_kwargs):
    """A real Lightning checkpoint of the tiny base model after 2 steps with the EMA callback."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = BaseModel(**flat(**tiny_base_kwargs))
    callbacks = [EMA(halflife_images=8, rampup_ratio=None), ModelCheckpoint(dirpath=root, save_last=True)]
    trainer = L.Trainer(max_steps=2, callbacks=callbacks, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)
    trainer.fit(model, torch.utils.data.DataLoader(_batches(), batch_size=None))
    return root / "last.ckpt"   # written during training: EMA weights as state_dict, raw ones beside them


def _crafted(ckpt, tmp_path, target, hparams):
    meta = torch.load(ckpt, weights_only=True)
    meta["lit_edify_class"], meta["hyper_parameters"] = target, hparams
    path = tmp_path / "crafted.ckpt"
    torch.save(meta, path)
    return path


def _payloads(marker):
    return [
        ("os.system", {"command": f"touch {marker}"}),
        ("subprocess.Popen", {"args": ["touch", str(marker)]}),
        ("subprocess.call", {"args": ["touch", str(marker)]}),
        ("builtins.eval", {"source": f"open({str(marker)!r}, 'w').close()"}),
        ("builtins.exec", {"source": f"open({str(marker)!r}, 'w').close()"}),
        ("torch.nn.Linear", {"in_features": 2, "out_features": 2}),
        ("lit_edify.modules.mixin.shared_text_encoder", {"name_or_path": "minilm", "max_length": 4}),
    ]


@pytest.mark.parametrize("index", range(7))
def test_a_checkpoint_naming_a_foreign_class_is_refused_and_runs_nothing(ckpt, tmp_path, index, cli_error):
    marker = tmp_path / "PWNED"
    target, hparams = _payloads(marker)[index]
    path = _crafted(ckpt, tmp_path, target, hparams)
    with pytest.raises(CheckpointError, match="is not a lit-edify module; a checkpoint may only name one of: "
                                              "lit_edify.modules.base.BaseModel"):
        load_module(path)
    # every sampling entry point goes through it
    assert "Refusing to load it" in cli_error(["sample", "--ckpt", str(path), "--prompt", "a red circle",
                                               "--out", str(tmp_path / "out")])
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_a_safetensors_file_naming_a_foreign_class_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "crafted.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"lit_edify_class": "os.system",
                                                          "hyper_parameters": json.dumps({"command": f"touch {marker}"})})
    with pytest.raises(CheckpointError, match="'os.system' is not a lit-edify module"):
        load_module(path)
    assert not marker.exists()


class Payload:
    """A pickle that would run a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_payload_is_refused_by_weights_only_loading(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({"lit_edify_class": "lit_edify.modules.base.BaseModel", "hyper_parameters": {},
                "state_dict": {}, "x": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="holds objects other than tensors and plain containers"):
        load_module(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"PK\x03\x04" + os.urandom(200), b"\x10" + b"\0" * 7 + b"{x"],
                         ids=["zero-bytes", "random-bytes", "zip-garbage", "safetensors-garbage"])
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_a_corrupt_file_gives_one_clear_line(tmp_path, content, suffix, cli_error):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    err = cli_error(["sample", "--ckpt", str(path), "--prompt", "a red circle", "--out", str(tmp_path / "out")])
    assert err.startswith("lit-edify: error: CheckpointError: not a lit-edify checkpoint: ")
    with pytest.raises(CheckpointError, match="^not a lit-edify checkpoint: ") as info:
        load_module(path)
    e = info.value
    assert "\n" not in str(e) and e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
    assert not (tmp_path / "out").exists()


def test_a_truncated_checkpoint_gives_one_clear_line(ckpt, tmp_path):
    path = tmp_path / "half.ckpt"
    path.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="^not a lit-edify checkpoint: .*unreadable") as info:
        load_module(path)
    assert "\n" not in str(info.value)


def test_loading_the_real_checkpoint_warns_nothing(ckpt):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_module(ckpt)
    assert isinstance(model, BaseModel) and not model.training
    assert [str(w.message) for w in caught if "weights_only" in str(w.message)] == []


def _denoised(model):
    g = torch.Generator().manual_seed(1)
    x, sigma = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([0.3, 4.0])
    ctx, mask = model.encode_conditions(["a red circle", "a blue square"], drop=False)
    with torch.no_grad():
        return model.denoise(x, sigma, ctx, mask)


def test_export_then_load_gives_bit_identical_denoiser_outputs(ckpt, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    assert "exported BaseModel EMA weights" in capsys.readouterr().out
    from_ckpt, from_st = load_module(ckpt), load_module(out)
    assert torch.equal(_denoised(from_ckpt), _denoised(from_st))
    _, hparams, state, ema = read_checkpoint(out)
    raw = torch.load(ckpt, weights_only=True)
    assert ema and all(torch.equal(state[k], v) for k, v in raw["state_dict"].items())       # the EMA weights
    assert any(not torch.equal(state[k], v) for k, v in raw["current_model_state"].items())  # not the raw ones
    assert hparams["conditioning"]["max_text_length"] == 16
    with safe_open(str(out), "pt") as f:  # class and hyper-parameters are plain JSON metadata
        assert f.metadata()["lit_edify_class"] == "lit_edify.modules.base.BaseModel"


def test_sample_accepts_the_exported_file(ckpt, tmp_path):
    from PIL import Image

    out = tmp_path / "model.safetensors"
    main(["export", "--ckpt", str(ckpt), "--out", str(out)])
    main(["sample", "--ckpt", str(out), "--prompt", "a red circle", "--steps", "1", "--out", str(tmp_path / "img")])
    assert Image.open(tmp_path / "img" / "000.png").size == (16, 16)


def test_export_refuses_to_overwrite_or_a_wrong_suffix(ckpt, tmp_path, capsys):
    existing = tmp_path / "model.safetensors"
    existing.write_bytes(b"keep")
    for out in (existing, tmp_path / "model.ckpt"):
        with pytest.raises(SystemExit) as info:
            main(["export", "--ckpt", str(ckpt), "--out", str(out)])
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "already exists; pass --force" in err and "must end in .safetensors" in err
    assert existing.read_bytes() == b"keep"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(existing), "--force"]) == 0
    assert isinstance(load_module(existing), BaseModel)


def test_a_project_class_with_foreign_arguments_is_refused(ckpt, tmp_path):
    path = _crafted(ckpt, tmp_path, "lit_edify.modules.base.BaseModel", {"command": "touch x"})
    with pytest.raises(CheckpointError, match=r"hyper-parameters \['command'\] are not arguments of BaseModel"):
        load_module(path)
