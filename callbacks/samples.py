"""Fixed-seed sample grids, written to TensorBoard and as PNG (+ prompts) after each validation.

Validation runs with the EMA weights swapped in (callbacks.ema.EMA), so the grids show the EMA model.
For an upsampler the grid is: clean low-resolution inputs (down-sampled validation images, shown
upscaled) next to the upsampled outputs.
"""
from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid

from lit_edify.diffusion.laplacian import down, up
from lit_edify.io import save_image_atomic, write_text_atomic


def default_prompts(n: int) -> list[dict]:
    """Prompts from the built-in shapes dataset's fixed test set."""
    from data_modules.shapes import evaluation_prompts
    return evaluation_prompts(n=n, seed=0, split="test")


class SampleGrid(Callback):
    """Generate a fixed-seed grid every ``every_n_validations`` validations (rank 0 only).

    Args:
        prompts: captions; None = the first ``num_images`` fixed shapes-dataset prompts.
        num_images, seed, steps, solver, guidance, aspect: generation settings (None = module defaults).
        out_dir: PNG folder; None = ``<trainer.log_dir>/samples``. Files: ``step_<N>.png`` + ``step_<N>.txt``.
    """

    def __init__(self, prompts: list[str] | None = None, num_images: int = 16, every_n_validations: int = 1,
                 seed: int = 0, steps: int | None = None, solver: str | None = None, guidance: float | None = None,
                 aspect: str = "1:1", out_dir: str | None = None):
        self.prompts, self.num_images, self.every = prompts, num_images, max(1, every_n_validations)
        self.seed, self.steps, self.solver, self.guidance, self.aspect = seed, steps, solver, guidance, aspect
        self.out_dir = out_dir
        self._count = 0
        self._val_batch = None
        self.last_path: Path | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and self._val_batch is None:
            self._val_batch = {k: v[: self.num_images] for k, v in batch.items()}

    def _conditions(self) -> dict:
        if self.prompts is not None:
            return {"captions": list(self.prompts)[: self.num_images]}
        ps = default_prompts(self.num_images)
        return {"captions": [p["caption"] for p in ps], "pitch": [p["pitch"] for p in ps],
                "dof": [p["dof"] for p in ps], "media_type": [p["media_type"] for p in ps]}

    @torch.no_grad()
    def make_grid(self, pl_module) -> tuple[torch.Tensor, list[str]]:
        """The grid image (3, H, W) in [0, 1] and its captions."""
        kw = dict(seed=self.seed, steps=self.steps, solver=self.solver, guidance=self.guidance)
        if hasattr(pl_module, "upsample"):
            if self._val_batch is None:
                raise RuntimeError("SampleGrid needs a validation batch to upsample")
            b = self._val_batch
            f = pl_module.hparams.factor
            low = down(b["image"].to(pl_module.device), f)
            out = pl_module.upsample(low, list(b["caption"]), **kw)
            images, captions = torch.cat([up(low, f), out]), list(b["caption"])
        else:
            cond = self._conditions()
            captions = cond.pop("captions")
            images = pl_module.generate(captions, aspect=self.aspect, **cond, **kw)
        nrow = max(1, int(len(captions) ** 0.5)) if not hasattr(pl_module, "upsample") else len(captions)
        return make_grid((images.float().cpu() + 1) / 2, nrow=nrow, padding=1).clamp(0, 1), captions

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self._count += 1
        if (self._count - 1) % self.every == 0:
            self._write(trainer, pl_module)
        self._val_batch = None

    @rank_zero_only
    def _write(self, trainer, pl_module) -> None:
        grid, captions = self.make_grid(pl_module)
        out = Path(self.out_dir or Path(trainer.log_dir or trainer.default_root_dir) / "samples")
        out.mkdir(parents=True, exist_ok=True)
        self.last_path = out / f"step_{trainer.global_step:07d}.png"
        save_image_atomic(grid, self.last_path)  # atomic: a crash never leaves a half-written grid
        write_text_atomic(self.last_path.with_suffix(".txt"), "\n".join(captions) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, trainer.global_step)
                logger.experiment.add_text("samples/prompts", "  \n".join(captions), trainer.global_step)
