"""Hugging Face ``datasets`` sources for :mod:`lit_edify.data_modules.image_text`.

* :func:`open_hf` -- a dataset saved with ``save_to_disk`` (a local directory), or anything
  ``datasets.load_dataset`` can open offline (``"imagefolder"`` + ``data_dir``, a local loading
  script or Parquet/Arrow files, or a cached hub dataset), map-style or streaming.
* :func:`hf_sizes` -- header-only image sizes of a map-style dataset, cached by fingerprint.
* :class:`ImageValue` -- turns an image cell (``{"bytes", "path"}`` of ``datasets.Image(decode=False)``,
  raw bytes, or a path string) into something :mod:`lit_edify.data_modules.imageio` can read.

The streaming bucketed iterable lives in :mod:`lit_edify.data_modules.streaming`.
"""

from __future__ import annotations

import json
import os
import tempfile

from collections.abc import Callable

from .captions import clean_caption
from .imageio import BadSample, read_size

__all__ = ["open_hf", "hf_sizes", "hf_items", "image_value", "ImageValue", "undecoded"]


def open_hf(name: str, split: str = "train", data_dir: str | None = None, streaming: bool = False):
    """Open a Hugging Face dataset split.

    Args:
        name: a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a
            ``load_dataset`` path/name (e.g. ``"imagefolder"`` with ``data_dir``, ``"parquet"``).
        split: the split to use.
        data_dir: passed to ``load_dataset``.
        streaming: return a ``datasets.IterableDataset`` (data read lazily, e.g. too big for disk).

    Raises:
        FileNotFoundError / ValueError: with what to check, when the dataset or split cannot be opened.
    """
    import datasets

    if os.path.isdir(name) and (
        os.path.exists(os.path.join(name, "dataset_info.json"))
        or os.path.exists(os.path.join(name, "dataset_dict.json"))
        or os.path.exists(os.path.join(name, "state.json"))
    ):
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"split {split!r} not in {name!r}; available splits: {sorted(ds)} (set data.hf_split)")
            ds = ds[split]
        return ds.to_iterable_dataset() if streaming else ds
    try:
        return datasets.load_dataset(name, split=split, data_dir=data_dir, streaming=streaming)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"cannot open Hugging Face dataset {name!r} (split {split!r}, data_dir {data_dir!r}): {exc}. "
            "Give a directory written by save_to_disk, or e.g. hf_dataset='imagefolder' with hf_data_dir "
            "pointing at local files; this machine may have no access to the Hub."
        ) from exc
    except Exception as exc:
        raise ValueError(
            f"cannot open Hugging Face dataset {name!r} (split {split!r}): {type(exc).__name__}: {exc}. "
            "Check data.hf_dataset / data.hf_split / data.hf_data_dir."
        ) from exc


def undecoded(ds, image_column: str):
    """The dataset with ``image_column`` cast to ``Image(decode=False)`` when it is an Image feature,
    so rows carry ``{"bytes", "path"}`` and decoding happens (robustly) in our loader."""
    import datasets

    features = getattr(ds, "features", None)
    if features is None or image_column not in features:
        if features is not None:
            raise ValueError(
                f"image column {image_column!r} not in the dataset; columns are {list(features)} "
                "(set data.image_column)"
            )
        return ds
    if isinstance(features[image_column], datasets.Image) and features[image_column].decode:
        return ds.cast_column(image_column, datasets.Image(decode=False))
    return ds


def image_value(value):
    """Image cell -> ``bytes`` or a path string, for :func:`lit_edify.data_modules.imageio.load_rgb`.

    Raises:
        BadSample: an empty or unsupported cell.
    """
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return bytes(data)
        if isinstance(path, str) and path:
            return path
        raise BadSample("empty image cell (no bytes and no path)")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        return value
    if value is not None and hasattr(value, "save"):  # a decoded PIL image: re-encode losslessly
        import io

        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    raise BadSample(f"unsupported image cell of type {type(value).__name__}")


