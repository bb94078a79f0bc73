"""EMA callback: half-life in images independent of batch size, ramp-up, and EMA weights in checkpoints."""
import math

import lightning as L
import pytest
import torch

from lightning.pytorch.callbacks import ModelCheckpoint

from lit_edify.callbacks.ema import EMA


@pytest.mark.parametrize("batch", [1, 8, 64])
def test_halflife_is_counted_in_images(batch):
    ema = EMA(halflife_images=512, rampup_ratio=None)
    betas = [ema.decay(batch) for _ in range(512 // batch)]
    assert math.isclose(math.prod(betas), 0.5, rel_tol=1e-9)          # weight of the start after 512 images


def test_rampup_shortens_the_early_halflife():
    ema = EMA(halflife_images=10_000, rampup_ratio=0.1)
    assert math.isclose(ema.decay(100), 0.5 ** (100 / 10))              # half-life 0.1 * 100 images
    for _ in range(2000):
        ema.decay(100)
    assert math.isclose(ema.decay(100), 0.5 ** (100 / 10_000))          # capped at the configured half-life


class Scalar(L.LightningModule):
    """w is pulled to 1.0 by SGD; the EMA lags behind it."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, idx):
        return (self.w - 1.0) ** 2 * batch["image"].shape[0] / batch["image"].shape[0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader([{"image": torch.zeros(1)}] * 40, batch_size=4)


def test_ema_tracks_the_weights_and_lands_in_the_checkpoint(tmp_path):
    model, ema = Scalar(), EMA(halflife_images=8, rampup_ratio=None)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_last=True)
    trainer = L.Trainer(max_steps=10, callbacks=[ema, ckpt_cb], logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, enable_model_summary=False)
    trainer.fit(model)
    # replay the raw trajectory: w_k = 1 - 0.8**k (SGD on (w-1)^2 with lr 0.1), EMA with beta = 0.5**(4/8)
    beta, avg = 0.5 ** 0.5, 0.0
    for k in range(1, 11):
        w = 1 - 0.8 ** k
        avg = w if k == 1 else beta * avg + (1 - beta) * w
    assert math.isclose(model.w.item(), avg, rel_tol=1e-5)              # EMA copied in at the end of training
    assert ema.images_seen == 40
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)       # written during training, at step 10
    assert math.isclose(ckpt["state_dict"]["w"].item(), avg, rel_tol=1e-5)
    assert math.isclose(ckpt["current_model_state"]["w"].item(), 1 - 0.8**10, rel_tol=1e-5)


class ScalarWithFrozen(Scalar):
    """Scalar plus a large frozen parameter that the EMA must keep exactly and need not average."""

    def __init__(self):
        super().__init__()
        self.frozen = torch.nn.Parameter(torch.randn(1000), requires_grad=False)


def test_frozen_parameters_are_kept_exactly_and_left_out_of_the_update(tmp_path, monkeypatch):
    lerped = []
    real_lerp = torch._foreach_lerp_

    def counting_lerp(a, b, w):
        lerped.append(sum(t.numel() for t in a))
        return real_lerp(a, b, w)

    monkeypatch.setattr(torch, "_foreach_lerp_", counting_lerp)
    model, ema = ScalarWithFrozen(), EMA(halflife_images=8, rampup_ratio=None)
    start = model.frozen.detach().clone()
    trainer = L.Trainer(max_steps=10, callbacks=[ema], logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, enable_model_summary=False)
    trainer.fit(model)
    assert lerped and set(lerped) == {1}                               # only w is averaged, 9 updates after the copy
    assert len(lerped) == 9
    assert torch.equal(model.frozen, start)                            # the frozen values came back unchanged
    assert torch.equal(ema._average_model.module.frozen, start)
    beta, avg = 0.5 ** 0.5, 0.0                                        # and w is averaged as before
    for k in range(1, 11):
        avg = (1 - 0.8 ** k) if k == 1 else beta * avg + (1 - beta) * (1 - 0.8 ** k)
    assert math.isclose(model.w.item(), avg, rel_tol=1e-5)
