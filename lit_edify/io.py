"""Atomic file writes: every file the suite writes appears whole or not at all (DESIGN.md section 6).

A writer gets a temporary path in the target's own folder (same file system, same extension so that
format-by-suffix writers such as PIL pick the right format); when it returns, the temporary file is
flushed to disk and moved over the target with ``os.replace``. A crash or SIGKILL in the middle leaves
the previous file untouched (and at worst a hidden ``.<name>.tmp-*`` file next to it).
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_save", "save_image_atomic", "write_bytes_atomic", "write_text_atomic"]


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's) data to disk; folders that cannot be opened are skipped."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it replaces ``path`` atomically.

    The parent folder is created if needed. On an exception the temporary file is removed and ``path``
    keeps its previous content. ``durable=False`` skips the fsyncs: still atomic if the process dies, not
    if the machine loses power (for bulk writes such as dataset preparation).
    Example: ``with atomic_path("w.pt") as tmp: torch.save(obj, tmp)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        if not tmp.is_file():
            raise RuntimeError(f"atomic write of {path}: the writer did not create {tmp}")
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8", durable: bool = True) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode(encoding), durable)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_image_atomic(tensor, path: str | os.PathLike, **kwargs) -> None:
    """``torchvision.utils.save_image`` atomically: tensor (B, 3, H, W) or (3, H, W) float in [0, 1]
    (kwargs such as ``nrow`` go to ``save_image``); the format follows the suffix of ``path``."""
    from torchvision.utils import save_image

    with atomic_path(path) as tmp:
        save_image(tensor, tmp, **kwargs)
