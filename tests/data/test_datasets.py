"""Datasets: on-disk layouts, splits, and the errors of missing or malformed files.

Everything runs offline: CIFAR-100 and ImageNet are tiny synthetic files in
their real layouts, Fashion-MNIST is the real data from ../shared, digits
ship with scikit-learn. Downloads are monkeypatched to fail.
"""
from __future__ import annotations

import pickle
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import datasets as tv_datasets

from conftest import CIFAR_TRAIN_PER_CLASS, REPO_ROOT
from continual.config.options import DATASETS as DATASET_CHOICES
from continual.data import datasets as ds
from continual.data.datasets import DatasetError, build_dataset
from continual.data.scenarios import build_scenario
from continual.data.transforms import build_test_transform

# ---------------------------------------------------------------------------
# Fixture: synthetic ImageNet folders (CIFAR-100 and Fashion-MNIST: tests/conftest.py)
# ---------------------------------------------------------------------------

def _write_jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), (value, value, value)).save(path, format="JPEG")


@pytest.fixture
def imagenet100_root(tmp_path: Path) -> Path:
    """All 100 WNID folders with one image each (two for the first class)."""
    for split in ("train", "val"):
        for i, wnid in enumerate(ds.imagenet100_wnids()):
            _write_jpeg(tmp_path / split / wnid / f"{wnid}_0.JPEG", i)
    first = ds.imagenet100_wnids()[0]
    _write_jpeg(tmp_path / "train" / first / "extra.jpg", 0)  # lower-case extension
    (tmp_path / "train" / first / "notes.txt").write_text("not an image")
    return tmp_path


# ---------------------------------------------------------------------------
# CIFAR-100
# ---------------------------------------------------------------------------

def test_cifar_reads_torchvision_layout(cifar_root: Path) -> None:
    x, y, _ = build_dataset("cifar", cifar_root, True).get_data()
    assert x.shape == (300, 32, 32, 3) and x.dtype == np.uint8
    assert x[0, 0, 0].tolist() == [10, 20, 30]  # planes -> HWC
    assert np.bincount(y).tolist() == [CIFAR_TRAIN_PER_CLASS] * 100
    assert len(build_dataset("cifar", cifar_root, False).get_data()[1]) == 200


def test_cifar_missing_offline_names_path_and_layout(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_datasets, "CIFAR100", offline)
    with pytest.raises(DatasetError) as info:
        build_dataset("cifar", tmp_path, True)
    message = str(info.value)
    assert str(tmp_path) in message and "cifar-100-python/{train,test,meta}" in message
    assert "download" in message and "no network" in message


def test_cifar_malformed_pickle_names_file(cifar_root: Path) -> None:
    path = cifar_root / "cifar-100-python" / "test"
    path.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=str(path)):
        build_dataset("cifar", cifar_root, False)
    with path.open("wb") as handle:
        pickle.dump({"data": np.zeros((2, 10), np.uint8), "fine_labels": [0, 1]}, handle)
    with pytest.raises(DatasetError, match="3072"):
        build_dataset("cifar", cifar_root, False)


