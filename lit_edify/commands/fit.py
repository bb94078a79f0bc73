"""``lit-edify fit`` / ``lightning fit``: the suite's LightningCLI (any LightningModule / DataModule by class_path)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

__all__ = ["SuiteCLI", "build_cli"]


class SuiteCLI(LightningCLI):
    """LightningCLI whose trainers always carry the suite's safety callbacks (unless a recipe lists its own):
    the non-finite guard (callbacks.nonfinite) and the once-per-epoch caption truncation report; and, when
    stdout is not a terminal (SLURM output files), plain progress lines (callbacks.progress).

    ``trainer.default_root_dir`` is the one place a run's folder is set: the ``save_dir`` of the recipe's
    TensorBoard / CSV logger follows it, so ``--trainer.default_root_dir runs/x`` moves logs and checkpoints.
    """

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = config.get("trainer") if config is not None else None
        root = trainer.get("default_root_dir") if trainer is not None else None
        self._root = Path(root) if root else None  # what was there before, for the clean-up of a failed start
        self._root_before = set(self._root.iterdir()) if self._root is not None and self._root.is_dir() else None
        if not root:
            return
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if hasattr(logger, "get") and str(logger.get("class_path", "")).rsplit(".", 1)[-1] in (
                    "TensorBoardLogger", "CSVLogger") and logger.get("init_args") is not None:
                logger.init_args.save_dir = root

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        from callbacks.nonfinite import NonFiniteGuard
        from callbacks.progress import LineProgress
        from callbacks.truncation import TruncationReport

        trainer = super().instantiate_trainer(**kwargs)
        for cls in (TruncationReport, NonFiniteGuard):  # the guard first: it acts before the EMA and checkpoints
            if not any(isinstance(cb, cls) for cb in trainer.callbacks):
                trainer.callbacks.insert(0, cls())
        if not sys.stdout.isatty() and not any(isinstance(cb, LineProgress) for cb in trainer.callbacks):
            trainer.callbacks.append(LineProgress())  # SLURM / CI logs: the progress bar shows nothing there
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """A run that fails before its first optimizer step leaves nothing behind in its run folder: what it
        created there (config, logger version folder) is removed, unless it holds a checkpoint."""
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            trainer, root = getattr(self, "trainer", None), getattr(self, "_root", None)
            if trainer is not None and trainer.global_step == 0 and trainer.is_global_zero and root and root.is_dir():
                for entry in set(root.iterdir()) - (self._root_before or set()):
                    if entry.is_dir() and not any(entry.rglob("*.ckpt")):
                        shutil.rmtree(entry, ignore_errors=True)
                    elif entry.is_file() and entry.suffix != ".ckpt":
                        entry.unlink(missing_ok=True)
                if self._root_before is None and not any(root.iterdir()):
                    root.rmdir()
            raise


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The LightningCLI of the suite: any LightningModule / LightningDataModule by class_path."""
    return SuiteCLI(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        auto_configure_optimizers=False, save_config_kwargs={"overwrite": True}, args=args, run=run,
    )
