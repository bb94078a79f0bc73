"""argparse pieces shared by the project's commands: a parser with one-line errors and value types with clear
messages instead of tracebacks."""
from __future__ import annotations

import argparse
import math

__all__ = ["ArgumentParser", "finite_float", "positive_int"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite float (nan / inf guidance would write black images)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def check_safetensors_out(parser: argparse.ArgumentParser, out, force: bool) -> None:
    """``parser.error`` unless ``out`` ends in .safetensors and is free (or ``force`` and not a folder)."""
    if out.suffix != ".safetensors":
        parser.error(f"--out {str(out)!r} must end in .safetensors")
    if out.is_dir() or (out.exists() and not force):
        parser.error(f"--out {str(out)!r} already exists; pass --force to overwrite it or choose another path")


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line on stderr, ``<prog>: error: <message> (see <prog>
    --help)``, exit status 2; the usage block is what ``--help`` prints, not a preamble to every error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
