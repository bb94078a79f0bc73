"""Per-sample metadata parsing, aesthetic-weight normalisation and the bad-sample ledger.

Shared by the folder and Hugging Face sources of :mod:`lit_edify.data_modules.image_text`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = ["UNKNOWN", "parse_int", "normalise_meta", "aesthetic_weights", "SkipLedger", "BadFractionError"]


#: Value of ``pitch``/``dof``/``media_type`` when the sample has no such annotation.
UNKNOWN = -1


def parse_int(value: object) -> int | None:
    """An integer annotation from an int, an integral float or a numeric string; else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return parse_int(float(value.strip()))
        except ValueError:
            return None
    return None


def _parse_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def normalise_meta(row: dict, media_types: Sequence[str] | None, unknown_media: Counter | None = None) -> dict:
    """Metadata row -> ``{"pitch", "dof", "media_type": int, "aesthetic_raw": float | None}``.

    ``media_type`` may be an int (used as is) or a label looked up case-insensitively in
    ``media_types`` (its index). Missing or unparsable annotations become :data:`UNKNOWN` (-1);
    unknown labels are counted in ``unknown_media`` so the caller can warn once.
    """
    pitch = parse_int(row.get("pitch"))
    dof = parse_int(row.get("dof"))
    raw_media = row.get("media_type")
    media = parse_int(raw_media)
    if media is None and isinstance(raw_media, str) and raw_media.strip():
        names = [m.lower() for m in (media_types or [])]
        label = raw_media.strip().lower()
        if label in names:
            media = names.index(label)
        elif unknown_media is not None:
            unknown_media[raw_media] += 1
    return {
        "pitch": UNKNOWN if pitch is None else pitch,
        "dof": UNKNOWN if dof is None else dof,
        "media_type": UNKNOWN if media is None else media,
        "aesthetic_raw": _parse_float(row.get("aesthetic")),
    }


def aesthetic_weights(raw: Sequence[float | None], mean: float | None = None) -> tuple[list[float], float | None]:
    """Normalise aesthetic scores to weights with mean 1 over the samples that have a score.

    Args:
        raw: one score or ``None`` per sample. Scores must be finite and positive (a loss weight
            must not flip the sign of the loss).
        mean: normaliser; default: the mean of the present scores.

    Returns:
        ``(weights, mean)``: ``weight = score / mean``; samples without a score get ``1.0``, so the
        mean over the whole dataset is exactly 1 when ``mean`` is the default. ``mean`` is ``None``
        when no sample has a score (then every weight is 1.0).

    Raises:
        ValueError: a score <= 0, with the advice to rescale the scores.
    """
    present = [s for s in raw if s is not None]
    if not present:
        return [1.0] * len(raw), None
    low = min(present)
    if low <= 0:
        raise ValueError(
            f"aesthetic scores must be positive to be used as loss weights, found {low!r}; rescale "
            "them (e.g. to the 1-10 range of common aesthetic predictors) in metadata.jsonl / the dataset column"
        )
    if mean is None:
        mean = math.fsum(present) / len(present)
    if not (mean > 0 and math.isfinite(mean)):
        raise ValueError(f"aesthetic mean must be a positive number, got {mean!r}")
    return [1.0 if s is None else s / mean for s in raw], mean


class BadFractionError(RuntimeError):
    """More samples were bad than ``max_bad_fraction`` allows; the message has the summary."""


class SkipLedger:
    """Counts bad samples (found when indexing and when loading) and enforces ``max_bad_fraction``.

    Args:
        max_bad_fraction: largest tolerated ``unique bad / candidates``; above it :meth:`check`
            raises :class:`BadFractionError` with a summary of the reasons.
        min_candidates: for streams (unknown size) the fraction is only checked after this many
            samples were attempted, so two early bad files do not stop a run.
    """

    def __init__(self, max_bad_fraction: float = 0.01, min_candidates: int = 200) -> None:
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}")
        self.max_bad_fraction = float(max_bad_fraction)
        self.min_candidates = int(min_candidates)
        self.candidates: int | None = None  # dataset size incl. bad files; None for streams
        self.attempted = 0
        self.bad: dict[str, str] = {}  # unique name -> reason
        self.notes: dict[str, str] = {}  # recovered problems (e.g. caption decoded as cp1252)
        self.epoch_skips: Counter[str] = Counter()  # reason kind -> count, since the last epoch log

    def add_index_bad(self, bad: Iterable[tuple[str, str]]) -> None:
        for name, reason in bad:
            self.bad.setdefault(name, reason)

    def add_report(self, report: dict) -> None:
        """Merge a ``batch["_data_report"]`` (``attempted``, ``skipped``, ``notes``)."""
        self.attempted += int(report.get("attempted", 0))
        for name, reason in report.get("skipped", ()):
            self.bad.setdefault(name, reason)
            self.epoch_skips[_kind(reason)] += 1
        for name, note in report.get("notes", ()):
            self.notes.setdefault(name, note)

    def fraction(self) -> float:
        total = self.candidates if self.candidates is not None else self.attempted
        return len(self.bad) / total if total else 0.0

    def check(self) -> None:
        if self.candidates is None and self.attempted < self.min_candidates:
            return
        if self.fraction() > self.max_bad_fraction:
            raise BadFractionError(self.summary(headline=True))

    def summary(self, headline: bool = False, examples: int = 10) -> str:
        total = self.candidates if self.candidates is not None else self.attempted
        kinds = Counter(_kind(r) for r in self.bad.values())
        lines = []
        if headline:
            lines.append(
                f"{len(self.bad)} of {total} samples are bad ({self.fraction():.1%}), more than "
                f"max_bad_fraction={self.max_bad_fraction:.1%}. Fix or remove these files, or raise "
                "data.max_bad_fraction if losing them is acceptable."
            )
        else:
            lines.append(f"{len(self.bad)} bad of {total} samples ({self.fraction():.2%})")
        lines += [f"  {n:6d} x {k}" for k, n in kinds.most_common()]
        for name, reason in list(self.bad.items())[:examples]:
            lines.append(f"  e.g. {name}: {reason}")
        if self.notes:
            lines.append(f"  {len(self.notes)} recovered (kept) problems, e.g. {next(iter(self.notes.items()))}")
        return "\n".join(lines)

    def pop_epoch(self) -> Counter[str]:
        out, self.epoch_skips = self.epoch_skips, Counter()
        return out


def _kind(reason: str) -> str:
    """Reason without file-specific details, for grouping (text before the first ':')."""
    return reason.split(":", 1)[0].strip()
