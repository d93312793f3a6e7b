"""MNIST, Fashion-MNIST and CIFAR-10 from a local root, static or as pixel sequences.

torchvision parses the files (``download=False``); the root is checked first with
``require_files`` so a missing dataset fails naming the files torchvision looks for.
Images stay uint8 in memory and are normalised per item.

Presentations (batch ``x``; ``y`` is ``[B]`` long):
- ``static``: ``[B, C, H, W]`` normalised images;
- ``sequential_pixels``: ``[B, T, D]`` with ``D = pixels_per_step * C`` and
  ``T = H * W / pixels_per_step``: a row-major scan, ``pixels_per_step`` pixels
  per step, channels of one pixel adjacent (``x[t, p * C + c] = img[c, i // W, i % W]``
  with ``i = t * pixels_per_step + p``). With ``permute_seed`` set the scan visits the pixels
  in a fixed random order instead (PS-MNIST): ``i = perm[t * pixels_per_step + p]``, one
  permutation of the ``H * W`` positions drawn from ``permute_seed``, shared by every image
  and split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from datamodules.common import SplitLoaders, require_files


@dataclass(frozen=True)
class _Spec:
    """What one dataset looks like on disk and in memory."""

    cls: type
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    expected: tuple[str, ...]  # paths under root that torchvision requires
    legacy: tuple[str, ...]  # alternative set torchvision also accepts (MNIST family)
    layout: str


def _mnist_spec(cls: type, folder: str, mean: float, std: float, classes: tuple[str, ...]) -> _Spec:
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    layout = (f"  <root>/{folder}/raw/{{{', '.join(files)}}}\n"
              "  (uncompressed: gunzip the published .gz files; torchvision does not read them\n"
              f"   without download=True), or the legacy <root>/{folder}/processed/{{training.pt, test.pt}}")
    return _Spec(cls, 1, 28, (mean,), (std,), classes, tuple(f"{folder}/raw/{f}" for f in files),
                 (f"{folder}/processed/training.pt", f"{folder}/processed/test.pt"), layout)


_CIFAR_FILES = ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
SPECS: dict[str, _Spec] = {
    "mnist": _mnist_spec(datasets.MNIST, "MNIST", 0.1307, 0.3081, tuple(str(i) for i in range(10))),
    "fashion_mnist": _mnist_spec(
        datasets.FashionMNIST, "FashionMNIST", 0.2860, 0.3530,
        ("t_shirt_top", "trouser", "pullover", "dress", "coat",
         "sandal", "shirt", "sneaker", "bag", "ankle_boot")),
    "cifar10": _Spec(
        datasets.CIFAR10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        tuple(f"cifar-10-batches-py/{f}" for f in _CIFAR_FILES), (),
        "  <root>/cifar-10-batches-py/{" + ", ".join(_CIFAR_FILES) + "}\n"
        "  (the extracted cifar-10-python.tar.gz; torchvision checks each file's MD5)"),
}


def check_root(name: str, root: str | Path) -> Path:
    """Raise FileNotFoundError naming the expected files unless ``root`` holds dataset ``name``."""
    spec = SPECS[name]
    if spec.legacy and all((Path(root).expanduser() / p).is_file() for p in spec.legacy):
        return Path(root).expanduser()
    return require_files(root, spec.expected, spec.layout)


def load_split(name: str, root: str | Path, train: bool) -> tuple[Tensor, Tensor]:
    """Parse one official split with torchvision.

    Returns:
        images ``[N, C, H, W]`` uint8, labels ``[N]`` long.
    """
    root = check_root(name, root)
    try:
        ds = SPECS[name].cls(str(root), train=train, download=False)
    except RuntimeError as err:  # torchvision's "not found or corrupted" (e.g. failed MD5)
        raise RuntimeError(f"torchvision could not read {name} under '{root}': {err}. Expected:\n"
                           f"{SPECS[name].layout}") from err
    images = torch.as_tensor(np.asarray(ds.data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)  # HWC -> CHW
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def pixel_permutation(num_pixels: int, seed: int) -> Tensor:
    """The fixed PS-MNIST pixel order: a permutation of ``range(num_pixels)`` drawn from ``seed``."""
    return torch.randperm(num_pixels, generator=torch.Generator().manual_seed(seed))


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Disjoint sorted ``[n_train]``, ``[n_val]`` index sets of ``range(n)``, drawn from ``seed``."""
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class ImageClassificationDataset(Dataset):
    """Items ``(x, y)`` from uint8 images ``[N, C, H, W]``; ``x`` as described in the module doc."""

    def __init__(self, images: Tensor, labels: Tensor, indices: Tensor | None, mean: tuple[float, ...],
                 std: tuple[float, ...], presentation: str = "static", pixels_per_step: int = 1,
                 augment: v2.Transform | None = None, permutation: Tensor | None = None) -> None:
        self.images, self.labels = images, labels
        self.indices = torch.arange(len(labels)) if indices is None else indices
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.presentation, self.pixels_per_step, self.augment = presentation, pixels_per_step, augment
        self.permutation = permutation

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        j = int(self.indices[i])
        img = self.images[j]
        if self.augment is not None:
            img = self.augment(img)
        x = (img.float() / 255.0 - self.mean) / self.std
        if self.presentation == "sequential_pixels":  # [C, H, W] -> [H*W, C] -> [T, p*C]
            x = x.flatten(1)
            if self.permutation is not None:
                x = x[:, self.permutation]
            x = x.t().reshape(-1, self.pixels_per_step * x.shape[0])
        return x, self.labels[j]


