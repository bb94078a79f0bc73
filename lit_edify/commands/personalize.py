"""``lit-edify personalize export --ckpt run.ckpt --out concept.safetensors`` (report Sec. 7).

Training is ``lit-edify fit --config recipes/tiny/personalize.yaml`` (the ``Personalize`` module); this command
writes the trained tensors of its checkpoint only (``trainable`` patterns, e.g. the cross-attention key/value
projections) with the base's weights sha256, the concept names and the patterns as metadata. Apply the file with
``lit-edify sample --ckpt base.ckpt --personalization concept.safetensors`` (also with ``--control``).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from lit_edify.commands.argtypes import ArgumentParser, check_safetensors_out

__all__ = ["build_parser", "export_personalization", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="lit-edify personalize", description="Share a personalization finetune (report Sec. 7).")
    sub = p.add_subparsers(dest="action", required=True, metavar="export")
    e = sub.add_parser("export", help="write the trained tensors of a Personalize checkpoint to .safetensors")
    e.error = p.error  # one-line errors from the sub-command too
    e.add_argument("--ckpt", required=True, help="checkpoint of `lit-edify fit --config recipes/.../personalize.yaml`")
    e.add_argument("--out", required=True, help="output file (.safetensors)")
    e.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return p


def export_personalization(ckpt: str | Path, out: str | Path) -> dict:
    """Write the trained tensors of a ``Personalize`` checkpoint to ``out`` (atomically). Returns a summary
    ``{"tensors", "parameters", "bytes", "concepts", "base_sha256"}``."""
    from lit_edify.modules.personalize import Personalize
    from lit_edify.personalization import expand_patterns, write_personalization
    from lit_edify.pipelines.checkpoints import CheckpointError, read_checkpoint

    cls, hp, state, _ = read_checkpoint(ckpt)
    if cls is not Personalize:
        raise CheckpointError(f"{ckpt} is a {cls.__name__} checkpoint, not a Personalize one; train one with "
                              "`lit-edify fit --config recipes/tiny/personalize.yaml`")
    patterns = list(hp.get("trainable") or ["crossattn_kv"])
    rxs = [re.compile(r) for r in expand_patterns(patterns)]
    tensors = {k: v for k, v in state.items() if k.startswith("net.") and any(r.search(k[4:]) for r in rxs)}
    if not tensors or "base_sha256" not in hp:
        raise CheckpointError(f"{ckpt}: no trained tensors matching {patterns} or no base hash in it")
    size = write_personalization(out, tensors, base_sha256=hp["base_sha256"], concepts=list(hp.get("concepts") or []),
                                 patterns=patterns)
    return {"tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values()), "bytes": size,
            "concepts": list(hp.get("concepts") or []), "base_sha256": hp["base_sha256"]}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0. Bad arguments exit with code 2 before anything is read or written."""
    parser = build_parser()
    a = parser.parse_args(argv)
    out = Path(a.out)
    check_safetensors_out(parser, out, a.force)
    if not Path(a.ckpt).is_file():
        parser.error(f"--ckpt {a.ckpt!r} not found")
    info = export_personalization(a.ckpt, out)
    print(f"exported {info['tensors']} tensors ({info['parameters']:,} values, {info['bytes']:,} bytes) for concepts "
          f"{info['concepts']} on base {info['base_sha256'][:12]} -> {out}")
    return 0
