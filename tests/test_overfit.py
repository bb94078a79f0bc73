"""Defect probes for the tiny base model (issue 9): a model that cannot memorise one image or whose
denoiser is rough in sigma fails here in a minute instead of after a 15-minute quickstart.

Each test trains the tiny recipe's model (``recipes/tiny/base32.yaml``: same U-Net, loss, optimizer and
sampler settings) through Lightning's ``Trainer`` on a handful of shapes renders, then samples with the
recipe's default solver, steps and guidance.
"""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from lit_edify.data_modules.shapes import ShapesDataset
from lit_edify.modules.base import BaseModel

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("image", "caption", "pitch", "dof", "media_type")


class Repeat(Dataset):
    """``items`` cycled to ``length`` (one epoch = the whole run)."""

    def __init__(self, items: list[dict], length: int):
        self.items, self.length = items, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.items[i % len(self.items)]


def tiny_model(decay_fraction: float = 0.0, **net_overrides) -> BaseModel:
    """The tiny recipe's model, initialised from seed 0; ``decay_fraction`` (``optim``) and U-Net
    ``net_overrides`` on top."""
    torch.manual_seed(0)
    args = yaml.safe_load((ROOT / "recipes/tiny/base32.yaml").read_text())["model"]["init_args"]
    args["optim"]["decay_fraction"] = decay_fraction
    args["net"]["overrides"].update(net_overrides)
    return BaseModel(**args)


def fit(model: BaseModel, items: list[dict], steps: int, batch_size: int = 16) -> BaseModel:
    torch.manual_seed(0)
    loader = DataLoader(Repeat(items, steps * batch_size), batch_size=batch_size, shuffle=False)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0)
    trainer.fit(model, loader)
    return model.eval()


def renders(indices: list[int]) -> list[dict]:
    ds = ShapesDataset(64, 32, split="test", multiple=16)
    out = []
    for i in indices:
        item = {k: ds[i][k] for k in KEYS}
        item["caption"] = ds[i]["caption_long"]
        out.append(item)
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], measured on the [0, 1] scale."""
    mse = (((a - b) / 2) ** 2).mean().item()
    return 10 * math.log10(1 / mse)


def generate(model: BaseModel, items: list[dict], seed: int = 0) -> torch.Tensor:
    return model.generate([it["caption"] for it in items], pitch=[it["pitch"] for it in items],
                          dof=[it["dof"] for it in items], media_type=[it["media_type"] for it in items], seed=seed)


@pytest.fixture(scope="module")
def one_image_model():
    """500 steps with the last 30% decaying the learning rate to 0: at a constant rate the memorised image is
    reached and left again (the recipe's model sampled at guidance 5: 23.7 dB after 500 steps, 22.9 dB after 800;
    26.7 dB with the decay)."""
    items = renders([1])
    return fit(tiny_model(decay_fraction=0.3), items, steps=500), items


@pytest.fixture(scope="module")
def four_image_model():
    """Four renders (different shapes, colours and backgrounds), each with its own long caption, 2000 steps with the
    same final decay."""
    items = renders([1, 2, 3, 4])
    assert len({it["caption"] for it in items}) == 4
    return fit(tiny_model(decay_fraction=0.3), items, steps=2000), items


def test_overfit_one_image_regenerates_it(one_image_model):
    model, items = one_image_model
    target = items[0]["image"]
    for seed in (0, 1):
        sample = generate(model, items, seed=seed)[0]
        assert psnr(sample, target) >= 25.0, f"seed {seed}: {psnr(sample, target):.1f} dB"


def test_overfit_four_images_with_four_captions_regenerates_each(four_image_model):
    """Four renders with four different captions in one run: each caption brings back its own image (not a blend of
    the four, not another one's), at >= 25 dB with the recipe's sampler (dpmpp_2m, 24 steps, guidance 3). Measured:
    26.8-29.3 dB against its own image, 4.6-10.3 dB against the others; the same model gives 33.2-35.1 dB at
    guidance 1 and 22.0-24.4 dB at guidance 5, whose extrapolation shifts the colours."""
    model, items = four_image_model
    samples = generate(model, items, seed=0)
    scores = [[psnr(samples[i], items[j]["image"]) for j in range(4)] for i in range(4)]
    for i, row in enumerate(scores):
        assert row[i] >= 25.0, f"caption {i}: {row[i]:.1f} dB against its image (all: {[f'{v:.1f}' for v in row]})"
        assert row[i] == max(row), f"caption {i} draws image {row.index(max(row))}"


def test_denoiser_is_smooth_in_sigma(one_image_model):
    """On a fine Karras grid (256 steps over the trained range), D(x0 + sigma n, sigma) changes by a bounded
    relative amount between neighbouring sigmas: a lookup-table noise embedding or an unconverged skip
    makes it jump."""
    from lit_edify.diffusion.samplers import get_sigmas_karras

    model, items = one_image_model
    x0 = items[0]["image"][None]
    ctx, mask = model.encode_conditions([items[0]["caption"]], [items[0]["pitch"]], [items[0]["dof"]],
                                        [items[0]["media_type"]], drop=False)
    sigmas = get_sigmas_karras(256, 0.002, 80.0)[:-1]
    n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = torch.cat([model.denoise(x0 + s * n, s.reshape(1), ctx, mask) for s in sigmas])
    rel = (d[1:] - d[:-1]).flatten(1).norm(dim=1) / d[:-1].flatten(1).norm(dim=1).clamp_min(1e-3)
    assert rel.max().item() < 0.05, f"max relative change {rel.max().item():.3f} at sigma {sigmas[rel.argmax()]:.3g}"


def test_greyscale_training_data_gives_greyscale_samples():
    """Coloured grain on greyscale data was the visible defect: trained on grey renders with the U-Net in the
    opponent colour basis (``opponent_colour``), the samples' mean per-pixel channel spread (max - min over R, G,
    B) stays under 2/255 (measured 0.22/255 at 400 steps; in RGB the same run gives 6.0/255, and the RGB tiny
    recipe needs thousands of steps: 0.52/255 after 6000 on Fashion-MNIST)."""
    from lit_edify.metrics.artifacts import channel_spread

    items = renders(list(range(16)))
    for it in items:
        it["image"] = it["image"].mean(0, keepdim=True).expand(3, -1, -1).clone()
    model = fit(tiny_model(decay_fraction=0.3, opponent_colour=True), items, steps=400)
    samples = generate(model, items)
    spread = 255 * channel_spread((samples + 1) / 2)
    assert spread < 2.0, f"mean channel spread {spread:.2f}/255"
