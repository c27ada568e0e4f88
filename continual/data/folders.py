"""Datasets stored as image files in class folders: any folder (``imagefolder``), Tiny ImageNet and ImageNet-R.

Each loader returns ``(paths, labels)``: the file paths (read lazily, when a sample is asked for, by
``continual.data.images.read_rgb``) and int64 labels ``0..C-1``. Nothing is opened here, so an ImageNet-sized
folder costs one directory listing. Hidden files and folders (``.name``, e.g. macOS's ``._x.jpg``) and files
that are not images (by their suffix) are left out.

continuum's own classes are not used: ``ImageFolderDataset`` (torchvision's ``ImageFolder``) stores the paths
cut at 255 bytes, skips ``.gif``, lists the classes of ``val/`` apart from those of ``train/`` (a class missing
from ``val/`` would shift every later label) and fails on an empty class without naming its folder;
``TinyImageNet200`` only reads ``ROOT/tiny-imagenet-200`` through the ``*_boxes.txt`` files and numbers the
classes in ``wnids.txt`` order; it has no ImageNet-R.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from continual.data.errors import DatasetError
from continual.data.splits import stratified_test_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")  # lower-cased
FOLDER_LAYOUT = "train/CLASS/IMAGE and val/CLASS/IMAGE (or test/CLASS/IMAGE)"
EVALUATION_FOLDERS = ("val", "test")  # the first that exists is the test set of --data-set imagefolder
TINY_FOLDER = "tiny-imagenet-200"
TINY_LAYOUT = "wnids.txt, train/WNID/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt"
IMAGENET_R_FOLDER = "imagenet-r"
IMAGENET_R_TEST_FRACTION = 0.2
# ImageNet-R has no official split. Drawn with this fixed seed (not the run's --seed), every run of every seed
# tests on the same 20% of each class, as CODA-Prompt's fixed file lists and L2P's split made once on disk do.
IMAGENET_R_SPLIT_SEED = 0

Samples = tuple[np.ndarray, np.ndarray]
SplitFiles = tuple[list[str], list[str]]  # the train and test files, relative to --data-path


# ---------------------------------------------------------------------------
# Class folders
# ---------------------------------------------------------------------------

def class_folders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder``: the classes."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_images(folder: Path) -> list[str]:
    """Sorted paths of the image files under ``folder``, at any depth."""
    return sorted(str(p) for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p.relative_to(folder)) and p.is_file())


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def class_samples(split_dir: Path, classes: list[str], layout: str) -> Samples:
    """Paths and labels of ``split_dir/CLASS/...``, the label of a class being its index in ``classes``.

    Every class folder must exist and hold an image: an empty class would leave a task without images.
    """
    images = []
    for name in classes:
        folder = split_dir / name
        if not folder.is_dir():
            raise DatasetError(f"class folder {folder} not found: every class needs a folder there "
                               f"(expected layout {layout})")
        images.append(folder_images(folder))
    if not any(images):
        raise DatasetError(f"no image in the {len(classes)} class folders of {split_dir}: expected image files "
                           f"({', '.join(IMAGE_SUFFIXES)}, any case) in the layout {layout}")
    for name, found in zip(classes, images, strict=True):
        if not found:
            raise DatasetError(f"class folder {split_dir / name} holds no image (expected files ending in "
                               f"{', '.join(IMAGE_SUFFIXES)}, any case): add its images or remove the folder")
    labels = np.concatenate([np.full(len(found), label, dtype=np.int64) for label, found in enumerate(images)])
    return np.array([path for found in images for path in found]), labels


# ---------------------------------------------------------------------------
# imagefolder: ROOT/train/CLASS/* and ROOT/val/CLASS/* (or ROOT/test/CLASS/*)
# ---------------------------------------------------------------------------

def _training_classes(root: Path) -> tuple[Path, list[str]]:
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"image folder {train_dir} not found: --data-set imagefolder expects "
                           f"{root}/{FOLDER_LAYOUT}")
    classes = class_folders(train_dir)
    if not classes:
        raise DatasetError(f"no class folder in {train_dir}: --data-set imagefolder expects one folder per class, "
                           f"{root}/{FOLDER_LAYOUT}")
    return train_dir, classes


def _evaluation_folder(root: Path) -> Path:
    for name in EVALUATION_FOLDERS:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"test images not found: neither {root / 'val'} nor {root / 'test'} exists; "
                       f"--data-set imagefolder expects {root}/{FOLDER_LAYOUT}")


def load_image_folder(root: Path, train: bool) -> Samples:
    """Any image folder: the classes are the sorted folder names of ``train/``, in ``val/`` (or ``test/``) too."""
    train_dir, classes = _training_classes(root)
    if train:
        return class_samples(train_dir, classes, f"{root}/{FOLDER_LAYOUT}")
    eval_dir = _evaluation_folder(root)
    unknown = sorted(set(class_folders(eval_dir)) - set(classes))
    if unknown:
        raise DatasetError(f"class folder {eval_dir / unknown[0]} has no training folder in {train_dir} "
                           f"({len(unknown)} such class(es)): the classes are the {len(classes)} folders of "
                           f"{train_dir}; add its training images or remove it")
    return class_samples(eval_dir, classes, f"{root}/{FOLDER_LAYOUT}")


# ---------------------------------------------------------------------------
# Tiny ImageNet: the official layout, in ROOT/tiny-imagenet-200 or ROOT
# ---------------------------------------------------------------------------

def tiny_imagenet_folder(root: Path) -> Path:
    """``ROOT/tiny-imagenet-200`` or ``ROOT`` itself: the one holding ``wnids.txt``."""
    for folder in (root / TINY_FOLDER, root):
        if (folder / "wnids.txt").is_file():
            return folder
    raise DatasetError(f"Tiny ImageNet not found: neither {root / TINY_FOLDER / 'wnids.txt'} nor "
                       f"{root / 'wnids.txt'} exists; expected the official layout {TINY_LAYOUT}")


def tiny_imagenet_wnids(folder: Path) -> list[str]:
    """The WNIDs of ``wnids.txt``, sorted: label i is the i-th WNID in sorted order (as most continual
    learning code numbers them), not in the file's order."""
    path = folder / "wnids.txt"
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{path} must list distinct WNIDs, one a line; found {len(wnids)} lines, "
                           f"{len(set(wnids))} distinct")
    return sorted(wnids)


