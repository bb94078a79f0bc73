"""Personalization data (report Sec. 7): concept folders of a few captioned images, and the shapes concepts.

A concept folder is an image folder in the format of :class:`~lit_edify.data_modules.image_text.ImageTextDataModule`
(``name.png`` + ``name.txt`` caption) whose captions use made-up concept names; :class:`ConceptFolderDataModule`
reads it (no validation split) and refuses a folder with fewer than 2 usable images.

For CPU-scale experiments the shapes renderer has two concepts the base never sees (``shapes_render``):
the shape :data:`CONCEPT_SHAPE` ("zorb", a plus-shaped cross) and the style :data:`CONCEPT_STYLE` ("vexa", dark
diagonal hatch stripes over the objects). :func:`concept_scenes` draws the training scenes of a concept from a
restricted set of colours and backgrounds; :func:`heldout_concept_prompts` draws prompts with the colours and
backgrounds that no concept trains on, so that drawing the concept there is generalisation, not recall of a
training image, and only the concept's name tells the two concepts apart.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

from .image_text import ImageTextDataModule
from .shapes_render import (BACKGROUND_COLORS, CONCEPT_SHAPE, CONCEPT_STYLE, OBJECT_COLORS, SHAPES, ShapeScene,
                            caption_long, render, sample_scene)

__all__ = ["CONCEPTS", "ConceptFolderDataModule", "concept_scenes", "heldout_concept_prompts",
           "write_concept_folder"]

#: concept -> (training colours, training backgrounds, shapes). Held-out prompts use the colours and backgrounds no
#: concept trains on (yellow, cyan; white, brown), so that neither a colour nor a background points to one concept:
#: only the concept's name does.
CONCEPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    CONCEPT_SHAPE: (("red", "blue"), ("grey", "black"), (CONCEPT_SHAPE,)),
    CONCEPT_STYLE: (("green", "magenta"), ("grey", "black"), SHAPES),
}


def _scene(rng: np.random.Generator, concept: str, colors, backgrounds, shapes, i: int) -> ShapeScene:
    pairs = [(colors[i % len(colors)], shapes[(i // len(colors)) % len(shapes)])]
    style = CONCEPT_STYLE if concept == CONCEPT_STYLE else None
    return sample_scene(rng, "1:1", pairs, background=backgrounds[(i // 2) % len(backgrounds)], style=style)


def concept_scenes(concept: str, n: int = 8, seed: int = 0) -> list[ShapeScene]:
    """``n`` training scenes of ``concept`` (its training colours and backgrounds, cycled)."""
    if concept not in CONCEPTS:
        raise ValueError(f"unknown concept {concept!r}; the shapes concepts are {sorted(CONCEPTS)}")
    colors, backgrounds, shapes = CONCEPTS[concept]
    return [_scene(np.random.default_rng([seed, 7_001, i]), concept, colors, backgrounds, shapes, i)
            for i in range(n)]


def heldout_concept_prompts(concept: str, n: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` prompts naming ``concept`` with colours and backgrounds no concept's training images have.

    Returns dicts with ``caption`` (long caption), ``color``, ``shape``, ``background``, ``style`` and ``scene``."""
    shapes = CONCEPTS[concept][2]
    colors = tuple(c for c in OBJECT_COLORS if all(c not in cs for cs, _, _ in CONCEPTS.values()))
    backgrounds = tuple(b for b in BACKGROUND_COLORS if all(b not in bs for _, bs, _ in CONCEPTS.values()))
    out = []
    for i in range(n):
        scene = _scene(np.random.default_rng([seed, 7_002, i]), concept, colors, backgrounds, shapes, i)
        o = scene.objects[0]
        out.append(dict(caption=caption_long(scene), color=o.color, shape=o.shape, background=scene.background,
                        style=scene.style or "none", scene=scene))
    return out


def write_concept_folder(out: str | Path, concepts: list[str], n: int = 8, resolution: int = 32,
                         seed: int = 0) -> list[Path]:
    """Render ``n`` training images per concept into ``out`` (``<concept>_<i>.png`` + ``.txt`` long caption, each
    file written atomically) and ``concepts.json`` (concept -> captions). Returns the image paths."""
    from PIL import Image

    from lit_edify.io import atomic_path, write_text_atomic

    out = Path(out)
    paths, captions = [], {}
    for concept in concepts:
        captions[concept] = []
        for i, scene in enumerate(concept_scenes(concept, n, seed)):
            img = render(scene, resolution, multiple=16)["image"]
            u8 = np.clip(np.round((img.transpose(1, 2, 0) + 1) * 127.5), 0, 255).astype(np.uint8)
            path = out / f"{concept}_{i:02d}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(u8).save(tmp)
            write_text_atomic(path.with_suffix(".txt"), caption_long(scene) + "\n")
            captions[concept].append(caption_long(scene))
            paths.append(path)
    write_text_atomic(out / "concepts.json", json.dumps(captions, indent=1) + "\n")
    return paths


class ConceptFolderDataModule(ImageTextDataModule):
    """An :class:`ImageTextDataModule` over a concept folder (3-20 captioned images): no validation split, one
    aspect bucket by default, and a clear error for a folder with fewer than 2 usable images.

    Args:
        root: the concept folder (``name.png`` + ``name.txt``).
        resolution, multiple, aspects, batch_size, num_workers, seed: as in :class:`ImageTextDataModule`.
    """

    def __init__(self, root: str, resolution: int = 32, multiple: int = 16, aspects: list[str] | None = ("1:1",),
                 batch_size: int = 8, num_workers: int = 0, seed: int = 0) -> None:
        if not Path(root).is_dir():
            raise ValueError(f"concept folder {root!r} not found; it holds 3-20 images with same-named .txt captions")
        # LightningCLI hands this class's own arguments to save_hyperparameters as the "given" ones (a context
        # variable); cleared, the parent records all of its arguments, which its setup reads
        token = _given_hyperparameters.set(None)
        try:
            super().__init__(root=root, resolution=resolution, multiple=multiple,
                             aspects=list(aspects or ()) or None, batch_size=batch_size, num_workers=num_workers,
                             seed=seed, p_long=0.0, val_fraction=0.0, max_bad_fraction=0.5, index_path=None)
        finally:
            _given_hyperparameters.reset(token)

    def setup(self, stage: str | None = None) -> None:
        try:
            super().setup(stage)
        except ValueError as e:
            if "no usable images" not in str(e):
                raise
            raise ValueError(f"concept folder {self.hparams.root!r} has no usable captioned images; personalization "
                             "needs 3-20 (name.png + name.txt)") from None
        n = len(self.train_set)
        if n < 2:
            raise ValueError(f"concept folder {self.hparams.root!r} has {n} usable captioned image; personalization "
                             "needs 3-20 (name.png + name.txt)")