class VisionClassificationDataModule(SplitLoaders, LightningDataModule):
    """MNIST / Fashion-MNIST / CIFAR-10 read from ``root`` (nothing is downloaded).

    The validation set is ``val_fraction`` of the official training set, drawn
    from ``seed``; the test set is the official test set. ``augment`` adds random
    crops (padding 4 for CIFAR-10, 2 for the MNIST family) and, for CIFAR-10 only,
    horizontal flips, to the training split.
    """

    def __init__(self, name: Literal["mnist", "fashion_mnist", "cifar10"], root: str,
                 presentation: Literal["static", "sequential_pixels"] = "static",
                 pixels_per_step: int = 1, val_fraction: float = 0.1, augment: bool = False,
                 batch_size: int = 64, num_workers: int = 0, seed: int = 0, permute_seed: int | None = None) -> None:
        super().__init__()
        if name not in SPECS:
            raise ValueError(f"VisionClassificationDataModule: name must be one of {list(SPECS)}, got {name!r}")
        if presentation not in ("static", "sequential_pixels"):
            raise ValueError("VisionClassificationDataModule: presentation must be 'static' or "
                             f"'sequential_pixels', got {presentation!r}")
        spec = SPECS[name]
        if pixels_per_step < 1 or (spec.size * spec.size) % pixels_per_step:
            raise ValueError(f"VisionClassificationDataModule: pixels_per_step={pixels_per_step} must be "
                             f">= 1 and divide the {spec.size * spec.size} pixels of a {name} image")
        if permute_seed is not None and presentation != "sequential_pixels":
            raise ValueError("VisionClassificationDataModule: permute_seed (PS-MNIST) needs "
                             f"presentation='sequential_pixels', got {presentation!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"VisionClassificationDataModule: val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.name, self.root, self.spec = name, root, spec
        self.presentation, self.pixels_per_step = presentation, pixels_per_step
        self.val_fraction, self.augment = val_fraction, augment
        self.permutation = None if permute_seed is None else pixel_permutation(spec.size * spec.size, permute_seed)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.num_classes: int = len(spec.classes)
        self.class_names: list[str] = list(spec.classes)
        self.in_channels: int = spec.channels * (pixels_per_step if presentation == "sequential_pixels" else 1)
        # sequence length T of sequential_pixels; None for static images (the model picks T)
        self.num_steps: int | None = (spec.size * spec.size // pixels_per_step
                                      if presentation == "sequential_pixels" else None)
        self.train_set: ImageClassificationDataset | None = None
        self.val_set: ImageClassificationDataset | None = None
        self.test_set: ImageClassificationDataset | None = None

    def _augmentation(self) -> v2.Transform | None:
        if not self.augment:
            return None
        if self.name == "cifar10":
            return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
        return v2.RandomCrop(self.spec.size, padding=2)

    def _dataset(self, images: Tensor, labels: Tensor, indices: Tensor | None,
                 augment: v2.Transform | None = None) -> ImageClassificationDataset:
        return ImageClassificationDataset(images, labels, indices, self.spec.mean, self.spec.std,
                                          self.presentation, self.pixels_per_step, augment, self.permutation)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs ('fit'/'validate': train and val; 'test'/'predict': test)."""
        if stage in (None, "fit", "validate") and self.val_set is None:
            images, labels = load_split(self.name, self.root, train=True)
            train_idx, val_idx = split_train_val(len(labels), self.val_fraction, self.seed)
            self.train_set = self._dataset(images, labels, train_idx, self._augmentation())
            self.val_set = self._dataset(images, labels, val_idx)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._dataset(*load_split(self.name, self.root, train=False), None)

    def split_dataset(self, split: str) -> Dataset | None:
        return {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