def _write_cifar10(root: Path) -> Path:
    """torchvision's CIFAR-10 layout: five training batches of 2 images per class, a test batch of 1."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, per_class in [*((f"data_batch_{i}", 2) for i in range(1, 6)), ("test_batch", 1)]:
        labels = np.tile(np.arange(10), per_class)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 1, 2, int(name[-1]) if name[-1].isdigit() else 9
        with (folder / name).open("wb") as handle:
            pickle.dump({"data": data, "labels": labels.tolist(), "batch_label": name}, handle)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    return folder


def test_cifar10_reads_the_five_batches_without_md5_checks(tmp_path: Path) -> None:
    folder = _write_cifar10(tmp_path)
    x, y, _ = build_dataset("cifar10", tmp_path, True).get_data()
    assert x.shape == (100, 32, 32, 3) and x.dtype == np.uint8 and np.bincount(y).tolist() == [10] * 10
    assert [x[i, 0, 0].tolist() for i in range(0, 100, 20)] == [[1, 2, b] for b in range(1, 6)]  # batch order
    x_test, y_test, _ = build_dataset("cifar10", tmp_path, False).get_data()
    assert y_test.tolist() == list(range(10)) and x_test[0, 0, 0].tolist() == [1, 2, 9]
    assert ds.dataset_normalization("cifar10") == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert ds.dataset_normalization("cifar10", std=(1, 1, 1))[1] == (1.0, 1.0, 1.0)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=f"malformed CIFAR-10 file {folder / 'data_batch_3'}"):
        build_dataset("cifar10", tmp_path, True)


def test_the_documented_dataset_example_reads_its_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/extending.md's example row, run as written (on a copy of the table)."""
    section = (REPO_ROOT / "docs" / "extending.md").read_text().split("## Adding a dataset")[1].split("\n## ")[0]
    example = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(example) == 1
    monkeypatch.setattr(ds, "DATASETS", dict(ds.DATASETS))
    exec(compile(example[0], "docs/extending.md", "exec"), {"__name__": "documented_example"})
    for split, rows in (("train", [("a.png", 1), ("b.jpg", 0), ("c.png", 1)]), ("test", [("d.png", 0), ("e.png", 1)])):
        (tmp_path / "images").mkdir(exist_ok=True)
        for name, label in rows:
            Image.new("L", (10 + label, 12), 40 * label).save(tmp_path / "images" / name)
        (tmp_path / f"{split}.csv").write_text("".join(f"{name},{label}\n" for name, label in rows))
    x, y, _ = build_dataset("labelled_images", tmp_path, True).get_data()
    assert [Path(p).name for p in x] == ["a.png", "b.jpg", "c.png"] and y.tolist() == [1, 0, 1]
    scenario = build_scenario(build_dataset("labelled_images", tmp_path, False), initial_increment=1, increment=1,
                              class_order=None, transform=build_test_transform("labelled_images", 16))
    assert scenario[1][0][0].shape == (3, 16, 16) and len(scenario[0]) == 1
    (tmp_path / "test.csv").unlink()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'test.csv'} not found"):
        build_dataset("labelled_images", tmp_path, False)


def test_every_row_of_the_table_is_a_choice_of_the_data_set_option() -> None:
    assert sorted(DATASET_CHOICES) == sorted(ds.DATASETS)  # the configuration cannot import the table


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="fashion_mnist"):
        build_dataset("cifar20", ".", True)
    with pytest.raises(ValueError, match="imagenet100"):
        build_test_transform("mnist", 32)


# ---------------------------------------------------------------------------
# ImageNet folders
# ---------------------------------------------------------------------------

def test_imagenet100_labels_follow_class_list(imagenet100_root: Path) -> None:
    wnids = ds.imagenet100_wnids()
    assert wnids[:2] == ["n01440764", "n01443537"] and len(wnids) == 100
    dataset = build_dataset("imagenet100", imagenet100_root, True)
    x, y, _ = dataset.get_data()
    assert len(x) == 101 and np.bincount(y).tolist() == [2] + [1] * 99
    for path, label in zip(x, y, strict=True):
        assert Path(path).parent.name == wnids[label]
    scenario = build_scenario(dataset, initial_increment=0, increment=10, class_order=None,
                              transform=build_test_transform("imagenet100", 224))
    image, _, _ = scenario[0][0]
    assert image.shape == (3, 224, 224)
    assert len(build_dataset("imagenet100", imagenet100_root, False).get_data()[0]) == 100


def test_imagenet100_missing_wnid_folder(imagenet100_root: Path) -> None:
    wnid = ds.imagenet100_wnids()[42]
    for image in (imagenet100_root / "val" / wnid).iterdir():
        image.unlink()
    (imagenet100_root / "val" / wnid).rmdir()
    with pytest.raises(DatasetError, match=wnid):
        build_dataset("imagenet100", imagenet100_root, False)
    with pytest.raises(DatasetError, match="train/WNID"):
        build_dataset("imagenet100", imagenet100_root / "nowhere", True)


