"""Loading and sharing trained modules safely: Lightning ``.ckpt`` and ``.safetensors`` exports.

Both formats carry the same three things: the module's class path (``lit_edify_class``), its
hyper-parameters and its weights (EMA weights when trained with the EMA callback). Reading never
unpickles objects (``torch.load(weights_only=True)`` / safetensors) and the class must be one of
this project's registered modules (:mod:`lit_edify.modules.registry`), so a crafted file cannot run code.
"""
from __future__ import annotations

import inspect
import json
import pickle
from pathlib import Path

import torch

from lit_edify.io import atomic_path
from lit_edify.modules.config import CONFIG_GROUPS, regroup_flat
from lit_edify.modules.registry import class_path, module_class

__all__ = ["CheckpointError", "export_safetensors", "load_module", "read_checkpoint"]

_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A file that is not a loadable lit-edify checkpoint (the message is one line and says why)."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _kind(path: Path) -> str:
    """"ckpt" (a torch zip archive) or "safetensors", from the file's first bytes; CheckpointError otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e.strerror or first_line(e)}") from None
    if not head:
        raise CheckpointError(f"not a lit-edify checkpoint: {path} is empty (0 bytes); was the save interrupted?")
    if head.startswith(_ZIP_MAGIC):
        return "ckpt"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    raise CheckpointError(f"not a lit-edify checkpoint: {path} is neither a Lightning .ckpt nor a .safetensors "
                          "file (corrupt or another format)")


def _read_ckpt(path: Path) -> tuple[object, dict, dict, bool]:
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"not a lit-edify checkpoint: {path} holds objects other than tensors and plain "
                              f"containers, refused by weights_only loading ({first_line(e)[:120]})") from None
    except Exception as e:  # noqa: BLE001 -- zip, mmap, EOF and (by suffix) safetensors errors: all mean unreadable
        raise CheckpointError(f"not a lit-edify checkpoint: {path} is unreadable ({first_line(e)[:120]}); "
                              "it may be truncated") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("state_dict"), dict) or "lit_edify_class" not in meta:
        raise CheckpointError(f"not a lit-edify checkpoint: {path} has no 'lit_edify_class' and 'state_dict' "
                              "entries (was it written by a lit-edify module?)")
    ema = "current_model_state" in meta  # the EMA callback keeps the raw weights there
    return meta["lit_edify_class"], meta.get("hyper_parameters") or {}, meta["state_dict"], ema


def _read_safetensors(path: Path) -> tuple[object, dict, dict, bool]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"not a lit-edify checkpoint: {path} is an unreadable .safetensors file "
                              f"({first_line(e)[:120]})") from None
    if "lit_edify_class" not in meta:
        raise CheckpointError(f"not a lit-edify checkpoint: {path} has no 'lit_edify_class' metadata "
                              "(export one with `lit-edify export`)")
    try:
        hparams = json.loads(meta.get("hyper_parameters", "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"not a lit-edify checkpoint: {path} has malformed hyper_parameters ({e})") from None
    return meta["lit_edify_class"], hparams, state, meta.get("ema") == "true"


def read_checkpoint(path: str | Path) -> tuple[type, dict, dict[str, torch.Tensor], bool]:
    """(registered class, hyper-parameters, state_dict, whether the weights are EMA weights) of a ``.ckpt`` or
    ``.safetensors`` file, without building the module. Raises FileNotFoundError (missing) or
    :class:`CheckpointError` (anything else wrong)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found: train one with "
                                "`lit-edify fit --config recipes/tiny/base32.yaml` (checkpoints land in "
                                "<log_dir>/checkpoints/) or pass the right --ckpt path")
    name, hparams, state, ema = (_read_ckpt if _kind(path) == "ckpt" else _read_safetensors)(path)
    try:
        cls = module_class(name)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
        raise CheckpointError(f"not a lit-edify checkpoint: {path} has malformed hyper-parameters")
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}  # LightningCLI's _class_path etc.
    return cls, regroup_flat(hparams, init_arguments(cls) & CONFIG_GROUPS), state, ema


def init_arguments(cls: type) -> set[str]:
    """Names of the ``__init__`` arguments of ``cls`` and of the classes its ``**kwargs`` are passed on to."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and klass.__module__.startswith("lit_edify."):
            names |= set(inspect.signature(klass.__init__).parameters) - {"self"}
    return names


def load_module(path: str | Path, map_location: str = "cpu"):
    """Load a lit-edify LightningModule from a Lightning ``.ckpt`` or a ``lit-edify export`` ``.safetensors`` file,
    with the weights it was saved with (EMA when trained with the EMA callback), in eval mode on ``map_location``.

    Only this project's registered module classes are instantiated. Raises FileNotFoundError with advice when the
    file is missing and :class:`CheckpointError` (one line) for a corrupt, foreign or crafted file.
    """
    cls, hparams, state, _ = read_checkpoint(path)
    unknown = sorted(set(hparams) - init_arguments(cls))
    if unknown:
        raise CheckpointError(f"{path}: hyper-parameters {unknown} are not arguments of {cls.__name__}; "
                              "was the checkpoint written by another version of lit-edify?")
    try:
        model = cls(**hparams)
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot build {cls.__name__} from it ({first_line(e)[:200]})") from None
    return model.to(map_location).eval()


def _json_hparams(hparams: dict, source: Path) -> str:
    try:
        return json.dumps(hparams, sort_keys=True)
    except TypeError as e:
        raise CheckpointError(f"{source}: hyper-parameters are not JSON-serialisable ({e}); they cannot be "
                              "exported to .safetensors metadata") from None


def export_safetensors(ckpt: str | Path, out: str | Path) -> dict:
    """Write the weights (the checkpoint's ``state_dict``: EMA weights when trained with EMA) of a ``.ckpt`` to a
    ``.safetensors`` file, with the class path and the JSON hyper-parameters as metadata. The file appears
    atomically. Returns a summary ``{"class", "tensors", "parameters", "ema"}``."""
    from safetensors.torch import save_file

    ckpt = Path(ckpt)
    cls, hparams, state, ema = read_checkpoint(ckpt)
    tensors, seen = {}, set()
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{ckpt}: state_dict entry {k!r} is not a tensor; cannot export it")
        v = v.detach().cpu().contiguous()
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        tensors[k] = v.clone() if key in seen or v.untyped_storage().nbytes() != v.nbytes else v
        seen.add(key)
    metadata = {"format": "pt", "lit_edify_class": class_path(cls), "hyper_parameters": _json_hparams(hparams, ckpt),
                "ema": "true" if ema else "false"}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return {"class": cls.__name__, "tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values()),
            "ema": ema}
