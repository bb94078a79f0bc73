"""Truncated training captions, reported once per epoch instead of one warning per caption per batch.

While fitting, the module's text encoder counts the captions it truncates (``TextEncoder.count_truncations``;
the first one still warns at once); at the end of each training epoch this callback reports the count and an
example in one warning. When fitting ends the encoder warns per caption again, so a user's sampling prompt
that gets cut always warns.
"""
from __future__ import annotations

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["TruncationReport"]


def _encoder(pl_module):
    enc = getattr(pl_module, "_text_encoder", None)
    return enc if hasattr(enc, "count_truncations") else None


class TruncationReport(Callback):
    """One warning per training epoch with the number of truncated captions (none when there were none)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if (enc := _encoder(pl_module)) is not None:
            enc.count_truncations(True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(pl_module, f"in epoch {trainer.current_epoch}")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._stop(pl_module, "at the end of training")

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop(pl_module, "before training stopped")

    def _stop(self, pl_module, when: str) -> None:
        self._report(pl_module, when)
        if (enc := _encoder(pl_module)) is not None:
            enc.count_truncations(False)

    def _report(self, pl_module, when: str) -> None:
        enc = _encoder(pl_module)
        if enc is None:
            return
        n, example = enc.pop_truncations()
        if n:
            rank_zero_warn(f"{n} training caption(s) were truncated to {enc.max_length} tokens {when} "
                           f"(e.g. {example!r}): shorten them or raise the module's conditioning.max_text_length")
