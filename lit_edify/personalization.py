"""Personalization (report Sec. 7): which U-Net tensors finetune, and the small files that share them.

Only a named subset of the cross-attention parameters trains (by default the key/value projections that read the
text context: 2.8% of ``base2.7b`` and 3.0% of ``upsampler1k1.6b``); everything else, the text encoder included,
stays frozen. Parameters are chosen by regular expressions on their names (``re.search``), as custom-diffusion's
``freeze_model`` does; a few names stand for pattern sets (:data:`PATTERNS`).

A personalization file is a ``.safetensors`` file holding only the trained tensors (full values, under the base
module's state_dict names, e.g. ``net.enc.12.attn.kv.weight``) with metadata: the sha256 of the base weights it
was trained from (:func:`lit_edify.modules.controlnet.weights_sha256`), the concept names and the patterns.
:func:`apply_personalization` refuses a base whose weights hash differently.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from lit_edify.io import atomic_path

__all__ = ["PATTERNS", "PersonalizationError", "apply_personalization", "expand_patterns", "freeze_except",
           "personalized", "read_personalization", "select_parameters", "trainable_fraction",
           "write_personalization"]

#: named pattern sets; ``crossattn_kv`` is the default (custom-diffusion's ``crossattn_kv``)
PATTERNS: dict[str, tuple[str, ...]] = {
    "crossattn_kv": (r"(^|\.)attn\.kv\.",),
    "crossattn": (r"(^|\.)attn\.(norm_cross|q|kv|proj_cross)\.",),
    # the cross-attention plus the whole decoder path (61% of the tiny U-Net): what the tiny 32 px model needs to
    # draw a new shape or texture, whose cross-attention sits only at 4x4 and 2x2 features (README: Personalization)
    "crossattn_decoder": (r"(^|\.)attn\.(norm_cross|q|kv|proj_cross)\.", r"^dec\.", r"^norm_out\.", r"^conv_out\."),
}
FORMAT = "lit-edify-personalization-1"


class PersonalizationError(ValueError):
    """A personalization file or pattern that cannot be used (the message is one line and says why)."""


def expand_patterns(patterns: str | Iterable[str]) -> tuple[str, ...]:
    """Names of :data:`PATTERNS` replaced by their regular expressions; every expression must compile."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise PersonalizationError("no trainable patterns given; use e.g. ['crossattn_kv']")
    out = []
    for p in patterns:
        for rx in PATTERNS.get(p, (p,)):
            try:
                re.compile(rx)
            except re.error as e:
                raise PersonalizationError(f"trainable pattern {rx!r} is not a regular expression ({e})") from None
            out.append(rx)
    return tuple(out)


def select_parameters(module: nn.Module, patterns: str | Iterable[str]) -> list[str]:
    """Names of ``module``'s parameters that match any pattern (``re.search``); error when none matches."""
    rxs = [re.compile(p) for p in expand_patterns(patterns)]
    names = [n for n, _ in module.named_parameters() if any(r.search(n) for r in rxs)]
    if not names:
        some = ", ".join(n for n, _ in list(module.named_parameters())[:3])
        raise PersonalizationError(f"trainable patterns {[r.pattern for r in rxs]} match no parameter of "
                                   f"{type(module).__name__} (names look like {some}, ...)")
    return names


def freeze_except(module: nn.Module, patterns: str | Iterable[str]) -> list[str]:
    """``requires_grad`` only for the parameters :func:`select_parameters` picks; returns their names."""
    names = set(select_parameters(module, patterns))
    for n, p in module.named_parameters():
        p.requires_grad_(n in names)
    return sorted(names)


def trainable_fraction(module: nn.Module, patterns: str | Iterable[str]) -> float:
    """Selected parameters / all parameters of ``module`` (works on the meta device)."""
    names = set(select_parameters(module, patterns))
    params = dict(module.named_parameters())
    return sum(params[n].numel() for n in names) / sum(p.numel() for p in params.values())


