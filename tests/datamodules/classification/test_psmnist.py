"""PS-MNIST: sequential MNIST through one fixed, seeded pixel permutation."""
from pathlib import Path

import pytest
import torch

from datamodules.classification.vision import VisionClassificationDataModule, pixel_permutation
from tests.datamodules.classification.test_vision import normalise, write_mnist


def test_permuted_scan_follows_one_fixed_permutation(tmp_path: Path) -> None:
    mnist = write_mnist(tmp_path)
    kwargs = dict(name="mnist", root=str(tmp_path), presentation="sequential_pixels", pixels_per_step=1)
    dm = VisionClassificationDataModule(**kwargs, permute_seed=7)
    dm.setup(None)
    perm = pixel_permutation(784, 7)
    assert sorted(perm.tolist()) == list(range(784)) and perm.tolist() != list(range(784))
    for split, dataset in (("test", dm.test_set), ("train", dm.train_set)):
        for index in (0, 3):
            x, _ = dataset[index]
            j = int(dataset.indices[index])
            img = normalise(mnist[split][0][j][None], "mnist")[0]
            expected = torch.stack([img[int(perm[t]) // 28, int(perm[t]) % 28] for t in range(784)])
            torch.testing.assert_close(x[:, 0], expected)  # x[t] = pixel perm[t] of the row-major scan
    again = VisionClassificationDataModule(**kwargs, permute_seed=7)
    again.setup("test")
    torch.testing.assert_close(again.test_set[1][0], dm.test_set[1][0])
    other = VisionClassificationDataModule(**kwargs, permute_seed=8)
    other.setup("test")
    assert not torch.equal(other.test_set[1][0], dm.test_set[1][0])


def test_permutation_needs_sequential_pixels() -> None:
    with pytest.raises(ValueError, match="permute_seed"):
        VisionClassificationDataModule("mnist", "/x", "static", permute_seed=0)
