"""Fault tolerance and distribution: exact resume from last.ckpt, and 2-process DDP (gloo) on CPU."""
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_edify.modules.config import flat
from lit_edify.callbacks.ema import EMA
from lit_edify.data_modules.shapes import ShapesDataModule
from lit_edify.modules.base import BaseModel


class Recorder(L.Callback):
    def __init__(self):
        self.losses, self.captions = {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = outputs["loss"].item()
        self.captions[trainer.global_step] = list(batch["caption"])


def _fit(kw, tmp_path, max_epochs, ckpt_path=None, name="run"):
    L.seed_everything(0)
    model = BaseModel(**flat(**kw))
    data = ShapesDataModule(resolution=16, train_size=12, val_size=4, batch_size=4, multiple=8)
    rec, ema = Recorder(), EMA(halflife_images=8, rampup_ratio=None)
    ckpt = ModelCheckpoint(dirpath=tmp_path / name, save_last=True)
    trainer = L.Trainer(max_epochs=max_epochs, callbacks=[ema, rec, ckpt], logger=False, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        use_distributed_sampler=False)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, model, rec, ema


def test_resume_from_last_ckpt_continues_exactly(tiny_base_kwargs, tmp_path):
    full_trainer, _, full, full_ema = _fit(tiny_base_kwargs, tmp_path, 2, name="full")
    _fit(tiny_base_kwargs, tmp_path, 1, name="part")
    resumed_trainer, _, resumed, resumed_ema = _fit(tiny_base_kwargs, tmp_path, 2, tmp_path / "part" / "last.ckpt",
                                                    name="resumed")
    assert resumed_trainer.global_step == full_trainer.global_step == 6
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert abs(resumed.losses[step] - full.losses[step]) < 1e-5 * max(1.0, abs(full.losses[step]))
    opt_full = full_trainer.optimizers[0].state_dict()["state"]
    opt_res = resumed_trainer.optimizers[0].state_dict()["state"]
    assert all(torch.allclose(opt_full[k]["exp_avg"], opt_res[k]["exp_avg"], atol=1e-6) for k in opt_full)
    assert resumed_ema.images_seen == full_ema.images_seen == 24
    for a, b in zip(full_ema._average_model.parameters(), resumed_ema._average_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def _fit_steps(kw, tmp_path, max_steps, workers, ckpt_path=None, name="run"):
    L.seed_everything(0)
    model = BaseModel(**flat(**kw))
    data = ShapesDataModule(resolution=16, train_size=12, val_size=4, batch_size=4, multiple=8, num_workers=workers)
    rec, ema = Recorder(), EMA(halflife_images=8, rampup_ratio=None)
    ckpt = ModelCheckpoint(dirpath=tmp_path / name, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    trainer = L.Trainer(max_steps=max_steps, callbacks=[ema, rec, ckpt], logger=False, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        use_distributed_sampler=False)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, rec, ema


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_continues_exactly(tiny_base_kwargs, tmp_path, workers, recwarn):
    """3 batches per epoch; stopped after step 4 (epoch 1, batch 1) and resumed: steps 5-7 see the same batches
    (the rest of epoch 1, then epoch 2), the same losses and end with the same weights and EMA."""
    full_trainer, full, full_ema = _fit_steps(tiny_base_kwargs, tmp_path, 7, workers, name="full")
    _fit_steps(tiny_base_kwargs, tmp_path, 4, workers, name="part")
    resumed_trainer, resumed, resumed_ema = _fit_steps(tiny_base_kwargs, tmp_path, 7, workers,
                                                       tmp_path / "part" / "step=4.ckpt", name="resumed")
    assert sorted(resumed.losses) == [5, 6, 7]
    for step in (5, 6, 7):
        assert resumed.captions[step] == full.captions[step], f"step {step}: another batch"
        assert abs(resumed.losses[step] - full.losses[step]) < 1e-6 * max(1.0, abs(full.losses[step]))
    for a, b in zip(full_trainer.lightning_module.parameters(), resumed_trainer.lightning_module.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    for a, b in zip(full_ema._average_model.parameters(), resumed_ema._average_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not [w for w in recwarn if "not resumable" in str(w.message)]


class DDPProbe(L.Callback):
    """Writes, per rank, the indices its sampler yields this epoch and the final EMA weights."""

    def __init__(self, out):
        self.out = str(out)

    def on_train_epoch_start(self, trainer, pl_module):
        sampler = trainer.train_dataloader.sampler
        indices = [i for b in sampler for i in b]
        with open(f"{self.out}/indices_{trainer.global_rank}.json", "w") as f:
            json.dump(indices, f)

    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        torch.save(flat, f"{self.out}/weights_{trainer.global_rank}.pt")


def test_two_process_ddp_on_cpu(tiny_base_kwargs, tmp_path):
    L.seed_everything(0)
    model = BaseModel(**flat(**tiny_base_kwargs))
    data = ShapesDataModule(resolution=16, train_size=16, val_size=4, batch_size=2, multiple=8)
    trainer = L.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=3, logger=False,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, enable_checkpointing=False,
                        callbacks=[EMA(halflife_images=8, rampup_ratio=None), DDPProbe(tmp_path)])
    trainer.fit(model, data)
    seen = [set(json.loads((tmp_path / f"indices_{r}.json").read_text())) for r in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]              # disjoint shards
    assert seen[0] | seen[1] == set(range(16))                         # together: the whole epoch
    w0, w1 = (torch.load(tmp_path / f"weights_{r}.pt") for r in (0, 1))
    assert torch.equal(w0, w1)                                         # EMA weights identical on both ranks
