"""CLIP score (Hessel et al. 2021, as torchmetrics defines it) with open_clip models loaded from a local path.

``score = 100 * max(cos(E_image, E_text), 0)`` per image-caption pair; the mean is reported.

No CLIP weights exist offline in this environment: :meth:`ClipScorer.from_checkpoint` takes a
user-given path and fails with a message saying what to pass when it is missing. Accepted forms:

- a weights file (``open_clip_pytorch_model.bin`` / ``.safetensors`` / ``.pt``) together with
  ``model_name``: a built-in open_clip architecture name (``"ViT-B-32"``, ...) or the path of an
  open_clip model-config JSON file;
- a folder holding ``open_clip_config.json`` and the weights (open_clip's ``local-dir:`` layout).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ClipScorer", "clip_preprocess"]

_HOW_TO = (
    "CLIP score needs CLIP weights from a local path (no model hub is reachable here). Pass "
    "clip_checkpoint=/path/to/open_clip_pytorch_model.bin together with clip_model=<open_clip architecture "
    "name such as ViT-B-32, or a model-config .json>, or a folder holding open_clip_config.json and the "
    "weights; or turn the CLIP score off with clip_checkpoint=None."
)


def clip_preprocess(images: Tensor, cfg: dict) -> Tensor:
    """Tensor version of open_clip's inference preprocessing.

    Args:
        images: (N, 3, H, W) float in [-1, 1].
        cfg: open_clip preprocess config: ``size`` (int or (h, w)), ``mean``, ``std``, ``interpolation``
            ("bicubic" | "bilinear"), ``resize_mode`` ("shortest" | "squash" | "longest").
    Returns:
        (N, 3, h, w) float32, normalised with the model's mean and std.
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    size = cfg.get("size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    interp = InterpolationMode.BILINEAR if cfg.get("interpolation") == "bilinear" else InterpolationMode.BICUBIC
    mode = cfg.get("resize_mode", "shortest")
    x = ((images.float().clamp(-1, 1) + 1) / 2)
    h, w = x.shape[-2:]
    if mode == "squash":
        x = TF.resize(x, list(size), interpolation=interp, antialias=True)
    elif mode == "shortest" and size[0] == size[1]:  # torchvision's shorter-edge rule, as open_clip uses
        x = TF.center_crop(TF.resize(x, [size[0]], interpolation=interp, antialias=True), list(size))
    else:
        scale = (max if mode == "shortest" else min)(size[0] / h, size[1] / w)
        new = [max(1, int(h * scale)), max(1, int(w * scale))]
        if new != [h, w]:
            x = TF.resize(x, new, interpolation=interp, antialias=True)
        x = TF.center_crop(x, list(size))
    x = x.clamp(0, 1)
    mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class ClipScorer:
    """Scores image-caption agreement with an open_clip model.

    Args:
        model: an open_clip CLIP model (``encode_image``, ``encode_text``).
        tokenizer: callable list[str] -> (N, L) long token tensor (``open_clip.get_tokenizer(name)``).
        preprocess_cfg: see :func:`clip_preprocess`; default: the model's own ``visual.preprocess_cfg``.
        device: where to run; default: the model's device.
    """

    def __init__(self, model, tokenizer, preprocess_cfg: dict | None = None, device=None):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        if preprocess_cfg is None:
            from open_clip.model import get_model_preprocess_cfg

            preprocess_cfg = get_model_preprocess_cfg(model)
        self.preprocess_cfg = dict(preprocess_cfg)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | os.PathLike | None, model_name: str = "ViT-B-32", device="cpu"
    ) -> ClipScorer:
        """Build from local weights (see the module docstring for the accepted forms)."""
        import open_clip

        if checkpoint is None or str(checkpoint) == "":
            raise ValueError(_HOW_TO)
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"CLIP checkpoint {path} does not exist. {_HOW_TO}")
        if path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise FileNotFoundError(f"{path} is a folder without open_clip_config.json. {_HOW_TO}")
            name = f"local-dir:{path}"
            model = open_clip.create_model(name, device=device, require_pretrained=True, pretrained_text=False)
        else:
            name = model_name
            if model_name.endswith(".json"):
                cfg = Path(model_name).expanduser()
                if not cfg.is_file():
                    raise FileNotFoundError(f"open_clip model config {cfg} does not exist. {_HOW_TO}")
                open_clip.add_model_config(cfg)
                name = cfg.stem
            if open_clip.get_model_config(name) is None:
                raise ValueError(f"unknown open_clip architecture {model_name!r}. {_HOW_TO}")
            model = open_clip.create_model(
                name, pretrained=str(path), device=device, require_pretrained=True, pretrained_text=False
            )
        return cls(model, open_clip.get_tokenizer(name), device=device)

    def to(self, device) -> ClipScorer:
        """Move the model to ``device`` (returns self)."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def preprocess(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) float in [-1, 1] -> (N, 3, h, w) CLIP input on the scorer's device."""
        return clip_preprocess(images.to(self.device), self.preprocess_cfg)

    @torch.no_grad()
    def scores(self, images: Tensor, captions: list[str], batch_size: int = 64) -> Tensor:
        """Per-pair CLIP scores.

        Args:
            images: (N, 3, H, W) float in [-1, 1].
            captions: N strings, ``captions[i]`` describes ``images[i]``.
        Returns:
            (N,) float32 on the CPU, each in [0, 100].
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got {tuple(images.shape)}")
        if len(captions) != len(images):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        out = []
        for i in range(0, len(images), batch_size):
            img = self.model.encode_image(self.preprocess(images[i : i + batch_size]))
            txt = self.model.encode_text(self.tokenizer(list(captions[i : i + batch_size])).to(self.device))
            cos = F.cosine_similarity(img.float(), txt.float(), dim=-1)
            out.append((100 * cos.clamp(min=0)).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def __call__(self, images: Tensor, captions: list[str]) -> float:
        """Mean CLIP score over the pairs (float in [0, 100])."""
        return float(self.scores(images, captions).mean())
