"""Raw datasets on disk -> continuum datasets that `ClassIncremental` accepts.

Every supported name is a row of `DATASETS`; an unknown name is a `ValueError`
listing the valid ones. Each row says how to read the raw samples, how many
classes the benchmark has and how to normalise its images (used by
`continual.data.transforms`).

What `build_dataset` returns:

- `cifar`, `fashion_mnist`, `digits`: a continuum `InMemoryDataset` of uint8
  images `(N, H, W, 3)` (`TaskType.IMAGE_ARRAY`). Greyscale datasets are
  converted once to RGB (three equal channels) and resized to `input_size`
  with bicubic interpolation, before any augmentation (docs/benchmarks.md).
- `cifar10`: the same, from torchvision's CIFAR-10 layout.
- `imagenet100`, `imagenet1000`, and the folder datasets `imagefolder`,
  `tinyimagenet200`, `imagenet_r` (continual.data.folders): an `InMemoryDataset`
  of image paths (`TaskType.IMAGE_PATH`), each file read as RGB only when a
  sample is asked for (continual.data.images).

We read CIFAR pickles and Fashion-MNIST IDX files ourselves instead of going
through torchvision because torchvision checks md5 sums (so the synthetic CIFAR
files written by tests, and the Debian Fashion-MNIST `.gz` files whose gzip
headers differ, would be refused). torchvision is only used to *download* the
files when they are missing (users who are online); offline, a missing dataset
is a `DatasetError` that names the path and the expected layout.

Labels are the dataset's class ids `0..C-1`; a scenario's `class_order`
remaps them later (see `continual.data.scenarios`).
"""
from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from continuum.datasets import InMemoryDataset
from continuum.tasks import TaskType
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import datasets as tv_datasets

from continual.data.errors import DatasetError
from continual.data.folders import (
    SplitFiles,
    imagenet_r_split,
    load_image_folder,
    load_imagenet_r,
    load_tiny_imagenet,
)
from continual.data.splits import stratified_test_mask

Triple = tuple[float, float, float]
# Raw samples of one split: images (uint8 arrays or path strings) and int64 labels.
RawSamples = tuple[np.ndarray, np.ndarray]

CIFAR_FOLDER = "cifar-100-python"
CIFAR_LAYOUT = f"{CIFAR_FOLDER}/{{train,test,meta}}"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_LAYOUT = f"{CIFAR10_FOLDER}/{{data_batch_1..5,test_batch,batches.meta}}"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
IMAGENET_LAYOUT = "train/WNID/*.JPEG and val/WNID/*.JPEG"
FASHION_FILES: dict[bool, tuple[str, str]] = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
JPEG_SUFFIXES = frozenset({".jpeg", ".jpg", ".jpe"})  # compared lower-cased
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
IDX_UBYTE_CODE = 0x08
IMAGENET100_CLASS_FILE = "imagenet100_classes.txt"

# Errors a malformed pickle can raise while loading (pickle gives no single type).
_PICKLE_ERRORS = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError,
    AttributeError, ImportError, IndexError, KeyError, MemoryError,
)
# Errors torchvision raises when it cannot download (URLError is an OSError;
# an md5 mismatch or a partial archive is a RuntimeError).
_DOWNLOAD_ERRORS = (OSError, RuntimeError, ValueError)


@dataclass(frozen=True)
class DatasetInfo:
    """One row of the dataset table.

    `num_classes` is the benchmark's number of classes, None when it is the
    number of class folders found (the labels always come from the files).
    `load(root, train)` returns the raw split; `greyscale` says that images are
    `(N, H, W)` uint8 and must be converted to RGB and resized to the input
    size; `data_type` is how continuum reads `x`. `any_size`: the images have
    any size, so the transforms always resize and crop as for ImageNet, even at
    an input size <= 32. `drawn_split(root)`: for a dataset without an official
    test set, the train and test files of the split this code draws, which a
    run folder records and a resume checks (continual.state.data_split).
    """

    num_classes: int | None
    mean: Triple
    std: Triple
    load: Callable[[Path, bool], RawSamples]
    data_type: TaskType = TaskType.IMAGE_ARRAY
    greyscale: bool = False
    any_size: bool = False
    drawn_split: Callable[[Path], SplitFiles] | None = None


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------