def test_imagenet1000_any_number_of_sorted_classes(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for wnid in ("n03", "n01", "n02"):
            _write_jpeg(tmp_path / split / wnid / "a.JPEG", 1)
    x, y, _ = build_dataset("imagenet1000", tmp_path, False).get_data()
    assert [Path(p).parent.name for p in x] == ["n01", "n02", "n03"] and y.tolist() == [0, 1, 2]
    _write_jpeg(tmp_path / "val" / "n09" / "a.JPEG", 1)  # class absent from train
    with pytest.raises(DatasetError, match="n09"):
        build_dataset("imagenet1000", tmp_path, False)
    with pytest.raises(DatasetError, match="no class folder"):
        (tmp_path / "empty" / "train").mkdir(parents=True)
        build_dataset("imagenet1000", tmp_path / "empty", True)


# ---------------------------------------------------------------------------
# Fashion-MNIST and digits
# ---------------------------------------------------------------------------

def test_fashion_mnist_first_1000_per_class(fashion_root: Path, fashion_train) -> None:
    raw_images = ds.read_idx(fashion_root / "train-images-idx3-ubyte.gz")
    raw_labels = ds.read_idx(fashion_root / "train-labels-idx1-ubyte.gz").astype(np.int64)
    x, y, _ = fashion_train.get_data()
    assert x.shape == (10_000, 32, 32, 3) and x.dtype == np.uint8
    expected = np.sort(np.concatenate([np.flatnonzero(raw_labels == c)[:1000] for c in range(10)]))
    assert np.array_equal(y, raw_labels[expected])
    assert np.array_equal(x[:5], ds.greyscale_to_rgb(raw_images[expected[:5]], 32))
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])
    x_test, y_test, _ = build_dataset("fashion_mnist", fashion_root, False).get_data()
    assert x_test.shape == (10_000, 32, 32, 3) and np.bincount(y_test).tolist() == [1000] * 10


def test_fashion_mnist_torchvision_layout_and_offline_error(tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    (raw / "t10k-images-idx3-ubyte").write_bytes(
        bytes([0, 0, 8, 3]) + np.array([2, 28, 28], ">u4").tobytes() + images.tobytes())
    (raw / "t10k-labels-idx1-ubyte").write_bytes(
        bytes([0, 0, 8, 1]) + np.array([2], ">u4").tobytes() + bytes([3, 7]))
    x, y, _ = build_dataset("fashion_mnist", tmp_path, False, input_size=28).get_data()
    assert np.array_equal(x[..., 1], images) and y.tolist() == [3, 7]

    def offline(*args, **kwargs):
        raise RuntimeError("offline")

    monkeypatch.setattr(tv_datasets, "FashionMNIST", offline)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        build_dataset("fashion_mnist", tmp_path, True)


def test_digits_split_is_stratified_disjoint_and_deterministic() -> None:
    from sklearn.datasets import load_digits

    labels = load_digits().target
    test_mask = ds.stratified_test_mask(labels, 0.2, seed=0)
    assert np.array_equal(test_mask, ds.stratified_test_mask(labels, 0.2, seed=0))
    for c in range(10):
        assert test_mask[labels == c].sum() == round(0.2 * (labels == c).sum())
    x_train, y_train, _ = build_dataset("digits", "", True).get_data()
    x_test, y_test, _ = build_dataset("digits", "", False).get_data()
    assert len(x_train) + len(x_test) == 1797 and len(x_test) == test_mask.sum() == 359
    assert np.array_equal(y_test, labels[test_mask]) and np.array_equal(y_train, labels[~test_mask])
    assert x_train.shape[1:] == (32, 32, 3) and x_train.max() == 255
    assert np.array_equal(x_train, build_dataset("digits", "", True).get_data()[0])
    # The fixed normalisation in the table was measured on this train split.
    mean, std = ds.dataset_normalization("digits")
    assert x_train.mean() / 255 == pytest.approx(mean[0], abs=1e-3)
    assert (x_train / 255).std() == pytest.approx(std[0], abs=1e-3)
