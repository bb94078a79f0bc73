"""Non-finite guard: a NaN / inf loss or gradient never reaches the weights, the optimizer state or the EMA.

After backward and before the optimizer applies the update (``on_before_optimizer_step``), the guard checks
the loss(es) of the step and every gradient. If any is non-finite it drops all gradients (``grad = None``):
AdamW then skips every parameter, so neither the weights nor its moments and step counts change (zeroing
the gradients would not do: Adam would still decay its moments and apply weight decay). The EMA callback
asks :func:`step_skipped` and leaves the average alone on such a step. As with Lightning's own skip
(``training_step`` returning None), the batch still counts as a step of the loop (``global_step``, the LR
schedule). Skips are counted and logged as ``train/nonfinite_skipped``; ``max_consecutive`` skips in a
row stop training with :class:`NonFiniteTrainingError`, before any further checkpoint is written, so the
last checkpoint holds the last good weights; a checkpoint whose weights are non-finite is never written.
"""
from __future__ import annotations

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["NonFiniteGuard", "NonFiniteTrainingError", "step_skipped"]


class NonFiniteTrainingError(RuntimeError):
    """Training stopped after too many consecutive non-finite steps."""


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """True when every element of every tensor is finite (one norm per tensor, one host sync)."""
    if not tensors:
        return True
    norms = torch._foreach_norm([t.detach() for t in tensors])
    return bool(torch.stack([n.float() for n in norms]).isfinite().all())


def step_skipped(trainer) -> bool:
    """Whether the optimizer step of the current batch applied no update (non-finite, or no gradients at all)."""
    return any(cb.skipped for cb in trainer.callbacks if isinstance(cb, NonFiniteGuard))


class NonFiniteGuard(Callback):
    """Skip optimizer and EMA updates on non-finite losses or gradients; stop after ``max_consecutive`` in a row.

    Args:
        max_consecutive: consecutive skipped steps that stop training (a diverged run does not recover).
    """

    def __init__(self, max_consecutive: int = 20):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.total = 0          # skipped steps over the whole run (kept in checkpoints)
        self.consecutive = 0    # skipped steps in a row
        self.skipped = False    # the current batch's optimizer step applied no update
        self._bad_loss = False  # a non-finite loss since the last optimizer step (micro-batches accumulate)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.skipped = False

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._bad_loss = self._bad_loss or not bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        bad = self._bad_loss or not _all_finite(grads)
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)  # every rank skips together
        self._bad_loss = False
        self.skipped = bad or not grads
        if not bad:
            self.consecutive = 0
            return
        for p in params:
            p.grad = None
        self.total += 1
        self.consecutive += 1
        if self.consecutive == 1:
            rank_zero_warn(f"step {trainer.global_step}: non-finite loss or gradient, optimizer and EMA update "
                           f"skipped ({self.total} skipped so far; training stops after {self.max_consecutive} "
                           "in a row)", category=RuntimeWarning)
        if not _all_finite(params):
            raise NonFiniteTrainingError(
                f"step {trainer.global_step}: the weights themselves are non-finite, so training cannot continue; "
                "restart from the last checkpoint with a lower learning rate or gradient clipping")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("train/nonfinite_skipped", float(self.total), on_step=True, on_epoch=False)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"step {trainer.global_step}: {self.consecutive} consecutive steps had a non-finite loss or gradient "
                f"({self.total} in all); training stopped and the weights of the last checkpoint are the last good "
                "ones. Lower the learning rate (--model.init_args.optim.lr), add gradient clipping "
                "(--trainer.gradient_clip_val 1.0) or check the data for NaN / inf values")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Never write a checkpoint with non-finite weights (e.g. an overflowing update from finite gradients)."""
        for key in ("state_dict", "current_model_state"):
            tensors = [v for v in checkpoint.get(key, {}).values() if torch.is_tensor(v) and v.is_floating_point()]
            if not _all_finite(tensors):
                raise NonFiniteTrainingError(
                    f"step {trainer.global_step}: the weights are non-finite; refusing to write a checkpoint with them "
                    "(the previous checkpoint holds the last good weights). Lower the learning rate or add gradient "
                    "clipping (--trainer.gradient_clip_val 1.0)")

    def state_dict(self) -> dict:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total = int(state_dict.get("total", 0))
