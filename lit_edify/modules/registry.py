"""The LightningModule classes a checkpoint may name (DESIGN.md section 6: a checkpoint can only instantiate
classes of this project).

A checkpoint records its class as ``"<module>.<qualname>"`` (``LaplacianDiffusionMixin.on_save_checkpoint``);
:func:`module_class` maps that name to a class of this registry and refuses anything else, so a crafted
file naming ``os.system`` or ``torch.nn.Linear`` never gets called. A new module registers itself with
``@register`` in its own file and is imported by ``lit_edify/modules/__init__.py``.
"""
from __future__ import annotations

__all__ = ["MODULES", "class_path", "module_class", "register"]

#: class path -> LightningModule class of every module a checkpoint may instantiate
MODULES: dict[str, type] = {}


def class_path(cls: type) -> str:
    """The name a checkpoint stores for ``cls``: ``"<module>.<qualname>"``."""
    return f"{cls.__module__}.{cls.__qualname__}"


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
