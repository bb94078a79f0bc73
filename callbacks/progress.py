"""Plain progress lines for logs that are not terminals (SLURM output files, CI, ``nohup``)."""
from __future__ import annotations

import sys
import time

from lightning.pytorch import Callback

__all__ = ["LineProgress"]


class LineProgress(Callback):
    """Prints ``step 500/3000 (17%)  train/loss 0.2107  4.61 steps/s  ETA 9m03s`` every ``every_n_steps``
    optimizer steps on global rank 0. A progress bar writes nothing readable into a file until the job
    ends; these lines do. ``every_n_steps=None``: about ten lines per run (every 100 steps without max_steps).
    ``lit-edify fit`` adds it by itself when stdout is not a terminal.
    """

    def __init__(self, every_n_steps: int | None = None, stream=None):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.stream = every_n_steps, stream
        self._t0 = self._step0 = None

    def _interval(self, trainer) -> int:
        if self.every_n_steps is not None:
            return self.every_n_steps
        return max(1, trainer.max_steps // 10) if trainer.max_steps and trainer.max_steps > 0 else 100

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0, self._step0 = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._step0 or step % self._interval(trainer):
            return
        rate = (step - self._step0) / max(time.perf_counter() - self._t0, 1e-9)
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        parts = [f"step {step}/{total} ({100 * step // total}%)" if total else f"step {step}"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        parts.append(f"{rate:.2f} steps/s")
        if total:
            eta = int((total - step) / max(rate, 1e-9))
            parts.append(f"ETA {eta // 60}m{eta % 60:02d}s")
        print("  ".join(parts), file=self.stream or sys.stdout, flush=True)