def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices keeping the first `per_class` samples of every class, in file order.

    The Split Fashion-MNIST benchmark (docs/benchmarks.md) defines its small train set this way (not a random
    subset), so that it is the same on every machine. `per_class <= 0` keeps
    everything; a class with fewer samples keeps all of them.
    """
    if per_class <= 0:
        return np.arange(len(labels))
    kept = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(kept))


def greyscale_to_rgb(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) uint8 -> (N, size, size, 3) uint8: RGB, then bicubic resize (PIL).

    Done once when the dataset is built, as the benchmark's definition prescribes, so the
    augmentations see 3-channel images of the model's input size.
    """
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        rgb = Image.fromarray(image).convert("RGB")
        out[i] = np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC))
    return out


def _try_download(dataset_cls: Callable[..., object], root: Path, train: bool) -> str | None:
    """Let torchvision download a dataset into `root`; return the error text on failure.

    Offline machines cannot download; the caller turns the failure into a
    `DatasetError` that explains the expected layout.
    """
    try:
        dataset_cls(str(root), train=train, download=True)
    except _DOWNLOAD_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


# ---------------------------------------------------------------------------
# CIFAR-100
# ---------------------------------------------------------------------------

def _load_cifar100(root: Path, train: bool) -> RawSamples:
    """CIFAR-100 from `root/cifar-100-python/{train,test}`; downloads it if missing."""
    path = root / CIFAR_FOLDER / ("train" if train else "test")
    if not path.is_file():
        failure = _try_download(tv_datasets.CIFAR100, root, train)
        if failure is not None or not path.is_file():
            raise DatasetError(
                f"CIFAR-100 not found: {path} does not exist. Expected the torchvision "
                f"layout {root}/{CIFAR_LAYOUT}, and downloading it failed "
                f"({failure or 'file still missing after download'}). Copy the "
                f"'{CIFAR_FOLDER}' folder under --data-path {root}."
            )
    return _read_cifar_pickle(path)


