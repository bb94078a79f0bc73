"""Non-finite guard: a NaN batch or gradient changes neither the weights, nor AdamW's state, nor the EMA; K in a row
stop training with a clear error while last.ckpt keeps the last good weights."""
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_edify.callbacks.ema import EMA
from lit_edify.callbacks.nonfinite import NonFiniteGuard, NonFiniteTrainingError
from lit_edify.modules.base import BaseModel

torch.set_num_threads(1)


def batches(n: int, nan_at: tuple[int, ...] = (), side: int = 16) -> list[dict]:
    """n training batches of 4 images (4, 3, side, side) in [-1, 1]; the images of ``nan_at`` hold one NaN."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        image = torch.rand(4, 3, side, side, generator=g) * 2 - 1
        if i in nan_at:
            image[1, 0, 3, 5] = float("nan")
        out.append({"image": image, "caption": ["a red circle", "a blue square", "a star", "a green triangle"],
                    "pitch": torch.zeros(4, dtype=torch.long), "dof": torch.ones(4, dtype=torch.long),
                    "media_type": torch.full((4,), -1)})
    return out


class Record(L.Callback):
    """After every batch (and after the EMA callback): raw weights, EMA weights and AdamW state."""

    def __init__(self, ema: EMA):
        self.ema, self.steps = ema, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        self.steps.append({
            "raw": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "ema": {k: v.detach().clone() for k, v in self.ema._average_model.module.state_dict().items()},
            "adam": [{k: v.clone() for k, v in opt.state[p].items()} for p in opt.param_groups[0]["params"]
                     if p in opt.state],
        })


def fit(model, data, *callbacks, max_steps: int) -> L.Trainer:
    trainer = L.Trainer(max_steps=max_steps, callbacks=list(callbacks), accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=None))
    return trainer


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_adam(a: list, b: list) -> bool:
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


class SkipBatch(BaseModel):
    """Lightning's own way to skip a batch: ``training_step`` returns None for it."""

    skip = 2

    def training_step(self, batch, batch_idx):
        return None if batch_idx == self.skip else super().training_step(batch, batch_idx)


def run(cls, data, guard=True, steps=5):
    torch.manual_seed(0)
    model = cls(net={"overrides": {"model_channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1,
                                   "attention_levels": (1,), "head_dim": 16, "context_dim": 32, "pos_embed_size": 4}},
                noise={"resolution": 16}, conditioning={"max_text_length": 16}, sampling={"steps": 4},
                optim={"warmup_steps": 1, "lr": 1e-3})
    ema = EMA(halflife_images=8, rampup_ratio=None)
    rec = Record(ema)
    guards = [NonFiniteGuard(max_consecutive=3)] if guard else []
    fit(model, data, *guards, ema, rec, max_steps=steps)
    return rec.steps, (guards[0] if guard else None)


def test_a_nan_batch_leaves_weights_adam_and_ema_as_a_run_that_skipped_it():
    nan_run, guard = run(BaseModel, batches(5, nan_at=(2,)))
    skip_run, _ = run(SkipBatch, batches(5))
    assert guard.total == 1 and guard.consecutive == 0
    # the NaN step itself changed nothing: raw weights, EMA and AdamW moments / step counts stay as after step 2
    before, after = nan_run[1], nan_run[2]
    assert same(before["raw"], after["raw"]) and same(before["ema"], after["ema"])
    assert same_adam(before["adam"], after["adam"])
    assert all(int(s["step"]) == 4 for s in nan_run[-1]["adam"])       # 5 batches, 4 real AdamW updates
    # and the rest of the run is the run that skipped that batch, bit for bit
    for a, b in zip(nan_run, skip_run, strict=True):
        assert same(a["raw"], b["raw"]) and same(a["ema"], b["ema"]) and same_adam(a["adam"], b["adam"])
    assert all(v.isfinite().all() for v in nan_run[-1]["raw"].values())


def test_without_the_guard_the_same_nan_batch_poisons_the_weights():
    """The check above is not vacuous: unguarded, one NaN batch makes the weights and the EMA non-finite."""
    steps, _ = run(BaseModel, batches(4, nan_at=(2,)), guard=False, steps=4)
    assert not all(v.isfinite().all() for v in steps[-1]["raw"].values())
    assert not all(v.isfinite().all() for v in steps[-1]["ema"].values())


class NaNGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class Linear(L.LightningModule):
    """y = w x fitted by AdamW with weight decay; ``nan_grad_from`` / ``nan_loss_from``: batches with a bad step."""

    def __init__(self, nan_grad_from=None, nan_loss_from=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.5, -0.3]))
        self.nan_grad_from, self.nan_loss_from = nan_grad_from, nan_loss_from

    def training_step(self, batch, idx):
        w = NaNGrad.apply(self.w) if self.nan_grad_from is not None and idx >= self.nan_grad_from else self.w
        loss = ((batch["image"] * w).sum(-1) - 1.0).pow(2).mean()
        return loss * float("nan") if self.nan_loss_from is not None and idx >= self.nan_loss_from else loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader([{"image": torch.ones(2)}] * 40, batch_size=4)


def test_a_nan_gradient_with_a_finite_loss_is_skipped_too():
    ema = EMA(halflife_images=8, rampup_ratio=None)
    rec, guard = Record(ema), NonFiniteGuard()
    trainer = L.Trainer(max_steps=4, callbacks=[guard, ema, rec], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Linear(nan_grad_from=2))
    assert guard.total == 2 and guard.consecutive == 2
    for k in (2, 3):   # no change to the weights, AdamW (weight decay included) or the EMA
        assert same(rec.steps[1]["raw"], rec.steps[k]["raw"]) and same(rec.steps[1]["ema"], rec.steps[k]["ema"])
        assert same_adam(rec.steps[1]["adam"], rec.steps[k]["adam"])
    assert trainer.callback_metrics["train/nonfinite_skipped"] == 2


def test_consecutive_nan_steps_stop_training_and_last_ckpt_keeps_the_last_good_weights(tmp_path):
    ema = EMA(halflife_images=8, rampup_ratio=None)
    rec, guard = Record(ema), NonFiniteGuard(max_consecutive=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    trainer = L.Trainer(max_steps=10, callbacks=[guard, ema, rec, ckpt], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive steps had a non-finite loss"):
        trainer.fit(Linear(nan_loss_from=2))
    good = rec.steps[1]                       # after the 2 good steps
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(last["state_dict"]["w"], good["ema"]["w"])       # EMA weights
    assert torch.equal(last["current_model_state"]["w"], good["raw"]["w"])
    assert all(math.isfinite(v) for v in last["state_dict"]["w"].tolist())
    assert last["callbacks"]["NonFiniteGuard"]["total"] == 2            # written before the 3rd skip stopped it


class Overflow(L.Callback):
    """An update that overflowed: the weights turn non-finite after step ``at`` although no gradient was."""

    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            with torch.no_grad():
                pl_module.w.fill_(float("inf"))


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    trainer = L.Trainer(max_steps=10, callbacks=[NonFiniteGuard(), Overflow(at=3), ckpt], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(NonFiniteTrainingError, match="refusing to write a checkpoint"):
        trainer.fit(Linear())
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and last["state_dict"]["w"].isfinite().all()
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=2.ckpt", "last.ckpt"]


def test_the_cli_adds_the_guard_once_and_a_recipe_can_configure_it():
    from test_cli import TINY

    from lit_edify.callbacks.truncation import TruncationReport
    from lit_edify.cli import build_cli

    plain = build_cli(TINY, run=False).trainer.callbacks
    assert [type(c) for c in plain[:2]] == [NonFiniteGuard, TruncationReport]
    own = build_cli([*TINY, "--trainer.callbacks+=lit_edify.callbacks.nonfinite.NonFiniteGuard",
                     "--trainer.callbacks.max_consecutive=3"], run=False).trainer.callbacks
    guards = [c for c in own if isinstance(c, NonFiniteGuard)]
    assert len(guards) == 1 and guards[0].max_consecutive == 3


def test_max_consecutive_must_be_positive():
    with pytest.raises(ValueError, match="max_consecutive must be >= 1"):
        NonFiniteGuard(max_consecutive=0)
