"""HDR training data for LDR2HDR: perspective crops of HDR panoramas (procedural worlds and folders of .exr/.hdr).

Each sample is ``{"image": (3, S, S) float32}``: a random perspective view (yaw uniform, pitch and field of view in
ranges, or the field of view that keeps the panorama's own pixel pitch) of a random panorama of the pool, cut with
:func:`lit_edify.panorama.geometry.equirect_to_perspective`.
The virtual camera that makes the LDR input lives in the module (:class:`lit_edify.modules.ldr2hdr.LDR2HDR`).
Held-out panoramas (``holdout`` file names, procedural scenes of other seeds) form the validation set as whole
equirectangular images.
"""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lit_edify.hdr_io import list_hdr_files, read_hdr
from lit_edify.panorama.geometry import View, equirect_to_perspective

from .hdr_world import random_scene, render_equirect

__all__ = ["HDRDataModule", "HDRViews", "procedural_panoramas", "folder_panoramas"]


def procedural_panoramas(n: int, seed: int, size: tuple[int, int] = (128, 256), ss: int = 1) -> list[torch.Tensor]:
    """n procedural HDR panoramas (3, H, W) of scenes drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return [render_equirect(random_scene(rng), *size, ss=ss) for _ in range(n)]


def folder_panoramas(folder: str | None, holdout: tuple[str, ...], size: tuple[int, int] | None = None
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(training, held-out) panoramas (3, H, W) of a folder of .exr / .hdr (held out: file stems in ``holdout``),
    area-resized to ``size`` when given; empty lists when ``folder`` is None or missing."""
    if not folder or not Path(folder).is_dir():
        return [], []
    train, held = [], []
    for f in list_hdr_files(folder):
        x = torch.from_numpy(read_hdr(f)).permute(2, 0, 1)
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = torch.nn.functional.interpolate(x[None], size=size, mode="area")[0]
        (held if f.stem in holdout else train).append(x.contiguous())
    return train, held


def _brightest(pano: torch.Tensor) -> tuple[float, float]:
    """(lon, lat) of the brightest pixel of an equirectangular panorama (3, H, W)."""
    _, h, w = pano.shape
    i = int(pano.sum(0).flatten().argmax())
    return (i % w + 0.5) / w * 2 * math.pi - math.pi, math.pi / 2 - (i // w + 0.5) / h * math.pi


class HDRViews(Dataset):
    """Random perspective views (3, S, S) of a pool of panoramas; ``length`` views per epoch; a share
    ``p_bright`` of them looks near the panorama's brightest point.

    ``native_scale=(lo, hi)`` replaces ``fov_deg``: a view's centre pixel then spans ``u`` times its panorama's own
    pixel pitch (2 pi / W), ``u`` uniform in [lo, hi], i.e. field of view ``2 atan(S/2 * tan(u * 2 pi / W))``. A
    small sun's peak pixel and the size of the clipped region around it depend on that pitch (area-halving the
    blender-data panoramas lowers their sun peaks by 0.6-1.8 stops), so views at the panoramas' own pitch teach
    the network the scale it is applied at."""

    def __init__(self, panos: list[torch.Tensor], size: int, length: int, seed: int = 0,
                 pitch_deg: tuple[float, float] = (-30, 60), fov_deg: tuple[float, float] = (60, 110),
                 weights: list[float] | None = None, p_bright: float = 0.0,
                 native_scale: tuple[float, float] | None = None):
        if not panos:
            raise ValueError("HDRViews needs at least one panorama")
        if native_scale is not None and not 0 < native_scale[0] <= native_scale[1]:
            raise ValueError(f"native_scale must be (lo, hi) with 0 < lo <= hi, got {native_scale}")
        self.panos, self.size, self.length, self.seed = panos, size, length, seed
        self.pitch, self.fov, self.native_scale = pitch_deg, fov_deg, native_scale
        w = np.asarray(weights if weights is not None else [1.0] * len(panos), dtype=np.float64)
        self.p = w / w.sum()
        self.p_bright = p_bright
        self.bright = [_brightest(x) for x in panos] if p_bright > 0 else []

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])  # view i of the run: set epoch_views >= steps x batch
        k = int(rng.choice(len(self.panos), p=self.p))
        pano, fov = self.panos[k], math.radians(rng.uniform(*self.fov))
        if self.native_scale is not None:
            pitch = rng.uniform(*self.native_scale) * 2 * math.pi / pano.shape[-1]
            fov = 2 * math.atan(self.size / 2 * math.tan(pitch))
        if rng.random() < self.p_bright:  # aim near the brightest point (the sun): what clipping destroys most
            lon, lat = self.bright[k]
            j = rng.uniform(-fov / 3, fov / 3, 2)
            v = View(lon + float(j[0]), float(np.clip(lat + j[1], -1.5, 1.5)), fov)
        else:
            v = View(float(rng.uniform(-math.pi, math.pi)), math.radians(rng.uniform(*self.pitch)), fov)
        return {"image": equirect_to_perspective(pano[None], v, (self.size, self.size))[0].clamp(min=0)}


class HDRDataModule(L.LightningDataModule):
    """Procedural HDR worlds plus an optional folder of real HDR panoramas (e.g. Debian blender-data's
    ``/usr/share/blender/datafiles/studiolights/world``), two of them held out for evaluation.

    Args:
        folder: folder of .exr / .hdr panoramas (optional; missing folder = procedural only).
        holdout: file stems of the folder kept for validation only.
        n_procedural / n_val_procedural: procedural training / validation panoramas (different seeds).
        real_fraction: share of training views cut from the folder's panoramas.
        p_bright: share of training views aimed near the brightest point of their panorama (the sun).
        pano_size: (H, W) of the procedural panoramas (training and validation).
        real_size: (H, W) the folder's panoramas are area-resized to; None keeps their own size (and sun peaks).
        native_scale: views at the panoramas' own pixel pitch times a factor in this range (see
            :class:`HDRViews`) instead of fields of view of 60-110 degrees.
        crop / batch_size / epoch_views: view size, batch size, views per epoch.
    """

    def __init__(self, folder: str | None = None, holdout: tuple[str, ...] = ("sunset", "forest"),
                 n_procedural: int = 48, n_val_procedural: int = 4, pano_size: tuple[int, int] = (128, 256),
                 real_fraction: float = 0.3, crop: int = 64, batch_size: int = 16, epoch_views: int = 4096,
                 p_bright: float = 0.0, num_workers: int = 0, seed: int = 0,
                 real_size: tuple[int, int] | None = (256, 512), native_scale: tuple[float, float] | None = None):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hasattr(self, "train_set"):
            return
        proc = procedural_panoramas(hp.n_procedural, hp.seed, tuple(hp.pano_size))
        real, held = folder_panoramas(hp.folder, tuple(hp.holdout), tuple(hp.real_size) if hp.real_size else None)
        weights = [(1 - hp.real_fraction) / len(proc)] * len(proc) + (
            [hp.real_fraction / len(real)] * len(real) if real else [])
        self.train_set = HDRViews(proc + real, hp.crop, hp.epoch_views, hp.seed, weights=weights,
                                  p_bright=hp.p_bright,
                                  native_scale=tuple(hp.native_scale) if hp.native_scale else None)
        self.val_panos = procedural_panoramas(hp.n_val_procedural, hp.seed + 10_000, tuple(hp.pano_size)) + held

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.hparams.batch_size, shuffle=False, num_workers=self.hparams.num_workers,
                          drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([{"image": x} for x in self.val_panos], batch_size=1)
