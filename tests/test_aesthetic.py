"""AestheticWeighting: unweighted loss before start_step, aesthetic-weighted loss from it on."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, Dataset

from lit_edify.callbacks.aesthetic import AestheticWeighting, load_scorer

torch.set_num_threads(1)
N, B = 12, 4  # 3 batches per epoch
SCORES = torch.tensor([0.5, 1.5, 1.0, 2.0, 0.25, 1.75, 1.0, 1.0, 0.5, 0.5, 1.5, 0.5])  # mean 1


class Pairs(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.image = torch.rand(N, 3, 4, 4, generator=g) * 2 - 1
        self.y = torch.randn(N, generator=g)

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"image": self.image[i], "y": self.y[i], "aesthetic": float(SCORES[i])}


class PerSampleLinear(L.LightningModule):
    """Follows the diffusion modules' contract: per-sample loss (B,), times batch["loss_weight"] if present."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(48, 1)
        self.seen = []  # (params before the step, batch) for recomputing the loss outside

    def training_step(self, batch, batch_idx):
        self.seen.append(([p.detach().clone() for p in self.lin.parameters()], {k: v for k, v in batch.items()}))
        per_sample = (self.lin(batch["image"].flatten(1)).squeeze(-1) - batch["y"]).pow(2)
        if "loss_weight" in batch:
            per_sample = per_sample * batch["loss_weight"]
        loss = per_sample.mean()
        self.log("loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class MemoryLogger(Logger):
    def __init__(self):
        super().__init__()
        self.losses = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        if "loss" in metrics:
            self.losses.append(float(metrics["loss"]))


def _fit(callback, steps=6):
    model, logger = PerSampleLinear(), MemoryLogger()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=1,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(Pairs(), batch_size=B, shuffle=False))
    return model, logger


def _per_sample(params, batch):
    w, b = params
    return ((batch["image"].flatten(1) @ w.T).squeeze(-1) + b - batch["y"]).pow(2)


def test_loss_is_weighted_from_start_step_on():
    model, logger = _fit(AestheticWeighting(start_step=3))
    assert len(logger.losses) == len(model.seen) == 6
    for step, ((params, batch), logged) in enumerate(zip(model.seen, logger.losses)):
        per = _per_sample(params, batch)
        scores = SCORES[(step % 3) * B : (step % 3 + 1) * B]
        weighted, unweighted = float((per * scores).mean()), float(per.mean())
        assert abs(weighted - unweighted) > 1e-4  # the weights matter on every batch
        if step < 3:
            assert "loss_weight" not in batch
            assert logged == pytest.approx(unweighted, rel=1e-5)
        else:
            assert torch.equal(batch["loss_weight"], scores)
            assert logged == pytest.approx(weighted, rel=1e-5)


class BrightnessScorer(torch.nn.Module):
    """Toy aesthetic model: mean pixel value + 2 (in [1, 3]) plus a scale parameter."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, images):
        return (images.mean(dim=(1, 2, 3)) + 2.0) * self.scale


def _brightness(images):
    return images.mean(dim=(1, 2, 3)) + 2.0


def test_torchscript_scorer_weights_are_normalised_by_the_dataset_mean(tmp_path):
    path = tmp_path / "scorer.pt"
    torch.jit.save(torch.jit.script(BrightnessScorer()), str(path))
    cb = AestheticWeighting(start_step=2, scorer=str(path), mean_batches=None)
    model, logger = _fit(cb)
    mean = float(_brightness(Pairs().image).mean())
    assert cb.dataset_mean == pytest.approx(mean, rel=1e-5)
    for step, ((params, batch), logged) in enumerate(zip(model.seen, logger.losses)):
        per = _per_sample(params, batch)
        expected = per * _brightness(batch["image"]) / mean if step >= 2 else per
        assert logged == pytest.approx(float(expected.mean()), rel=1e-5)
    assert AestheticWeighting(scorer=str(path)).state_dict() == {"dataset_mean": None}
    restored = AestheticWeighting(scorer=str(path))
    restored.load_state_dict(cb.state_dict())
    assert restored.dataset_mean == cb.dataset_mean


def test_python_class_scorer_loads_its_checkpoint(tmp_path):
    ckpt = tmp_path / "w.pt"
    torch.save({"scale": torch.tensor(3.0)}, ckpt)
    scorer = load_scorer(f"{__name__}:BrightnessScorer", str(ckpt))
    images = torch.zeros(2, 3, 4, 4)
    assert torch.allclose(scorer(images), torch.full((2,), 6.0))


def test_missing_scorer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no aesthetic-predictor weights ship"):
        AestheticWeighting(scorer=str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        AestheticWeighting(scorer=f"{__name__}:BrightnessScorer", scorer_checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="scorer_checkpoint"):
        AestheticWeighting(scorer=f"{__name__}:BrightnessScorer")


def test_batch_without_scores_and_no_scorer_is_a_clear_error():
    class NoScores(Pairs):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            del item["aesthetic"]
            return item

    model = PerSampleLinear()
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        callbacks=[AestheticWeighting(start_step=1)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(KeyError, match="aesthetic"):
        trainer.fit(model, DataLoader(NoScores(), batch_size=B))
    assert len(model.seen) == 1  # the unweighted first step ran
