"""VisionClassificationDataModule on tiny MNIST / Fashion-MNIST / CIFAR-10 fixtures in the real formats."""
from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from jsonargparse import ArgumentParser

from datamodules.classification.vision import SPECS, VisionClassificationDataModule

N_TRAIN, N_TEST = 40, 7
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_mnist(root: Path, folder: str = "MNIST", seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Raw idx-ubyte files under ``root/folder/raw``; returns {split: (images [N, 28, 28] uint8, labels [N])}."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) * 3 % 10).astype(np.uint8)
        image_file, label_file = MNIST_FILES[split]
        (raw / image_file).write_bytes(struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
        (raw / label_file).write_bytes(struct.pack(">II", 0x0801, n) + labels.tobytes())
        out[split] = (images, labels)
    return out


def write_cifar(root: Path, per_batch: int = 8, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``cifar-10-batches-py`` pickles; returns {split: (images [N, 3, 32, 32] uint8, labels [N])}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out: dict[str, list] = {"train": [[], []], "test": [[], []]}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = per_batch if name != "test_batch" else N_TEST
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": images.reshape(n, -1), "labels": labels}, f)
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(images)
        out[split][1].extend(labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(SPECS["cifar10"].classes)}, f)
    return {k: (np.concatenate(v[0]), np.array(v[1])) for k, v in out.items()}


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixture files cannot match the published MD5s: check existence only (as tonic's tests do)."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))


def normalise(img: np.ndarray, name: str) -> torch.Tensor:
    """uint8 ``[C, H, W]`` -> normalised float ``[C, H, W]``."""
    spec = SPECS[name]
    x = torch.from_numpy(img.astype(np.float32) / 255.0)
    return (x - torch.tensor(spec.mean).view(-1, 1, 1)) / torch.tensor(spec.std).view(-1, 1, 1)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_loads_exact_pixels_and_labels(tmp_path: Path, name: str, folder: str) -> None:
    data = write_mnist(tmp_path, folder)
    dm = VisionClassificationDataModule(name, str(tmp_path), batch_size=4, val_fraction=0.25)
    dm.setup("fit")
    dm.setup("test")
    images, labels = data["test"]
    for i in range(N_TEST):
        x, y = dm.test_set[i]
        assert x.shape == (1, 28, 28)
        torch.testing.assert_close(x, normalise(images[i][None], name))
        assert int(y) == labels[i]
    for split_set in (dm.train_set, dm.val_set):  # items map back to the training file through indices
        j = int(split_set.indices[0])
        torch.testing.assert_close(split_set[0][0], normalise(data["train"][0][j][None], name))
        assert int(split_set[0][1]) == data["train"][1][j]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (4,) and y.dtype == torch.long


def test_cifar_static_and_augmented(tmp_path: Path, no_md5: None) -> None:
    data = write_cifar(tmp_path)
    dm = VisionClassificationDataModule("cifar10", str(tmp_path), augment=True, batch_size=5)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) + len(dm.val_set) == 40
    images, labels = data["test"]
    for i in range(N_TEST):
        x, y = dm.test_set[i]
        torch.testing.assert_close(x, normalise(images[i], "cifar10"))
        assert int(y) == labels[i]
    j = int(dm.val_set.indices[0])  # validation is never augmented
    torch.testing.assert_close(dm.val_set[0][0], normalise(data["train"][0][j], "cifar10"))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 3, 32, 32) and y.dtype == torch.long


def test_sequential_pixels_row_major_order(tmp_path: Path, no_md5: None) -> None:
    mnist = write_mnist(tmp_path / "m")
    dm = VisionClassificationDataModule("mnist", str(tmp_path / "m"), "sequential_pixels", pixels_per_step=4)
    assert (dm.in_channels, dm.num_steps) == (4, 196)
    dm.setup("test")
    x, _ = dm.test_set[2]
    img = normalise(mnist["test"][0][2][None], "mnist")[0]
    expected = torch.stack([torch.stack([img[(t * 4 + p) // 28, (t * 4 + p) % 28] for p in range(4)])
                            for t in range(196)])
    assert x.shape == (196, 4)
    torch.testing.assert_close(x, expected)

    cifar = write_cifar(tmp_path / "c")
    dm = VisionClassificationDataModule("cifar10", str(tmp_path / "c"), "sequential_pixels", pixels_per_step=2)
    assert (dm.in_channels, dm.num_steps) == (6, 512)
    dm.setup("test")
    x, _ = dm.test_set[1]
    img = normalise(cifar["test"][0][1], "cifar10")
    assert x.shape == (512, 6)
    for t, p, c in [(0, 0, 0), (0, 1, 2), (15, 1, 1), (16, 0, 0), (300, 1, 2), (511, 1, 2)]:
        i = t * 2 + p  # pixel index in the row-major scan
        assert x[t, p * 3 + c] == img[c, i // 32, i % 32]
    batch, _ = next(iter(dm.test_dataloader()))
    assert batch.shape == (min(dm.batch_size, N_TEST), 512, 6)


def test_val_split_deterministic_disjoint(tmp_path: Path) -> None:
    write_mnist(tmp_path)

    def indices(seed: int) -> tuple[set[int], set[int]]:
        dm = VisionClassificationDataModule("mnist", str(tmp_path), val_fraction=0.25, seed=seed)
        dm.setup("fit")
        return set(dm.train_set.indices.tolist()), set(dm.val_set.indices.tolist())

    train, val = indices(0)
    assert len(val) == 10 and not train & val and train | val == set(range(N_TRAIN))
    assert indices(0) == (train, val)
    assert indices(1)[1] != val


def test_missing_root_names_expected_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        VisionClassificationDataModule("mnist", str(tmp_path / "nowhere")).setup("fit")
    raw = tmp_path / "MNIST" / "raw"  # only the published .gz files: torchvision does not read them
    raw.mkdir(parents=True)
    for name in (*MNIST_FILES["train"], *MNIST_FILES["test"]):
        (raw / f"{name}.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        VisionClassificationDataModule("mnist", str(tmp_path)).setup("test")
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3") as err:
        VisionClassificationDataModule("cifar10", str(tmp_path)).setup("fit")
    assert "test_batch" in str(err.value)  # the layout lists every expected file


def test_legacy_processed_mnist_accepted(tmp_path: Path) -> None:
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    for file in ("training.pt", "test.pt"):
        torch.save((images, torch.arange(6)), processed / file)
    dm = VisionClassificationDataModule("mnist", str(tmp_path))
    dm.setup("test")
    assert int(dm.test_set[5][1]) == 5


def test_attributes_before_setup_and_bad_arguments() -> None:
    dm = VisionClassificationDataModule("cifar10", "/nonexistent")
    assert (dm.num_classes, dm.in_channels, dm.class_names[0]) == (10, 3, "airplane")
    dm = VisionClassificationDataModule("fashion_mnist", "/nonexistent", "sequential_pixels", pixels_per_step=28)
    assert (dm.num_classes, dm.in_channels, dm.num_steps) == (10, 28, 28)
    with pytest.raises(ValueError, match="pixels_per_step=5"):
        VisionClassificationDataModule("mnist", "/x", "sequential_pixels", pixels_per_step=5)
    with pytest.raises(ValueError, match="val_fraction"):
        VisionClassificationDataModule("mnist", "/x", val_fraction=1.0)
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()


def test_signature_parses_from_config() -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(VisionClassificationDataModule, "data")
    cfg = parser.parse_args(["--data.name=cifar10", "--data.root=/d", "--data.presentation=sequential_pixels"])
    assert cfg.data.presentation == "sequential_pixels" and cfg.data.batch_size == 64
    with pytest.raises(SystemExit):
        parser.parse_args(["--data.name=imagenet", "--data.root=/d"])
