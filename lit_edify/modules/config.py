"""Typed configuration groups shared by the suite's LightningModules.

A diffusion stage is configured by five groups instead of a flat list of keyword arguments; LightningCLI reads
each as a nested YAML section, and a module's own arguments (an upsampler's ``factor``, a ControlNet's ``hint``)
sit beside them::

    model:
      class_path: lit_edify.modules.base.BaseModel
      init_args:
        net: {preset: tiny}
        noise: {resolution: 32, sigma_max: 80.0}
        optim: {lr: 2.0e-3}

Checkpoints store the groups as nested dictionaries. Checkpoints written before the groups existed (flat
hyper-parameters such as ``lr`` or ``sample_steps``) are regrouped by :func:`regroup_flat` when loaded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

__all__ = ["CONFIG_GROUPS", "NetConfig", "NoiseConfig", "ConditioningConfig", "OptimConfig", "SamplingConfig", "DiffusionConfig",
           "coerce", "flat", "regroup_flat"]


@dataclass
class NetConfig:
    """The U-Net: a preset of ``lit_edify.nn.presets`` with ``overrides``; ``context_dim`` (None: the preset's)
    is the cross-attention width; ``channels_last`` stores conv weights channels-last (faster with oneDNN and
    cuDNN); ``compile`` runs the U-Net through ``torch.compile`` during fit (off by default, see BaseModel)."""
    preset: str = "tiny"
    overrides: dict | None = None
    context_dim: int | None = None
    channels_last: bool = True
    compile: bool = False


@dataclass
class NoiseConfig:
    """The stage's resolution, noise range, training noise distribution ln sigma ~ N(p_mean, p_std^2) and
    Laplacian attenuation schedule (DESIGN.md section 2; sigma is stated at this stage's resolution). Image sides
    are multiples of ``bucket_multiple`` (None: the U-Net's own multiple)."""
    resolution: int = 32
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    band_factors: list[int] = field(default_factory=lambda: [2])
    band_cutoffs: list[float] = field(default_factory=lambda: [8.0])
    band_starts: list[float] | None = field(default_factory=lambda: [1.0])
    schedule_shape: str = "cosine"
    bucket_multiple: int | None = None
    learned_loss_weight: bool = False  # EDM2's per-sigma uncertainty weighting (lit_edify.diffusion.edm.LossLogvar)


@dataclass
class ConditioningConfig:
    """Frozen text encoder (name or local path) and the camera / media labels, with embedding dropout
    probabilities per group (Sec. 3.2; dropout is what classifier-free guidance needs)."""
    text_encoder: str = "minilm"
    max_text_length: int = 77
    p_drop_text: float = 0.1
    p_drop_camera: float = 0.1
    p_drop_media: float = 0.1
    num_pitch: int = 3
    num_dof: int = 2
    num_media: int = 4


@dataclass
class OptimConfig:
    """AdamW with linear warmup over ``warmup_steps`` then a constant learning rate (Sec. 3.5); ``fused`` uses
    AdamW's fused kernel (CPU and CUDA).

    ``decay_fraction`` > 0 ends training with a linear decay to 0 over that fraction of the trainer's total steps
    (warmup-stable-decay): for a run with a fixed step budget, such as the quickstart, the annealed weights are
    what the budget buys. 0 (paper scale: open-ended training, EMA only) keeps the rate constant."""
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    fused: bool = True
    decay_fraction: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.decay_fraction < 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1), got {self.decay_fraction}")


@dataclass
class SamplingConfig:
    """Sampling defaults: solver (``lit_edify.diffusion.samplers``), steps, classifier-free guidance scale and the
    optional sigma interval ``(lo, hi)`` in which guidance applies.

    Autoguidance (``lit_edify.modules.autoguide``): ``guide_at`` (a fraction of the training steps, in (0, 1))
    gives the module a frozen guide, the EMA weights as they were at that step of training, and ``autoguidance``
    is its weight w (1 = off): ``D += (w - 1)(D_c - D_guide)`` on top of classifier-free guidance."""
    steps: int = 32
    solver: str = "dpmpp_2m"
    guidance: float = 3.0
    guidance_interval: tuple[float, float] | None = None
    autoguidance: float = 1.0
    guide_at: float | None = None

    def __post_init__(self):
        if self.guide_at is not None and not 0.0 < self.guide_at < 1.0:
            raise ValueError(f"sampling.guide_at must be a fraction of the training steps in (0, 1), got {self.guide_at}")
        if not (self.autoguidance >= 0.0 and self.autoguidance < float("inf")):
            raise ValueError(f"sampling.autoguidance must be a finite weight >= 0 (1 = off), got {self.autoguidance}")
        if self.autoguidance != 1.0 and self.guide_at is None:
            raise ValueError("sampling.autoguidance != 1 needs a guide: set sampling.guide_at (the fraction of the "
                             "training steps at which the EMA weights are kept as the guide)")


@dataclass
class DiffusionConfig:
    """A diffusion module's whole configuration (``module.cfg``): read as ``cfg.noise.sigma_max``, ``cfg.optim.lr``."""
    net: NetConfig
    noise: NoiseConfig
    conditioning: ConditioningConfig
    optim: OptimConfig
    sampling: SamplingConfig

    def hparams(self) -> dict:
        """Nested plain dictionaries: what a checkpoint stores (JSON-able, loadable without pickle)."""
        return {f.name: asdict(getattr(self, f.name)) for f in fields(self)}


def coerce(cls: type, value, default=None) -> object:
    """``value`` as a fresh ``cls`` instance (a module never shares a default instance): a ``cls`` (copied), a dict
    (a checkpoint's or a Python caller's: the fields it gives replace those of ``default``, or of ``cls()``;
    unknown keys raise TypeError naming them) or None (a copy of ``default``, or ``cls()``)."""
    base = replace(default) if default is not None else cls()
    if value is None:
        return base
    if isinstance(value, cls):
        return replace(value)
    if is_dataclass(value):
        value = asdict(value)
    if not isinstance(value, dict):
        raise TypeError(f"{cls.__name__} expected (or a dict of its fields), got {type(value).__name__}")
    unknown = sorted(set(value) - {f.name for f in fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}; fields: {[f.name for f in fields(cls)]}")
    return replace(base, **value)


def flat(**kwargs) -> dict:
    """Keyword arguments with the flat names checkpoints used before the groups existed, regrouped, for short
    Python calls: ``BaseModel(**flat(resolution=16, lr=1e-3, sample_steps=2))``; other names (``factor``,
    ``hint``) pass through. A group given as a dict updates the module's default for that group (so an Upsampler
    keeps its own noise range)."""
    return regroup_flat(kwargs, CONFIG_GROUPS)


#: argument names under which a module takes these groups
CONFIG_GROUPS = frozenset({"net", "noise", "conditioning", "optim", "sampling"})

# Flat hyper-parameter names of checkpoints written before the groups existed -> (group, field).
_FLAT = {"unet": ("net", "preset"), "unet_overrides": ("net", "overrides"), "context_dim": ("net", "context_dim"),
         "channels_last": ("net", "channels_last"), "compile": ("net", "compile"),
         **{k: ("noise", k) for k in ("resolution", "sigma_min", "sigma_max", "p_mean", "p_std", "sigma_data",
                                      "band_factors", "band_cutoffs", "band_starts", "schedule_shape",
                                      "bucket_multiple")},
         **{k: ("conditioning", k) for k in ("text_encoder", "max_text_length", "p_drop_text", "p_drop_camera",
                                             "p_drop_media", "num_pitch", "num_dof", "num_media")},
         **{k: ("optim", k) for k in ("lr", "betas", "weight_decay", "warmup_steps")}, "fused_adamw": ("optim", "fused"),
         "sample_steps": ("sampling", "steps"), "sample_solver": ("sampling", "solver"),
         "guidance": ("sampling", "guidance"), "guidance_interval": ("sampling", "guidance_interval")}


def regroup_flat(hparams: dict, groups: set[str]) -> dict:
    """Flat hyper-parameters of an older checkpoint moved into the ``groups`` the module takes (a key of another
    group, or a None sampling default of an old ControlNet, is left out). New-style hyper-parameters pass through."""
    out, nested = {}, {}
    for key, value in hparams.items():
        group, name = _FLAT.get(key, (None, None))
        if group is None or key in groups:
            out[key] = value
        elif group in groups and value is not None:
            nested.setdefault(group, {})[name] = value
    for group, values in nested.items():
        out[group] = {**values, **(out.get(group) or {})}
    return out
