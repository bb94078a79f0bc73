"""CpuBudget: a real Trainer run stops once the training process has used its CPU-time budget."""
import time

import lightning as L
import pytest
import torch

from lit_edify.callbacks.budget import CpuBudget


class Busy(L.LightningModule):
    """A small MLP on random batches: every step costs a few milliseconds of CPU."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256))

    def training_step(self, batch, idx):
        return self.net(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(256, 256), batch_size=64)


def trainer(budget: CpuBudget, tmp_path, max_steps: int) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, max_time="00:00:02:00", callbacks=[budget], logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, accelerator="cpu")


def test_stops_a_real_run_after_the_budget(tmp_path):
    budget = CpuBudget(cpu_seconds=0.5)
    t = trainer(budget, tmp_path, max_steps=10**7)
    cpu0 = time.process_time()
    t.fit(Busy())
    spent = time.process_time() - cpu0
    assert 0 < t.global_step < 10**7                      # stopped by the budget, not by max_steps
    assert budget.stopped_step == t.global_step
    assert budget.used >= 0.5                             # not before the budget is used up ...
    assert spent >= budget.used                           # (the fit's setup and teardown are not counted)
    assert budget.used < 0.5 + 0.5                        # ... and within about one step after it


def test_does_not_stop_a_run_within_its_budget(tmp_path):
    budget = CpuBudget(cpu_seconds=1e6)
    t = trainer(budget, tmp_path, max_steps=5)
    t.fit(Busy())
    assert t.global_step == 5 and budget.stopped_step is None and 0 < budget.used < 1e6


def test_a_resumed_run_continues_the_budget():
    budget = CpuBudget(cpu_seconds=10.0)
    budget.load_state_dict({"used": 7.5})
    assert budget.used == 7.5 and budget.state_dict() == {"used": 7.5}
    with pytest.raises(ValueError, match="cpu_seconds"):
        CpuBudget(cpu_seconds=0)