def load_tiny_imagenet(root: Path, train: bool) -> Samples:
    folder = tiny_imagenet_folder(root)
    wnids = tiny_imagenet_wnids(folder)
    if train:
        return class_samples(folder / "train", [f"{wnid}/images" for wnid in wnids], f"{folder}/{TINY_LAYOUT}")
    return _tiny_imagenet_validation(folder, wnids)


def _tiny_imagenet_validation(folder: Path, wnids: list[str]) -> Samples:
    """``val/images/FILE`` labelled by ``val/val_annotations.txt`` (FILE, WNID, box: tab-separated)."""
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DatasetError(f"Tiny ImageNet annotations {annotations} not found: expected the official layout "
                           f"{folder}/{TINY_LAYOUT}")
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    paths, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in label_of:
            raise DatasetError(f"{annotations} line {number}: expected FILE<tab>WNID<tab>x<tab>y<tab>w<tab>h with "
                               f"a WNID of {folder / 'wnids.txt'}, got {line[:80]!r}")
        paths.append(str(folder / "val" / "images" / fields[0]))
        labels.append(label_of[fields[1]])
    missing = [path for path in paths if not Path(path).is_file()]
    if not paths or missing:
        raise DatasetError(f"{annotations} lists {len(paths)} images, {len(missing)} of them missing "
                           f"{missing[:1]}: expected them in {folder / 'val' / 'images'}")
    return np.array(paths), np.array(labels, dtype=np.int64)


# ---------------------------------------------------------------------------
# ImageNet-R: one folder per class, ROOT/imagenet-r/CLASS/* or ROOT/CLASS/*, split drawn here
# ---------------------------------------------------------------------------

def imagenet_r_samples(root: Path) -> Samples:
    """Every image of ImageNet-R with its label (sorted class folders) and a mask of the test images."""
    folder = root / IMAGENET_R_FOLDER if (root / IMAGENET_R_FOLDER).is_dir() else root
    layout = f"{root}/{IMAGENET_R_FOLDER}/CLASS/IMAGE or {root}/CLASS/IMAGE"
    if not folder.is_dir():
        raise DatasetError(f"ImageNet-R folder {folder} not found: --data-set imagenet_r expects {layout}")
    classes = class_folders(folder)
    if {"train", "test"} <= set(classes) or {"train", "val"} <= set(classes):
        raise DatasetError(f"{folder} is already split into train/ and test/ (or val/): read it with --data-set "
                           f"imagefolder; --data-set imagenet_r draws its own split from {layout}")
    if not classes:
        raise DatasetError(f"no class folder in {folder}: --data-set imagenet_r expects {layout}")
    return class_samples(folder, classes, layout)


def imagenet_r_test_mask(labels: np.ndarray) -> np.ndarray:
    """20% of each class, drawn with the fixed split seed: the same on every run."""
    return stratified_test_mask(labels, IMAGENET_R_TEST_FRACTION, IMAGENET_R_SPLIT_SEED)


def load_imagenet_r(root: Path, train: bool) -> Samples:
    paths, labels = imagenet_r_samples(root)
    keep = ~imagenet_r_test_mask(labels) if train else imagenet_r_test_mask(labels)
    return paths[keep], labels[keep]


def imagenet_r_split(root: Path) -> SplitFiles:
    """The train and the test files of the drawn split, relative to ``root`` (what a run folder records)."""
    paths, labels = imagenet_r_samples(root)
    test = imagenet_r_test_mask(labels)
    relative = [Path(path).relative_to(root).as_posix() for path in paths]
    return ([name for name, held in zip(relative, test, strict=True) if not held],
            [name for name, held in zip(relative, test, strict=True) if held])