def _read_cifar_pickle(path: Path, name: str = "CIFAR-100", label_key: str = "fine_labels") -> RawSamples:
    """Read one CIFAR pickle: `data` (N, 3072) uint8 rows (RGB planes), labels under `label_key`
    (CIFAR-100: `fine_labels`, CIFAR-10: `labels`).

    The files are Python pickles (as in torchvision): only read trusted files.
    """
    try:
        with path.open("rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
    except (OSError, *_PICKLE_ERRORS) as error:
        raise DatasetError(f"malformed {name} file {path}: {error}") from error
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        raise DatasetError(f"malformed {name} file {path}: expected a dict with "
                           f"keys 'data' and '{label_key}'")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DatasetError(f"malformed {name} file {path}: 'data' has shape "
                           f"{data.shape} for {len(labels)} labels, expected (N, 3072)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    return np.ascontiguousarray(images), labels


# ---------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------

def _load_cifar10(root: Path, train: bool) -> RawSamples:
    """CIFAR-10 from `root/cifar-10-batches-py/` (five training batches, one test batch); downloads it if
    missing. No md5 check, as for CIFAR-100."""
    names = CIFAR10_TRAIN_FILES if train else CIFAR10_TEST_FILES
    paths = [root / CIFAR10_FOLDER / name for name in names]
    if not all(path.is_file() for path in paths):
        failure = _try_download(tv_datasets.CIFAR10, root, train)
        missing = [path for path in paths if not path.is_file()]
        if failure is not None or missing:
            raise DatasetError(
                f"CIFAR-10 not found: {missing[0] if missing else paths[0]} does not exist. Expected the "
                f"torchvision layout {root}/{CIFAR10_LAYOUT}, and downloading it failed "
                f"({failure or 'file still missing after download'}). Copy the "
                f"'{CIFAR10_FOLDER}' folder under --data-path {root}."
            )
    batches = [_read_cifar_pickle(path, "CIFAR-10", "labels") for path in paths]
    return np.concatenate([images for images, _ in batches]), np.concatenate([labels for _, labels in batches])


# ---------------------------------------------------------------------------
# ImageNet folders
# ---------------------------------------------------------------------------

def imagenet100_wnids() -> list[str]:
    """The 100 ImageNet-100 WNIDs shipped with the package; label i = line i."""
    text = resources.files("continual.data").joinpath("files", IMAGENET100_CLASS_FILE).read_text()
    wnids = [line.strip() for line in text.splitlines() if line.strip()]
    if len(wnids) != 100 or len(set(wnids)) != 100:
        raise DatasetError(f"package file continual/data/files/{IMAGENET100_CLASS_FILE} must list "
                           f"100 distinct WNIDs, found {len(wnids)} lines")
    return wnids


def _split_folder(root: Path, train: bool) -> Path:
    """`root/train` or `root/val`, which must exist."""
    folder = root / ("train" if train else "val")
    if not folder.is_dir():
        raise DatasetError(f"ImageNet folder {folder} not found: expected the layout "
                           f"{root}/{IMAGENET_LAYOUT}")
    return folder


def _class_images(class_dir: Path) -> list[str]:
    """Sorted JPEG paths of one class folder (extension compared case-insensitively)."""
    if not class_dir.is_dir():
        raise DatasetError(f"ImageNet class folder {class_dir} not found: expected "
                           f"{class_dir.parent}/WNID/*.JPEG (layout {IMAGENET_LAYOUT})")
    paths = sorted(str(p) for p in class_dir.iterdir()
                   if p.is_file() and p.suffix.lower() in JPEG_SUFFIXES)
    if not paths:
        raise DatasetError(f"ImageNet class folder {class_dir} holds no JPEG image")
    return paths


def _image_folder_samples(split_dir: Path, wnids: list[str]) -> RawSamples:
    """Paths and labels of `split_dir/WNID/*.JPEG`, label = index of WNID in `wnids`."""
    paths: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        images = _class_images(split_dir / wnid)
        paths.extend(images)
        labels.extend([label] * len(images))
    return np.array(paths), np.array(labels, dtype=np.int64)


def _load_imagenet100(root: Path, train: bool) -> RawSamples:
    """ImageNet-100: the packaged WNID list, in its order."""
    return _image_folder_samples(_split_folder(root, train), imagenet100_wnids())


def _sorted_subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _load_imagenet1000(root: Path, train: bool) -> RawSamples:
    """ImageNet-1000: every WNID folder of `train/`, label = sorted index.

    The class list always comes from `train/` and `val/` must hold the same
    WNIDs: listing `val/` alone would silently shift every label after a
    missing class.
    """
    train_dir = _split_folder(root, True)
    wnids = _sorted_subfolders(train_dir)
    if not wnids:
        raise DatasetError(f"no class folder in {train_dir}: expected {root}/{IMAGENET_LAYOUT}")
    split_dir = train_dir if train else _split_folder(root, False)
    if not train:
        extra = sorted(set(_sorted_subfolders(split_dir)) - set(wnids))
        if extra:
            raise DatasetError(f"{split_dir} has class folders absent from {train_dir}: "
                               f"{extra[:5]}{' ...' if len(extra) > 5 else ''}")
    return _image_folder_samples(split_dir, wnids)


# ---------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ---------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip-compressed if it ends in `.gz`)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            payload = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetError(f"cannot read IDX file {path}: {error}") from error
    if len(payload) < 4 or payload[:2] != b"\0\0" or payload[2] != IDX_UBYTE_CODE:
        raise DatasetError(f"malformed IDX file {path}: bad magic number")
    ndim = payload[3]
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DatasetError(f"malformed IDX file {path}: truncated header")
    dims = struct.unpack(f">{ndim}I", payload[4:header])
    if len(payload) - header != int(np.prod(dims)):
        raise DatasetError(f"malformed IDX file {path}: {len(payload) - header} bytes "
                           f"for dimensions {dims}")
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(root: Path, name: str) -> Path | None:
    """`name` or `name.gz` in `root` or in torchvision's `root/FashionMNIST/raw`."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _fashion_files(root: Path, train: bool) -> tuple[Path, Path]:
    """Locate the image and label IDX files, downloading them if absent."""
    names = FASHION_FILES[train]
    found = [_find_idx(root, name) for name in names]
    if None in found:
        failure = _try_download(tv_datasets.FashionMNIST, root, train)
        found = [_find_idx(root, name) for name in names]
        if None in found:
            raise DatasetError(
                f"Fashion-MNIST not found under {root}: expected {names[0]}[.gz] and "
                f"{names[1]}[.gz] in {root} or in {root}/FashionMNIST/raw, and downloading "
                f"failed ({failure or 'files still missing after download'})."
            )
    images_path, labels_path = found
    assert images_path is not None and labels_path is not None
    return images_path, labels_path


def _load_fashion_mnist(root: Path, train: bool) -> RawSamples:
    """Fashion-MNIST greyscale (N, 28, 28) images and labels, in file order."""
    images_path, labels_path = _fashion_files(root, train)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{images_path} ({images.shape}) and {labels_path} "
                           f"({labels.shape}) are not N images and N labels")
    return images, labels.astype(np.int64)


# ---------------------------------------------------------------------------
# scikit-learn digits (offline demo)
# ---------------------------------------------------------------------------

def _load_digits(root: Path, train: bool) -> RawSamples:
    """scikit-learn digits (8x8, values 0..16) as uint8 0..255; `root` is unused."""
    from sklearn.datasets import load_digits  # imported here: only this dataset needs it

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    labels = digits.target.astype(np.int64)
    test = stratified_test_mask(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    keep = ~test if train else test
    return images[keep], labels[keep]


# ---------------------------------------------------------------------------
# The table and the public entry points
# ---------------------------------------------------------------------------

CIFAR100_MEAN: Triple = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: Triple = (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN: Triple = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Triple = (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN: Triple = (0.2860, 0.2860, 0.2860)
FASHION_MNIST_STD: Triple = (0.3530, 0.3530, 0.3530)
# Measured once on the digits *train* split after the conversion above (uint8
# 0..255, RGB, bicubic 32x32): mean 0.3091, std 0.3486 on every channel
# (tests/data/test_datasets.py recomputes it).
DIGITS_MEAN: Triple = (0.3091, 0.3091, 0.3091)
DIGITS_STD: Triple = (0.3486, 0.3486, 0.3486)
IMAGENET_MEAN: Triple = tuple(IMAGENET_DEFAULT_MEAN)  # type: ignore[assignment]
IMAGENET_STD: Triple = tuple(IMAGENET_DEFAULT_STD)  # type: ignore[assignment]

DATASETS: dict[str, DatasetInfo] = {
    "cifar": DatasetInfo(100, CIFAR100_MEAN, CIFAR100_STD, _load_cifar100),
    "imagenet100": DatasetInfo(100, IMAGENET_MEAN, IMAGENET_STD, _load_imagenet100,
                               data_type=TaskType.IMAGE_PATH),
    "imagenet1000": DatasetInfo(1000, IMAGENET_MEAN, IMAGENET_STD, _load_imagenet1000,
                                data_type=TaskType.IMAGE_PATH),
    "fashion_mnist": DatasetInfo(10, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                                 _load_fashion_mnist, greyscale=True),
    "digits": DatasetInfo(10, DIGITS_MEAN, DIGITS_STD, _load_digits, greyscale=True),
    "cifar10": DatasetInfo(10, CIFAR10_MEAN, CIFAR10_STD, _load_cifar10),
    "imagefolder": DatasetInfo(None, IMAGENET_MEAN, IMAGENET_STD, load_image_folder,
                               data_type=TaskType.IMAGE_PATH, any_size=True),
    "tinyimagenet200": DatasetInfo(200, IMAGENET_MEAN, IMAGENET_STD, load_tiny_imagenet,
                                   data_type=TaskType.IMAGE_PATH, any_size=True),
    "imagenet_r": DatasetInfo(200, IMAGENET_MEAN, IMAGENET_STD, load_imagenet_r, data_type=TaskType.IMAGE_PATH,
                              any_size=True, drawn_split=imagenet_r_split),
}


def dataset_info(name: str) -> DatasetInfo:
    """Row of `DATASETS` for `name`; unknown names are an error listing the valid ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(DATASETS)}") from None


def dataset_normalization(name: str, mean: tuple[float, ...] | None = None,
                          std: tuple[float, ...] | None = None) -> tuple[Triple, Triple]:
    """(mean, std) per RGB channel, in [0, 1] units, used by `Normalize`: the table's, or `mean` / `std`
    where given (--mean, --std; three values each, checked with the options)."""
    info = dataset_info(name)
    return (info.mean if mean is None else _triple(mean)), (info.std if std is None else _triple(std))


def _triple(values: tuple[float, ...]) -> Triple:
    red, green, blue = values
    return float(red), float(green), float(blue)


def drawn_split(name: str, data_path: str | Path) -> SplitFiles | None:
    """The train and test files (relative to `data_path`) of the split this code draws for `name`, or None
    for a dataset whose split is given by its files."""
    info = dataset_info(name)
    return None if info.drawn_split is None else info.drawn_split(Path(data_path).expanduser())


def build_dataset(
    name: str,
    data_path: str | Path,
    train: bool,
    *,
    train_per_class: int = 0,
    input_size: int = 32,
) -> InMemoryDataset:
    """Read the train or test split of `name` as a continuum dataset.

    `train_per_class > 0` keeps the first N training images of each class in
    file order (ignored for the test split, which is always complete).
    `input_size` only matters for greyscale datasets, converted once to RGB
    `input_size` x `input_size` images here.
    """
    info = dataset_info(name)
    x, y = info.load(Path(data_path).expanduser(), train)
    if train:
        keep = first_per_class(y, train_per_class)
        x, y = x[keep], y[keep]
    if info.greyscale:
        x = greyscale_to_rgb(x, input_size)
    return InMemoryDataset(x, y, data_type=info.data_type, train=train)
