"""Fixed-seed sample grids, written to TensorBoard and as PNG (+ prompts) after each validation.

Validation runs with the EMA weights swapped in (lit_edify.callbacks.ema.EMA), so the grids show the EMA model.
For an upsampler the grid is: clean low-resolution inputs (down-sampled validation images, shown
upscaled) next to the upsampled outputs. The PNG and the TensorBoard image carry each prompt drawn
under its cell (:func:`captioned_grid`); the TensorBoard image is logged at the step of the validation
scalars it belongs to (see docs/tensorboard.md).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from lit_edify.diffusion.laplacian import down, up
from lit_edify.io import save_image_atomic, write_text_atomic


def default_prompts(n: int) -> list[dict]:
    """Prompts from the built-in shapes dataset's fixed test set."""
    from lit_edify.data_modules.shapes import evaluation_prompts
    return evaluation_prompts(n=n, seed=0, split="test")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font (offline): scalable with FreeType (Pillow >= 10.1), else the fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; over-long words are split; more than ``max_lines`` ends in '...'."""
    lines: list[str] = []
    for word in text.split():
        line = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(line) <= width:
            lines[-1] = line
            continue
        while len(word) > 1 and font.getlength(word) > width:  # split a word wider than the cell
            cut = 1
            while cut < len(word) and font.getlength(word[:cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "..."]
    return lines


def captioned_grid(images: torch.Tensor, captions: Sequence[str], nrow: int, min_cell: int = 128,
                   font_size: int = 11, max_lines: int = 5, padding: int = 2) -> torch.Tensor:
    """A grid with each caption drawn (wrapped, black on white) under its cell.

    images: (N, 3, h, w) float in [0, 1]; captions: one per image ("" = no caption); ``nrow`` images per row.
    Cells narrower than ``min_cell`` pixels are upscaled by the integer factor ``ceil(min_cell / w)``
    (nearest neighbour: pixels stay visible as blocks) so that the text fits. A row whose captions are all
    empty gets no caption band. Returns (3, H, W) float in [0, 1], H and W larger than the raw grid's.
    """
    n, _, h, w = images.shape
    if len(captions) != n:
        raise ValueError(f"captioned_grid: {len(captions)} captions for {n} images")
    k = max(1, math.ceil(min_cell / w))
    cells = F.interpolate(images.float().clamp(0, 1), scale_factor=k, mode="nearest") if k > 1 else images
    cells = (cells.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    ch, cw = h * k, w * k
    font = _font(font_size)
    ascent, descent = font.getmetrics()
    line_h = ascent + descent + 1
    wrapped = [_wrap(c, font, cw - 4, max_lines) for c in captions]
    nrow = max(1, min(nrow, n))
    rows = [range(r, min(r + nrow, n)) for r in range(0, n, nrow)]
    bands = [max(len(wrapped[i]) for i in row) * line_h + (2 if any(wrapped[i] for i in row) else 0) for row in rows]
    canvas = Image.new("RGB", (nrow * cw + (nrow + 1) * padding, sum(ch + b + padding for b in bands) + padding),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = padding
    for row, band in zip(rows, bands):
        for col, i in enumerate(row):
            x = padding + col * (cw + padding)
            canvas.paste(Image.fromarray(cells[i]), (x, y))
            for j, line in enumerate(wrapped[i]):
                draw.text((x + (cw - font.getlength(line)) / 2, y + ch + 1 + j * line_h), line, fill=(0, 0, 0),
                          font=font)
        y += ch + band + padding
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def _log_step(trainer) -> int:
    """The step Lightning logs scalars at (``fit_loop.epoch_loop._batches_that_stepped``): validation metrics
    after optimizer step N appear at N - 1, one below ``trainer.global_step``."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))


