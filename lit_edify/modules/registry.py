"""The LightningModule classes a checkpoint may name (DESIGN.md section 6: a checkpoint can only instantiate
classes of this project).

A checkpoint records its class as ``"<module>.<qualname>"`` (``LaplacianDiffusionMixin.on_save_checkpoint``);
:func:`module_class` maps that name to a class of this registry and refuses anything else, so a crafted
file naming ``os.system`` or ``torch.nn.Linear`` never gets called. A new module registers itself with
``@register`` in its own file and is imported by ``lit_edify/modules/__init__.py``.
"""
from __future__ import annotations

__all__ = ["MODULES", "class_path", "module_class", "record_class", "register"]

#: class path -> LightningModule class of every module a checkpoint may instantiate
MODULES: dict[str, type] = {}


def class_path(cls: type) -> str:
    """The name a checkpoint stores for ``cls``: ``"<module>.<qualname>"``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def record_class(module, checkpoint: dict) -> None:
    """``on_save_checkpoint`` of every module: the class as ``lit_edify_class`` (what our safe loader reads) and as
    the hyper-parameters' ``_class_path`` (LightningCLI's ``fit --ckpt_path`` resume re-parses the model from the
    hyper-parameters; our loaders ignore ``_`` keys)."""
    checkpoint["lit_edify_class"] = class_path(type(module))
    if "hyper_parameters" in checkpoint:
        checkpoint["hyper_parameters"]["_class_path"] = class_path(type(module))


def register(cls: type) -> type:
    """Class decorator: allow checkpoints to instantiate ``cls`` (a LightningModule of this project)."""
    import lightning as L

    if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
        raise TypeError(f"only LightningModule classes can be registered, got {cls!r}")
    MODULES[class_path(cls)] = cls
    return cls


def module_class(name: object) -> type:
    """The registered class called ``name`` (a class path string); ValueError for anything else."""
    import lit_edify.modules  # noqa: F401  (registers the built-in modules)

    cls = MODULES.get(name) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(sorted(MODULES))
        raise ValueError(f"class {name!r} is not a lit-edify module; a checkpoint may only name one of: {known}. "
                         "Refusing to load it: use a checkpoint written by this project (`lit-edify fit` or "
                         "`lit-edify export`)")
    return cls