class ImageValue:
    """Picklable getter: row index -> image source, reading only the image column."""

    def __init__(self, ds, image_column: str) -> None:
        self.ds = ds.select_columns([image_column])
        self.column = image_column

    def __call__(self, row: int):
        return image_value(self.ds[int(row)][self.column])


def _fingerprint(ds) -> str | None:
    return getattr(ds, "_fingerprint", None)


def hf_sizes(ds, image_column: str, cache_dir: str | None = None, batch_size: int = 256) -> list[list]:
    """Header-only ``[width, height]`` (or ``[reason]`` for a bad cell) of every row.

    Cached as JSON in ``cache_dir`` (default ``~/.cache/lit_edify``) under the dataset's fingerprint,
    so a dataset is scanned once.
    """
    cache_dir = cache_dir or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lit_edify"
    )
    fp = _fingerprint(ds)
    path = os.path.join(cache_dir, f"hf-sizes-{fp}-{image_column}.json") if fp else None
    if path and os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                sizes = json.load(f)
            if isinstance(sizes, list) and len(sizes) == len(ds):
                return sizes
        except (OSError, ValueError):
            pass
    sizes: list[list] = []
    for batch in ds.select_columns([image_column]).iter(batch_size=batch_size):
        for value in batch[image_column]:
            try:
                sizes.append(list(read_size(image_value(value), max_pixels=None)))
            except BadSample as exc:
                sizes.append([str(exc)])
    if path:
        try:
            os.makedirs(cache_dir, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(sizes, f)
            os.replace(tmp, path)
        except OSError:
            pass
    return sizes


def hf_items(
    ds,
    name: str,
    aspect_of: Callable[[int, int], str],
    *,
    image_column: str,
    caption_column: str,
    long_caption_column: str,
    max_pixels: int | None,
    require_caption: bool,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Index a map-style dataset: one item per usable row, ``(name, reason)`` per bad row.

    Items have ``name, row, aspect, caption, long_caption, caption_file=None`` and ``meta_row``
    (the row's ``aesthetic``/``pitch``/``dof``/``media_type`` values, those that exist).

    Raises:
        ValueError: neither caption column exists while captions are required.
    """
    sizes = hf_sizes(ds, image_column)
    columns = set(ds.column_names)
    if require_caption and caption_column not in columns and long_caption_column not in columns:
        raise ValueError(
            f"no caption column {caption_column!r} or {long_caption_column!r} in {name}; columns are "
            f"{sorted(columns)} (set data.caption_column, or data.require_caption=False)"
        )
    wanted = [
        c for c in (caption_column, long_caption_column, "aesthetic", "pitch", "dof", "media_type") if c in columns
    ]
    table = {c: ds[c] for c in wanted}
    items: list[dict] = []
    bad: list[tuple[str, str]] = []
    for i, size in enumerate(sizes):
        row_name = f"{name}[{i}]"
        if len(size) == 1:
            bad.append((row_name, size[0]))
            continue
        w, h = size
        if max_pixels is not None and w * h > max_pixels:
            bad.append((row_name, f"too large: {w}x{h} exceeds max_pixels={max_pixels} (decompression-bomb guard)"))
            continue
        row = {c: table[c][i] for c in wanted}
        caption, long_caption = clean_caption(row.get(caption_column)), clean_caption(row.get(long_caption_column))
        if require_caption and caption is None and long_caption is None:
            bad.append((row_name, "missing caption: empty caption columns"))
            continue
        meta = {k: row[k] for k in ("aesthetic", "pitch", "dof", "media_type") if k in row}
        items.append(
            {"name": row_name, "row": i, "aspect": aspect_of(w, h), "caption": caption,
             "long_caption": long_caption, "caption_file": None, "meta_row": meta}
        )  # fmt: skip
    return items, bad
