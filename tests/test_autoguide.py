"""Autoguidance from an EMA snapshot (lit_edify.modules.autoguide): when the guide is taken, what it holds, that it
never trains, that checkpoints carry it, and that weight 1 is plain classifier-free guidance bit for bit."""
import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_edify.callbacks.ema import EMA
from lit_edify.data_modules.shapes import ShapesDataModule
from lit_edify.modules.autoguide import snapshot_step
from lit_edify.modules.base import BaseModel
from lit_edify.modules.config import SamplingConfig, flat
from lit_edify.pipelines.checkpoints import export_safetensors, load_module


class AverageAt(Callback):
    """Records the EMA average's U-Net weights after every step (this callback runs after the EMA's update)."""

    def __init__(self, ema):
        self.ema, self.seen = ema, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        avg = self.ema._average_model.module
        self.seen[trainer.global_step] = {k: v.clone() for k, v in avg.net.state_dict().items()}


def fit(kwargs, tmp_path, max_steps=6, guide_at=0.5):
    model = BaseModel(**flat(**kwargs, sampling={"steps": 3, "guide_at": guide_at, "autoguidance": 2.0}))
    data = ShapesDataModule(resolution=16, train_size=4 * max_steps, val_size=4, batch_size=4, multiple=8)
    ema = EMA(halflife_images=8, rampup_ratio=None)
    rec = AverageAt(ema)
    trainer = L.Trainer(max_steps=max_steps, callbacks=[ema, rec, ModelCheckpoint(dirpath=tmp_path, save_last=True)],
                        logger=False, limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(model, data)
    return model, rec


def test_the_guide_is_the_ema_at_guide_at_and_never_trains(tiny_base_kwargs, tmp_path):
    assert snapshot_step(0.5, 6) == 3 and snapshot_step(0.3, 7000) == 2100 and snapshot_step(0.01, 10) == 1
    model, rec = fit(tiny_base_kwargs, tmp_path)
    guide = model.guide
    assert float(guide.step) == 3
    assert not any(p.requires_grad for p in guide.parameters())
    for k, v in guide.net.state_dict().items():                # the EMA's weights right after step 3, exactly
        assert torch.equal(v, rec.seen[3][k]), k
    assert not torch.equal(guide.net.conv_out.weight, rec.seen[6]["conv_out.weight"])   # later EMA moved on
    assert not torch.equal(guide.net.conv_out.weight, model.net.conv_out.weight)
    opt = model.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in guide.parameters()}

    # checkpoints (Lightning's last.ckpt, and the .safetensors export) carry the guide and its step
    for path in (tmp_path / "last.ckpt", tmp_path / "m.safetensors"):
        if path.suffix == ".safetensors":
            export_safetensors(tmp_path / "last.ckpt", path)
        loaded = load_module(path)
        assert float(loaded.guide.step) == 3
        assert torch.equal(loaded.guide.net.conv_out.weight, guide.net.conv_out.weight)

    # weight 1 is plain CFG bit for bit; the recipe's weight 2 changes the samples
    model.eval()
    caps = ["a red circle", "a blue square"]
    plain = model.generate(caps, seed=1, autoguidance=1.0)
    off = BaseModel(**flat(**tiny_base_kwargs, sampling={"steps": 3}))
    off.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("guide.")})
    assert torch.equal(off.eval().generate(caps, seed=1), plain)
    guided = model.generate(caps, seed=1)                      # the config's autoguidance 2
    assert (guided - plain).abs().max() > 1e-3


def test_a_guide_never_taken_is_not_used_and_bad_settings_are_refused(tiny_base_kwargs):
    model = BaseModel(**flat(**tiny_base_kwargs, sampling={"steps": 2, "guide_at": 0.5, "autoguidance": 2.0})).eval()
    with pytest.warns(UserWarning, match="guide snapshot was never taken"):
        untaken = model.generate(["a red circle"], seed=0)
    assert torch.equal(untaken, model.generate(["a red circle"], seed=0, autoguidance=1.0))
    with pytest.raises(ValueError, match="needs a guide"):
        SamplingConfig(autoguidance=2.0)
    with pytest.raises(ValueError, match="guide_at"):
        SamplingConfig(guide_at=1.0, autoguidance=2.0)
    plain = BaseModel(**flat(**tiny_base_kwargs, sampling={"steps": 2})).eval()
    with pytest.raises(ValueError, match="trained with sampling.guide_at"):
        plain.generate(["a red circle"], autoguidance=2.0)
