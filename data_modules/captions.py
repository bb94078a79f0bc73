"""Captions: decoding, cleaning, ground-truth / long-caption mixing and caption dropout.

The Edify Image report (Sec. 3.3) trains on a mix of ground-truth captions and long, descriptive
captions written by an LLM captioner, sampled at random for each training example, so the model
follows both short and long prompts. This module is the *one* place where that choice and the
empty-caption dropout happen:

* :func:`decode_caption` -- caption file bytes -> ``str`` (UTF-8, with a configurable fallback
  encoding for files written by legacy tools, e.g. cp1252 on Windows).
* :func:`clean_caption` -- whitespace normalisation; ``None`` for a missing/empty caption.
* :class:`CaptionMixer` -- picks the long caption with probability ``p_long`` (falling back to the
  other caption when one is missing) and then replaces the result by ``""`` with probability
  ``p_drop`` (an empty caption is the unconditional input of classifier-free guidance).

Note that the text-embedding dropout of the conditioning module (report Sec. 3.2) is a separate,
model-side mechanism; keep ``p_drop`` at 0 when that one is active unless you want both.
"""

from __future__ import annotations

import random
from typing import Literal

__all__ = ["decode_caption", "clean_caption", "CaptionMixer", "CaptionChoice"]

CaptionChoice = Literal["short", "long", "dropped", "none"]


def decode_caption(data: bytes, fallback: str | None = "cp1252") -> tuple[str, str]:
    """Decode caption-file bytes.

    Args:
        data: raw file contents. A UTF-8 byte-order mark is removed.
        fallback: encoding tried when the bytes are not valid UTF-8 (``None``: no fallback). If the
            fallback also fails, undecodable bytes are replaced by U+FFFD.

    Returns:
        ``(text, encoding_used)``; ``encoding_used`` is ``"utf-8"``, the fallback's name, or
        ``"utf-8-replace"`` when bytes had to be replaced.

    Raises:
        UnicodeDecodeError: only when ``fallback`` is ``None`` and the bytes are not UTF-8.
    """
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        if fallback is None:
            raise
    try:
        return data.decode(fallback), fallback
    except (UnicodeDecodeError, LookupError):
        return data.decode("utf-8", errors="replace"), "utf-8-replace"


def clean_caption(text: str | None) -> str | None:
    """Collapse runs of whitespace (newlines included) to one space and strip.

    Returns ``None`` for ``None``, non-strings (e.g. a NaN from a table) and captions that are empty
    after cleaning, so that "missing" has a single representation.
    """
    if not isinstance(text, str):
        return None
    text = " ".join(text.split())
    return text or None


class CaptionMixer:
    """Chooses the caption a training example is shown with.

    For each example: if both captions exist, the long one is used with probability ``p_long`` and
    the ground-truth one otherwise; if only one exists it is used; if neither exists the result is
    ``""``. Then, independently, the result is replaced by ``""`` with probability ``p_drop``.

    Args:
        p_long: probability of the long (machine-written) caption when both are available, in [0, 1].
        p_drop: probability of an empty caption (caption dropout), in [0, 1].

    Raises:
        ValueError: a probability outside [0, 1].
    """

    def __init__(self, p_long: float = 0.5, p_drop: float = 0.0) -> None:
        for name, p in (("p_long", p_long), ("p_drop", p_drop)):
            if not (isinstance(p, (int, float)) and 0.0 <= float(p) <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        self.p_long = float(p_long)
        self.p_drop = float(p_drop)

    def choose(self, caption: str | None, long_caption: str | None, rng: random.Random) -> tuple[str, CaptionChoice]:
        """Return ``(text, which)`` with ``which`` in ``{"short", "long", "dropped", "none"}``.

        ``caption``/``long_caption`` are cleaned with :func:`clean_caption` first. Two random draws
        are always consumed from ``rng`` so that the stream of choices does not depend on which
        captions happen to be missing.
        """
        short, long_ = clean_caption(caption), clean_caption(long_caption)
        u_long, u_drop = rng.random(), rng.random()
        if short is not None and long_ is not None:
            text, which = (long_, "long") if u_long < self.p_long else (short, "short")
        elif long_ is not None:
            text, which = long_, "long"
        elif short is not None:
            text, which = short, "short"
        else:
            return "", "none"
        if u_drop < self.p_drop:
            return "", "dropped"
        return text, which

    def __call__(self, caption: str | None, long_caption: str | None, rng: random.Random) -> str:
        """The chosen caption text (``""`` when dropped or when both captions are missing)."""
        return self.choose(caption, long_caption, rng)[0]

    def __repr__(self) -> str:
        return f"CaptionMixer(p_long={self.p_long}, p_drop={self.p_drop})"
