"""Evaluate an image generator against a reference set: FID, KID, CLIP score, prompt adherence.

Plain torch (no Lightning), shared by the ``GenerationMetrics`` callback and ``lit-edify benchmark``.

``generate_fn`` follows the LightningModules' ``generate`` signature::

    generate_fn(captions: list[str], *, pitch=None, dof=None, media_type=None, aspect="1:1", seed=0)
        -> Tensor (N, 3, H, W) float in [-1, 1]

Prompts are strings or dicts with ``caption`` and optionally ``pitch``, ``dof``, ``media_type``,
``aspect`` (and, for the shapes judge, ``color``, ``shape``, ``background``). They are generated in
batches of one aspect ratio, batch ``b`` with seed ``seed + b``: the same prompts, batch size and
seed give the same images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .classifier import CaptionClassifier, load_or_train_classifier, to_classifier_input
from .clip_score import ClipScorer
from .fid import (
    DEFAULT_CACHE_DIR,
    ImageHasher,
    cached_features,
    compute_reference_features,
    fid_from_features,
    iter_reference_batches,
    kid_from_features,
)
from .inception import InceptionPool3, extract_features, images_to_uint8

__all__ = ["GeneratorEvaluator", "evaluate_generator", "generate_batches", "normalize_prompts"]

_EXTRA_KEYS = ("pitch", "dof", "media_type")


def normalize_prompts(prompts: Sequence[str | dict]) -> list[dict]:
    """Strings become ``{"caption": s}``; dicts must hold a "caption"."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append({"caption": p})
        elif isinstance(p, dict) and "caption" in p:
            out.append(dict(p))
        else:
            raise TypeError(f"a prompt must be a str or a dict with 'caption', got {p!r}")
    return out


def generate_batches(generate_fn: Callable, prompts: Sequence[str | dict], batch_size: int = 16,
                     seed: int = 0, **generate_kwargs) -> list[tuple[list[int], Tensor]]:
    """Generate images for prompts, grouped by aspect ratio (prompt order kept within a group).

    Returns:
        list of (prompt indices, images (b, 3, H, W) float in [-1, 1] on the CPU); batch ``b`` of the
        whole run uses seed ``seed + b``.
    """
    prompts = normalize_prompts(prompts)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p.get("aspect") or "1:1", []).append(i)
    out, batch_no = [], 0
    for aspect, idx in groups.items():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            kw = dict(generate_kwargs)
            for key in _EXTRA_KEYS:
                vals = [prompts[i].get(key) for i in chunk]
                if all(v is not None for v in vals):
                    kw[key] = [int(v) for v in vals]
            images = generate_fn([prompts[i]["caption"] for i in chunk], aspect=aspect, seed=seed + batch_no, **kw)
            if images.ndim != 4 or images.shape[:2] != (len(chunk), 3):
                raise ValueError(f"generate_fn returned shape {tuple(images.shape)} for {len(chunk)} prompts")
            out.append((chunk, images.detach().float().cpu()))
            batch_no += 1
    return out


def _batch_prompts(batch: dict) -> list[dict]:
    """Per-sample prompt dicts of a reference batch: caption plus the conditioning keys it carries."""
    prompts = [{"caption": c} for c in batch["caption"]]
    for key in (*_EXTRA_KEYS, "aspect"):
        values = batch.get(key)
        if values is None or len(values) != len(prompts):
            continue
        for p, v in zip(prompts, values):
            p[key] = v if key == "aspect" else int(v)
    return prompts


def _shapes_judge() -> Callable:
    try:
        from lit_edify.data_modules.judge import adherence
    except ImportError as err:
        raise ImportError("adherence='shapes' needs lit_edify.data_modules.judge.adherence (the shapes judge), which "
                          f"could not be imported: {err}") from err
    return adherence