class SampleGrid(Callback):
    """Generate a fixed-seed grid every ``every_n_validations`` validations (rank 0 only).

    Args:
        prompts: captions; None = the first ``num_images`` fixed shapes-dataset prompts.
        num_images, seed, steps, solver, guidance, aspect: generation settings (None = module defaults).
        out_dir: PNG folder; None = ``<trainer.log_dir>/samples``. Files: ``step_<N>.png`` (the captioned grid,
            N = ``trainer.global_step``) + ``step_<N>.txt`` (the prompts, one a line, in reading order).
        min_cell: cells narrower than this are upscaled (integer factor, nearest) so captions are legible.
    """

    def __init__(self, prompts: list[str] | None = None, num_images: int = 16, every_n_validations: int = 1,
                 seed: int = 0, steps: int | None = None, solver: str | None = None, guidance: float | None = None,
                 aspect: str = "1:1", out_dir: str | None = None, min_cell: int = 128):
        self.prompts, self.num_images, self.every = prompts, num_images, max(1, every_n_validations)
        self.seed, self.steps, self.solver, self.guidance, self.aspect = seed, steps, solver, guidance, aspect
        self.out_dir, self.min_cell = out_dir, min_cell
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
    def samples(self, pl_module) -> tuple[torch.Tensor, list[str], list[str], int]:
        """Generate: images (N, 3, H, W) in [0, 1], the caption of each cell, the prompts, images per row.

        Upsamplers: one row of upscaled low-resolution inputs (no caption) over one row of outputs."""
        kw = dict(seed=self.seed, steps=self.steps, solver=self.solver, guidance=self.guidance)
        if hasattr(pl_module, "upsample"):
            if self._val_batch is None:
                raise RuntimeError("SampleGrid needs a validation batch to upsample")
            b = self._val_batch
            f = pl_module.hparams.factor
            low = down(b["image"].to(pl_module.device), f)
            out = pl_module.upsample(low, list(b["caption"]), **kw)
            captions = list(b["caption"])
            images, cells, nrow = torch.cat([up(low, f), out]), [""] * len(captions) + captions, len(captions)
        else:
            cond = self._conditions()
            captions = cond.pop("captions")
            images = pl_module.generate(captions, aspect=self.aspect, **cond, **kw)
            cells, nrow = list(captions), max(1, int(len(captions) ** 0.5))
        return ((images.float().cpu() + 1) / 2).clamp(0, 1), cells, captions, nrow

    def make_grid(self, pl_module) -> tuple[torch.Tensor, list[str]]:
        """The raw grid image (3, H, W) in [0, 1] (1-pixel black padding, no captions) and its prompts."""
        images, _, captions, nrow = self.samples(pl_module)
        return make_grid(images, nrow=nrow, padding=1).clamp(0, 1), captions

    def make_captioned_grid(self, pl_module) -> tuple[torch.Tensor, list[str]]:
        """The grid with each prompt drawn under its cell (:func:`captioned_grid`), (3, H, W) in [0, 1]."""
        images, cells, captions, nrow = self.samples(pl_module)
        return captioned_grid(images, cells, nrow, min_cell=self.min_cell), captions

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self._count += 1
        if (self._count - 1) % self.every == 0:
            self._write(trainer, pl_module)
        self._val_batch = None

    @rank_zero_only
    def _write(self, trainer, pl_module) -> None:
        grid, captions = self.make_captioned_grid(pl_module)
        out = Path(self.out_dir or Path(trainer.log_dir or trainer.default_root_dir) / "samples")
        out.mkdir(parents=True, exist_ok=True)
        self.last_path = out / f"step_{trainer.global_step:07d}.png"
        save_image_atomic(grid, self.last_path)  # atomic: a crash never leaves a half-written grid
        write_text_atomic(self.last_path.with_suffix(".txt"), "\n".join(captions) + "\n")
        step = _log_step(trainer)  # the step of this validation's scalars (val/loss), not global_step
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, step)
                logger.experiment.add_text("samples/prompts",
                                           "  \n".join(f"{i + 1}. {c}" for i, c in enumerate(captions)), step)