def write_personalization(path: str | Path, tensors: dict[str, torch.Tensor], *, base_sha256: str,
                          concepts: list[str], patterns: list[str]) -> int:
    """Write ``tensors`` (name -> tensor) with their provenance as a ``.safetensors`` file, atomically.
    Returns the file size in bytes."""
    from safetensors.torch import save_file

    meta = {"format": "pt", "lit_edify_personalization": FORMAT, "base_sha256": base_sha256,
            "concepts": json.dumps(list(concepts)), "patterns": json.dumps(list(patterns))}
    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=meta)
    return Path(path).stat().st_size


def read_personalization(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata with ``concepts`` / ``patterns`` decoded) of a personalization file; a missing,
    corrupt or foreign file raises :class:`PersonalizationError` / FileNotFoundError with one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"personalization file {str(path)!r} not found: write one with "
                                "`lit-edify personalize export --ckpt run.ckpt --out concept.safetensors`")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        text = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise PersonalizationError(f"{path} is not a readable .safetensors file ({text}); it may be truncated "
                                   "or corrupt") from None
    if meta.get("lit_edify_personalization") != FORMAT or "base_sha256" not in meta:
        raise PersonalizationError(f"{path} is not a lit-edify personalization file (no "
                                   "'lit_edify_personalization' metadata); write one with `lit-edify personalize "
                                   "export`")
    try:
        meta["concepts"], meta["patterns"] = json.loads(meta["concepts"]), json.loads(meta["patterns"])
    except (KeyError, json.JSONDecodeError) as e:
        raise PersonalizationError(f"{path} has malformed concepts / patterns metadata ({e})") from None
    return tensors, meta


def apply_personalization(module: nn.Module, path: str | Path) -> dict:
    """Load a personalization file's tensors into ``module`` (a base or upsampler module, in place).

    The module's weights must hash to the file's ``base_sha256``; ``module.lit_edify_sha256`` keeps that hash
    (the base identity that frozen ControlNets check), so ControlNets trained on the base still attach.
    Returns the file's metadata. Raises BaseMismatchError (another base) or PersonalizationError."""
    from lit_edify.modules.controlnet import BaseMismatchError, weights_sha256

    tensors, meta = read_personalization(path)
    sha = getattr(module, "lit_edify_sha256", None) or weights_sha256(module)
    if getattr(module, "lit_edify_personalization", None):
        raise PersonalizationError(f"the model already has the personalization {module.lit_edify_personalization} "
                                   f"applied; load the base again to apply {path}")
    if sha != meta["base_sha256"]:
        raise BaseMismatchError(f"{path} was trained on a base with weights sha256 {meta['base_sha256'][:16]}..., "
                                f"but this model's weights hash to {sha[:16]}...; pass the base checkpoint it was "
                                "trained from (--ckpt)")
    state = module.state_dict()
    for name, t in tensors.items():
        if name not in state or state[name].shape != t.shape:
            want = tuple(state[name].shape) if name in state else "absent"
            raise PersonalizationError(f"{path}: tensor {name!r} {tuple(t.shape)} does not fit the model "
                                       f"({want}); the file is corrupt or for another architecture")
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t.to(state[name].dtype))
    module.lit_edify_sha256 = sha
    module.lit_edify_personalization = str(path)
    return meta


def personalized(module: nn.Module, path: str | Path) -> nn.Module:
    """A copy of ``module`` with the personalization file applied (:func:`apply_personalization`); ``module`` itself
    (e.g. the per-process cached base of ``load_frozen_base``) is left untouched. The frozen text encoder, kept
    outside the module tree, is shared rather than copied."""
    import copy

    encoder = getattr(module, "_text_encoder", None)
    out = copy.deepcopy(module, memo={id(encoder): encoder} if encoder is not None else None)
    apply_personalization(out, path)
    return out