class GeneratorEvaluator:
    """Holds the reference statistics (computed once, cached on disk) and scores generated images.

    Args:
        reference: real images: a (N, 3, H, W) float tensor in [-1, 1], a folder path, or an iterable of
            batches (dicts with "image" and "caption"), read on :meth:`prepare`: once to hash the images and
            collect captions, and a second time for features when the cache misses. A re-iterable source
            (DataLoader, list) must give the same images each time; a one-shot iterator is held in memory.
        fid, kid: compute FID / KID (TF Inception pool3 features, torchmetrics math).
        clip: ``None``, a :class:`ClipScorer`, or a CLIP checkpoint path (with ``clip_model``).
        adherence: ``None``; ``"shapes"`` (the shapes judge on dict prompts with color/shape/background);
            ``"classifier"`` (a small CNN trained on the reference images and captions, cached); or a
            callable ``(images, prompts: list[dict]) -> dict[str, float]``.
        num_reference: use at most this many reference images (``None``: all).
        cache_dir: reference features and classifiers are cached here (``None``: no cache).
        kid_subsets, kid_subset_size: KID subsets (subset size capped at the set sizes).
        device: where Inception / CLIP / the classifier run (default CPU).
        inception: a ready :class:`InceptionPool3` to share (default: loaded on first use).
        classifier_kwargs: hyper-parameters of :func:`~lit_edify.metrics.classifier.train_caption_classifier`.
    """

    def __init__(self, reference, *, fid: bool = True, kid: bool = True, clip=None, clip_model: str = "ViT-B-32",
                 adherence=None, num_reference: int | None = None, cache_dir: str | os.PathLike | None =
                 DEFAULT_CACHE_DIR, batch_size: int = 32, kid_subsets: int = 100, kid_subset_size: int = 1000,
                 seed: int = 0, device=None, inception: InceptionPool3 | None = None,
                 classifier_kwargs: dict | None = None):
        if adherence not in (None, "shapes", "classifier") and not callable(adherence):
            raise ValueError(f"adherence must be None, 'shapes', 'classifier' or a callable, got {adherence!r}")
        self.reference, self.fid, self.kid = reference, fid, kid
        self.adherence, self.num_reference, self.cache_dir = adherence, num_reference, cache_dir
        self.batch_size, self.kid_subsets, self.kid_subset_size, self.seed = batch_size, kid_subsets, kid_subset_size, seed
        self.device = torch.device(device or "cpu")
        self.clip = ClipScorer.from_checkpoint(clip, clip_model, self.device) if isinstance(clip, (str, os.PathLike)) else clip
        self.inception = inception
        self.judge = _shapes_judge() if adherence == "shapes" else (adherence if callable(adherence) else None)
        self.reference_captions: list[str] = []
        self.reference_prompts: list[dict] = []
        self.reference_features: Tensor | None = None
        self.reference_from_cache = False
        self.classifier: CaptionClassifier | None = None
        self.classifier_kwargs = {"seed": seed, **(classifier_kwargs or {})}
        self.prepared = False

    def _inception(self) -> InceptionPool3:
        if self.inception is None:
            self.inception = InceptionPool3()
        return self.inception.to(self.device)

    def prepare(self) -> GeneratorEvaluator:
        """Read the reference once: captions, content key, cached (or computed) features, classifier."""
        if self.prepared:
            return self
        need_feats = self.fid or self.kid
        if not isinstance(self.reference, (Tensor, str, os.PathLike)) and iter(self.reference) is self.reference:
            # a one-shot iterator cannot be read twice (hash pass, then features on a cache miss)
            self.reference = list(iter_reference_batches(self.reference, self.num_reference, self.batch_size))
        hasher, small, captions = ImageHasher(), [], []
        self.reference_prompts = []
        for batch in iter_reference_batches(self.reference, self.num_reference, self.batch_size):
            captions += batch["caption"]
            self.reference_prompts += _batch_prompts(batch)
            if need_feats:
                hasher.update(images_to_uint8(batch["image"]))
            if self.adherence == "classifier":
                small.append(to_classifier_input(batch["image"], self.classifier_kwargs.get("size", 32)))
        if not captions:
            raise ValueError("the reference set is empty")
        self.reference_captions = captions
        if need_feats:
            def compute():
                return compute_reference_features(self.reference, self._inception(), self.num_reference,
                                                  self.batch_size, self.device)
            self.reference_features, self.reference_from_cache = cached_features(
                hasher.hexdigest(), compute, self.cache_dir)
            if len(self.reference_features) != len(captions):
                raise RuntimeError(f"the reference gave {len(captions)} images on the first pass and "
                                   f"{len(self.reference_features)} on the second: it must be deterministic")
        if self.adherence == "classifier":
            self.classifier, _ = load_or_train_classifier(torch.cat(small), captions, self.cache_dir,
                                                          **self.classifier_kwargs)
        self.prepared = True
        return self

    def default_prompts(self, n: int) -> list[dict]:
        """Prompts of the first ``n`` reference images (cycled when the reference is smaller): their caption,
        and their pitch / dof / media_type / aspect when the reference batches carry them."""
        self.prepare()
        return [dict(self.reference_prompts[i % len(self.reference_prompts)]) for i in range(n)]

    def score_batches(self, batches: list[tuple[list[int], Tensor]], prompts: Sequence[str | dict]) -> dict:
        """Metrics of generated images.

        Args:
            batches: output of :func:`generate_batches` (indices into ``prompts``, (b, 3, H, W) in [-1, 1]).
            prompts: the prompts the images were generated from.
        Returns:
            dict of floats: ``fid``, ``kid_mean``, ``kid_std``, ``clip_score``, ``adherence/<name>`` (judge),
            ``classifier_accuracy`` and ``classifier_real_accuracy``, ``num_images``; only those enabled.
        """
        self.prepare()
        prompts = normalize_prompts(prompts)
        n = sum(len(idx) for idx, _ in batches)
        out: dict[str, float] = {"num_images": float(n)}
        if self.fid or self.kid:
            fake = torch.cat([extract_features(self._inception(), im, self.batch_size, self.device)
                              for _, im in batches])
            if self.fid:
                out["fid"] = fid_from_features(self.reference_features, fake)
            if self.kid:
                out["kid_mean"], out["kid_std"] = kid_from_features(
                    self.reference_features, fake, self.kid_subsets, self.kid_subset_size, self.seed)
        if self.clip is not None:
            s = torch.cat([self.clip.scores(im, [prompts[i]["caption"] for i in idx]) for idx, im in batches])
            out["clip_score"] = float(s.mean())
        if self.judge is not None:
            # one call in prompt order: a (N, 3, H, W) tensor, or a list of (3, H, W) for mixed aspects
            order = [i for idx, _ in batches for i in idx]
            images = [img for _, im in batches for img in im]
            if len({tuple(img.shape) for img in images}) == 1:
                images = torch.stack(images)
            verdict = self.judge(images, [prompts[i] for i in order])
            out.update({f"adherence/{k}": float(v) for k, v in verdict.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"})
        if self.classifier is not None:
            hits = sum(self.classifier.accuracy(im, [prompts[i]["caption"] for i in idx]) * len(idx)
                       for idx, im in batches)
            out["classifier_accuracy"] = hits / n
            out["classifier_real_accuracy"] = self.classifier.heldout_accuracy
        return out

    def score_images(self, images: Tensor, prompts: Sequence[str | dict]) -> dict:
        """:meth:`score_batches` for one (N, 3, H, W) tensor in [-1, 1] matching ``prompts``."""
        return self.score_batches([(list(range(len(images))), images)], prompts)

    def evaluate(self, generate_fn: Callable, prompts: Sequence[str | dict] | None = None, *,
                 num_images: int = 64, batch_size: int = 16, seed: int | None = None, **generate_kwargs) -> dict:
        """Generate images for ``prompts`` (default: :meth:`default_prompts` of ``num_images``) and score them."""
        self.prepare()
        prompts = self.default_prompts(num_images) if prompts is None else normalize_prompts(prompts)
        batches = generate_batches(generate_fn, prompts, batch_size, self.seed if seed is None else seed,
                                   **generate_kwargs)
        return self.score_batches(batches, prompts)


def evaluate_generator(generate_fn: Callable, prompts: Sequence[str | dict] | None, reference_images_or_loader, *,
                       fid: bool = True, kid: bool = True, clip=None, clip_model: str = "ViT-B-32",
                       adherence=None, num_images: int = 64, batch_size: int = 16, seed: int = 0,
                       cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR, num_reference: int | None = None,
                       device=None, **generate_kwargs) -> dict:
    """One-shot evaluation without Lightning (see :class:`GeneratorEvaluator` for the arguments).

    Returns:
        dict of float metrics (see :meth:`GeneratorEvaluator.score_batches`).
    """
    ev = GeneratorEvaluator(reference_images_or_loader, fid=fid, kid=kid, clip=clip, clip_model=clip_model,
                            adherence=adherence, num_reference=num_reference, cache_dir=cache_dir,
                            seed=seed, device=device)
    return ev.evaluate(generate_fn, prompts, num_images=num_images, batch_size=batch_size, **generate_kwargs)
