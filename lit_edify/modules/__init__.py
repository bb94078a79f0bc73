"""LightningModules of the suite, one file per model of the report, and the registry of the classes a
checkpoint may instantiate (:mod:`lit_edify.modules.registry`)."""
from .base import BaseModel
from .controlnet import ControlNetModule
from .ldr2hdr import LDR2HDR  # registered in its file
from .personalize import Personalize
from .registry import MODULES, module_class, register
from .upsampler import Upsampler
from .upsampler4k import Upsampler4K

register(BaseModel)
register(Upsampler)

__all__ = ["MODULES", "BaseModel", "ControlNetModule", "LDR2HDR", "Personalize", "Upsampler", "Upsampler4K",
           "module_class", "register"]
