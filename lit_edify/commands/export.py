"""``lit-edify export --ckpt run.ckpt --out model.safetensors``: share a trained model without pickle.

The file holds the checkpoint's ``state_dict`` (the EMA weights when trained with the EMA callback) as
safetensors, with the module's class path and its hyper-parameters (JSON) as metadata. Every sampling
entry point (``lit-edify sample --ckpt / --upsampler-ckpt``, ``quickstart --ckpt``, ``benchmark --ckpt``)
loads it like a ``.ckpt``, through the same allowlist of module classes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lit_edify.commands.argtypes import ArgumentParser, check_safetensors_out

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="lit-edify export", description="Export a checkpoint's (EMA) weights and "
                                "hyper-parameters to a .safetensors file.")
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint written by `lit-edify fit` (.ckpt)")
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0. Bad arguments exit with code 2 before anything is read or written."""
    from lit_edify.pipelines.checkpoints import export_safetensors

    parser = build_parser()
    a = parser.parse_args(argv)
    out = Path(a.out)
    check_safetensors_out(parser, out, a.force)
    info = export_safetensors(a.ckpt, out)
    weights = "EMA weights" if info["ema"] else "weights (no EMA in this checkpoint)"
    print(f"exported {info['class']} {weights}: {info['tensors']} tensors, {info['parameters']:,} values -> {out}")
    return 0
