"""Index of an image-text folder: which files are samples, their sizes, captions and metadata.

Folder format (the common one; also what ``lit-edify data ...`` writes)::

    root/
      any/sub/dirs/cat.jpg          an image (extensions: lit_edify.data_modules.imageio.IMAGE_EXTENSIONS)
      any/sub/dirs/cat.txt          its caption, same name with .txt (UTF-8; other encodings tolerated)
      metadata.jsonl                optional, one JSON object per line, e.g.
        {"file_name": "any/sub/dirs/cat.jpg", "caption": "...", "long_caption": "...",
         "aesthetic": 6.1, "pitch": -2, "dof": 1, "media_type": "photography"}

``file_name`` (or ``file``/``path``) is relative to ``root``. A ``caption`` in the metadata takes
precedence over the ``.txt`` file. Every column is optional.

Image sizes (needed for aspect bucketing) are read from the file headers only, once, and cached in
a JSON index (``root/.lit_edify_index.json``, or under ``~/.cache/lit_edify`` when ``root`` is
read-only). An entry is re-read when the file's size or modification time changes; files that
disappeared drop out. A file whose header cannot be read, or whose size is above ``max_pixels``,
is reported as bad with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from .imageio import IMAGE_EXTENSIONS, BadSample, read_size

__all__ = ["INDEX_NAME", "METADATA_NAME", "FolderIndex", "index_folder", "default_index_path"]

INDEX_NAME = ".lit_edify_index.json"
METADATA_NAME = "metadata.jsonl"
_INDEX_VERSION = 1
_FILE_KEYS = ("file_name", "file", "path")


def default_index_path(root: str) -> str:
    """``root/.lit_edify_index.json`` if ``root`` is writable, else a per-root file in the user cache."""
    root = os.path.abspath(root)
    if os.access(root, os.W_OK):
        return os.path.join(root, INDEX_NAME)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha1(root.encode()).hexdigest()[:16]
    return os.path.join(cache, "lit_edify", f"index-{digest}.json")


class FolderIndex:
    """Result of :func:`index_folder`.

    Attributes:
        records: one dict per usable image, sorted by ``key`` (the path relative to root), with
            ``key, width, height, caption_file`` (relative path of the ``.txt`` or ``None``) and the
            metadata row's raw values under ``meta`` (a dict, possibly empty).
        bad: ``(name, reason)`` for every file or metadata line that cannot be used.
    """

    def __init__(self, records: list[dict], bad: list[tuple[str, str]]) -> None:
        self.records = records
        self.bad = bad


def _scan(root: str) -> tuple[list[str], set[str]]:
    """Relative paths of image files (sorted) and of .txt files; hidden files/dirs are ignored."""
    images: list[str] = []
    texts: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name).replace(os.sep, "/")
            ext = os.path.splitext(name)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                images.append(rel)
            elif ext == ".txt":
                texts.add(rel)
    images.sort()
    return images, texts


def _read_metadata(root: str) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    path = os.path.join(root, METADATA_NAME)
    rows: dict[str, dict] = {}
    bad: list[tuple[str, str]] = []
    if not os.path.exists(path):
        return rows, bad
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{METADATA_NAME}:{lineno}"
            try:
                row = json.loads(raw.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                bad.append((where, f"invalid JSON line: {exc}"))
                continue
            if not isinstance(row, dict):
                bad.append((where, "line is not a JSON object"))
                continue
            key = next((row[k] for k in _FILE_KEYS if isinstance(row.get(k), str)), None)
            if key is None:
                bad.append((where, f"no file name (one of {', '.join(_FILE_KEYS)})"))
                continue
            rows[os.path.normpath(key).replace(os.sep, "/")] = row
    return rows, bad


def _load_cache(path: str) -> dict[str, list]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("version") == _INDEX_VERSION and isinstance(data.get("entries"), dict):
            return data["entries"]
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def _save_cache(path: str, entries: dict[str, list]) -> None:
    """Atomic write (tmp + rename), so concurrent ranks never read a half-written index."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".tmp", dir=os.path.dirname(path) or ".")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": _INDEX_VERSION, "entries": entries}, f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs time on the next run


def _header(args: tuple[str, str]) -> list:
    root, rel = args
    full = os.path.join(root, rel)
    try:
        st = os.stat(full)
    except OSError as exc:
        return [-1, -1, f"cannot stat: {exc.strerror or exc}"]
    try:
        w, h = read_size(full, max_pixels=None)
        return [st.st_size, st.st_mtime_ns, w, h]
    except BadSample as exc:
        return [st.st_size, st.st_mtime_ns, str(exc)]


def _sizes(root: str, rels: Iterable[str], index_path: str, threads: int) -> dict[str, list]:
    cache = _load_cache(index_path)
    entries: dict[str, list] = {}
    todo: list[str] = []
    for rel in rels:
        old = cache.get(rel)
        if old is not None:
            try:
                st = os.stat(os.path.join(root, rel))
                if [st.st_size, st.st_mtime_ns] == old[:2]:
                    entries[rel] = old
                    continue
            except OSError:
                pass
        todo.append(rel)
    if todo:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for rel, entry in zip(todo, pool.map(_header, [(root, r) for r in todo], chunksize=64)):
                entries[rel] = entry
    if todo or len(entries) != len(cache):
        _save_cache(index_path, entries)
    return entries


def index_folder(
    root: str,
    *,
    max_pixels: int | None,
    index_path: str | None = None,
    require_caption: bool = True,
    threads: int = 8,
) -> FolderIndex:
    """Scan ``root`` and return the usable images and the bad files with reasons.

    Args:
        root: the dataset folder.
        max_pixels: images with more stored pixels are bad (decompression-bomb guard); ``None``: off.
        index_path: where the header cache lives (default :func:`default_index_path`).
        require_caption: an image with neither a ``.txt`` file nor a ``caption``/``long_caption``
            metadata value is bad ("missing caption"); ``False`` keeps it with an empty caption.
        threads: threads reading headers of new or changed files.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"image folder {root!r} does not exist; create it (e.g. `lit-edify data tuxpaint --out {root}`) "
            "or set data.root to your folder of images with same-named .txt captions"
        )
    images, texts = _scan(root)
    meta, bad = _read_metadata(root)
    image_set = set(images)
    for key in sorted(meta):
        if key not in image_set:
            bad.append((key, f"listed in {METADATA_NAME} but the image file does not exist"))
    sizes = _sizes(root, images, index_path or default_index_path(root), threads)
    records: list[dict] = []
    for rel in images:
        entry = sizes[rel]
        if len(entry) == 3:
            bad.append((rel, entry[2]))
            continue
        w, h = entry[2], entry[3]
        if max_pixels is not None and w * h > max_pixels:
            bad.append((rel, f"too large: {w}x{h} exceeds max_pixels={max_pixels} (decompression-bomb guard)"))
            continue
        txt = os.path.splitext(rel)[0] + ".txt"
        row = meta.get(rel, {})
        caption_file = txt if txt in texts else None
        has_meta_caption = any(isinstance(row.get(k), str) and row[k].strip() for k in ("caption", "long_caption"))
        if require_caption and caption_file is None and not has_meta_caption:
            bad.append((rel, f"missing caption: no {os.path.basename(txt)} and no caption in {METADATA_NAME}"))
            continue
        records.append({"key": rel, "width": w, "height": h, "caption_file": caption_file, "meta": row})
    return FolderIndex(records, bad)
