"""Stop training after a budget of CPU time: equal-compute comparisons on a shared or slow machine.

``CpuBudget(cpu_seconds)`` measures ``time.process_time()`` of the training process (every thread of it, user
and system time, not wall time, so other work on the machine does not shorten or stretch the budget) from the
start of training (after setup and the sanity check) and sets ``trainer.should_stop`` at the end of the first
batch at which the budget is used up; the fit loop then ends as it does for ``max_steps`` (the EMA callback
copies its weights in, checkpoints are written). Validation and sample grids that run inside the fit count
against the budget, so disable them (``limit_val_batches: 0``) for a comparison of training alone. DataLoader
worker processes have their own clocks and are **not** counted: use ``num_workers: 0`` for a budget that includes
data loading (a warning says so otherwise). A resumed run continues the budget where its checkpoint left it.

    trainer:
      callbacks:
        - class_path: lit_edify.callbacks.budget.CpuBudget
          init_args: {cpu_seconds: 600}

With several ranks each counts its own process; training stops when any rank has used its budget.
"""
from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

__all__ = ["CpuBudget"]


class CpuBudget(Callback):
    """Stop training once this process has used ``cpu_seconds`` of CPU time (``time.process_time``) in ``fit``.

    After the fit, ``used`` holds the CPU seconds spent (including those of a resumed checkpoint) and
    ``stopped_step`` the global step at which the budget stopped training (None: stopped otherwise).
    """

    def __init__(self, cpu_seconds: float):
        if not cpu_seconds > 0:
            raise ValueError(f"cpu_seconds must be > 0, got {cpu_seconds}")
        self.cpu_seconds = float(cpu_seconds)
        self.used = 0.0            # CPU seconds spent before this fit (resume) + in this fit so far
        self.stopped_step: int | None = None
        self._offset = 0.0         # from a resumed checkpoint
        self._start: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self.stopped_step = time.process_time(), None
        loader = trainer.train_dataloader
        if getattr(loader, "num_workers", 0):
            rank_zero_warn(f"CpuBudget: {loader.num_workers} DataLoader worker processes are not counted in the "
                           "budget (set num_workers to 0 to count data loading)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        if self._start is None:
            return
        self.used = self._offset + time.process_time() - self._start
        over = trainer.strategy.reduce_boolean_decision(self.used >= self.cpu_seconds, all=False)
        if over and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_step = trainer.global_step
            rank_zero_info(f"CpuBudget: {self.used:.1f} of {self.cpu_seconds:g} CPU seconds used at step "
                           f"{trainer.global_step}: stopping")

    def on_train_end(self, trainer, pl_module) -> None:
        if self._start is not None:
            self.used = self._offset + time.process_time() - self._start
            self._start = None

    def state_dict(self) -> dict[str, Any]:
        return {"used": self.used}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = self.used = float(state_dict.get("used", 0.0))
