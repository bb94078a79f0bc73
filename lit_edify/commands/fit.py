"""``lit-edify fit`` / ``lightning fit``: the suite's LightningCLI (any LightningModule / DataModule by class_path)."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

__all__ = ["SuiteCLI", "build_cli", "max_time_arg"]


class SuiteCLI(LightningCLI):
    """LightningCLI whose trainers always carry the suite's safety callbacks (unless a recipe lists its own):
    the non-finite guard (lit_edify.callbacks.nonfinite) and the once-per-epoch caption truncation report; and, when
    stdout is not a terminal (SLURM output files), plain progress lines (lit_edify.callbacks.progress).

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
        from lit_edify.callbacks.nonfinite import NonFiniteGuard
        from lit_edify.callbacks.progress import LineProgress
        from lit_edify.callbacks.truncation import TruncationReport

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


# A class path of the data or callback layer from before they moved under the lit_edify namespace: as a YAML
# class_path value, or as a command-line value (``--data data_modules.shapes.ShapesDataModule``, ``--x=...``).
_OLD = r"((?:data_modules|callbacks)\.\w+\.\w+)"
_OLD_IN_YAML = re.compile(r"class_path:\s*[\"']?" + _OLD)
_OLD_IN_ARG = re.compile(r"(?:^|=)" + _OLD)


class MovedClassPathError(ValueError):
    """A recipe or argument names ``data_modules.X`` / ``callbacks.X``, now ``lit_edify.data_modules.X`` / ..."""


def max_time_arg(minutes: float) -> str:
    """``minutes`` as Lightning's ``trainer.max_time`` string ``DD:HH:MM:SS`` (rounded to the second)."""
    days, rest = divmod(int(round(60 * minutes)), 86_400)
    return f"{days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def check_moved_class_paths(args: list[str]) -> None:
    """Raise :class:`MovedClassPathError` naming the new path if ``args`` or a ``--config`` file they name use an
    old top-level class path (instead of jsonargparse's generic "import path does not exist")."""
    found = [m for a in args if (m := _OLD_IN_ARG.search(a))]
    for i, a in enumerate(args):
        path = args[i + 1] if a == "--config" and i + 1 < len(args) else a[9:] if a.startswith("--config=") else None
        if path and Path(path).is_file():
            found += list(_OLD_IN_YAML.finditer(Path(path).read_text(errors="replace")))
    if found:
        old = found[0].group(1)
        raise MovedClassPathError(f"{old} has moved: use lit_edify.{old} (the data and callback layers install "
                                  "under the lit_edify namespace)")


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The LightningCLI of the suite: any LightningModule / LightningDataModule by class_path."""
    check_moved_class_paths(list(sys.argv[1:] if args is None else args))
    return SuiteCLI(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        auto_configure_optimizers=False, save_config_kwargs={"overwrite": True}, args=args, run=run,
    )
