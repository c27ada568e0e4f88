"""Datasets of image files in class folders (imagefolder, Tiny ImageNet, ImageNet-R), written in their real
layouts: labels, class order, lazily read paths, images of any mode and size after the transforms, the drawn
ImageNet-R split, and the one-line errors of malformed folders."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from continuum.tasks import TaskType
from support import FOLDER_IMAGES, write_class_folder, write_image, write_image_folder

from continual.config.errors import ConfigError
from continual.data.datasets import DatasetError, build_dataset, drawn_split
from continual.data.folders import IMAGENET_R_SPLIT_SEED, imagenet_r_split
from continual.data.scenarios import build_scenario
from continual.data.transforms import build_test_transform, build_transform

CLASSES = ("cat", "ant", "dog", "bee")  # sorted: ant, bee, cat, dog
AUGMENTATION = dict(color_jitter=0.4, aa="rand-m9-mstd0.5-inc1", interpolation="bicubic", reprob=0.25,
                    remode="pixel", recount=1)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = write_image_folder(tmp_path / "mine", CLASSES, train_per_class=5, test_per_class=2)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # ignored, as are hidden files
    write_image(root / "train" / "cat" / "._0_rgb.jpg", "RGB", (4, 4), 1)
    return root


# ---------------------------------------------------------------------------
# imagefolder
# ---------------------------------------------------------------------------

def test_imagefolder_labels_are_the_sorted_class_folders_and_x_holds_paths(image_folder: Path) -> None:
    dataset = build_dataset("imagefolder", image_folder, True)
    x, y, _ = dataset.get_data()
    assert dataset.data_type == TaskType.IMAGE_PATH and x.dtype.kind == "U"  # paths, no pixels
    assert len(x) == 20 and np.bincount(y).tolist() == [5, 5, 5, 5]
    assert [Path(path).parent.name for path in x[::5]] == ["ant", "bee", "cat", "dog"]
    assert all(Path(path).parts[-3] == "train" and Path(path).is_file() for path in x)
    x_test, y_test, _ = build_dataset("imagefolder", image_folder, False).get_data()
    assert np.bincount(y_test).tolist() == [2, 2, 2, 2] and {Path(p).parts[-3] for p in x_test} == {"val"}


def test_imagefolder_reads_test_when_there_is_no_val(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, ("a", "b"), train_per_class=1, test_per_class=3, test_split="test")
    x, y, _ = build_dataset("imagefolder", root, False).get_data()
    assert y.tolist() == [0, 0, 0, 1, 1, 1] and {Path(p).parts[-3] for p in x} == {"test"}


@pytest.mark.parametrize("input_size", [16, 48])
def test_images_of_every_mode_and_size_come_out_rgb_at_the_input_size(image_folder: Path, input_size: int) -> None:
    sizes = {size for _, _, size, _ in FOLDER_IMAGES}
    assert len(sizes) == len(FOLDER_IMAGES)  # every image has another size
    for train in (True, False):
        dataset = build_dataset("imagefolder", image_folder, train)
        transform = (build_transform("imagefolder", input_size, True, **AUGMENTATION) if train
                     else build_test_transform("imagefolder", input_size))
        scenario = build_scenario(dataset, initial_increment=2, increment=2, class_order=None, transform=transform)
        taskset = scenario[1]
        for index in range(len(taskset)):
            image, label, _ = taskset[index]
            assert image.shape == (3, input_size, input_size) and int(label) in (2, 3)


def test_imagefolder_test_images_are_normalised_with_imagenet_statistics(tmp_path: Path) -> None:
    root = tmp_path / "grey"
    for split in ("train", "val"):
        for name in ("a", "b"):
            write_image(root / split / name / "x.png", "L", (20, 30), 124)  # 124 / 255 = ImageNet's red mean
    scenario = build_scenario(build_dataset("imagefolder", root, False), initial_increment=2, increment=2,
                              class_order=None, transform=build_test_transform("imagefolder", 16))
    image = scenario[0][0][0]
    assert abs(float(image[0].mean())) < 0.01 and float(image[1].mean()) > 0.05  # red centred, green not
    custom = build_test_transform("imagefolder", 16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert float(custom.transforms[-1].mean[0]) == 0.5 and custom.transforms[-1].std == (0.25, 0.25, 0.25)


def test_imagefolder_bad_folders_are_errors_naming_the_folder(image_folder: Path, tmp_path: Path) -> None:
    shutil.rmtree(image_folder / "val" / "dog")
    with pytest.raises(DatasetError, match=f"class folder {image_folder / 'val' / 'dog'} not found"):
        build_dataset("imagefolder", image_folder, False)
    write_class_folder(image_folder / "val" / "dog", 1)
    write_class_folder(image_folder / "val" / "eel", 1)
    with pytest.raises(DatasetError, match=f"class folder {image_folder / 'val' / 'eel'} has no training folder"):
        build_dataset("imagefolder", image_folder, False)
    (image_folder / "train" / "fox").mkdir()
    with pytest.raises(DatasetError, match=f"class folder {image_folder / 'train' / 'fox'} holds no image"):
        build_dataset("imagefolder", image_folder, True)
    empty = tmp_path / "empty"
    for name in ("a", "b"):
        (empty / "train" / name).mkdir(parents=True)
    with pytest.raises(DatasetError, match=f"no image in the 2 class folders of {empty / 'train'}"):
        build_dataset("imagefolder", empty, True)
    with pytest.raises(DatasetError, match=rf"neither {empty / 'val'} nor {empty / 'test'} exists.*train/CLASS"):
        build_dataset("imagefolder", empty, False)
    with pytest.raises(DatasetError, match=f"image folder {tmp_path / 'nowhere' / 'train'} not found"):
        build_dataset("imagefolder", tmp_path / "nowhere", True)


# ---------------------------------------------------------------------------
# Tiny ImageNet
# ---------------------------------------------------------------------------

WNIDS = ("n03", "n01", "n02")  # wnids.txt order; the labels follow the sorted order


def write_tiny_imagenet(folder: Path) -> Path:
    """The official layout with 2 training and 1 validation 64x64 JPEG per class."""
    (folder / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    lines = []
    for i, wnid in enumerate(WNIDS):
        for j in range(2):
            write_image(folder / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", "RGB", (64, 64), 10 * i)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
        write_image(folder / "val" / "images" / f"val_{i}.JPEG", "RGB", (64, 64), 10 * i)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("inside", [True, False])
def test_tiny_imagenet_official_layout_with_sorted_wnids(tmp_path: Path, inside: bool) -> None:
    write_tiny_imagenet(tmp_path / "tiny-imagenet-200" if inside else tmp_path)
    x, y, _ = build_dataset("tinyimagenet200", tmp_path, True).get_data()
    assert y.tolist() == [0, 0, 1, 1, 2, 2] and [Path(p).parts[-3] for p in x[::2]] == ["n01", "n02", "n03"]
    x_test, y_test, _ = build_dataset("tinyimagenet200", tmp_path, False).get_data()
    assert [Path(p).name for p in x_test] == ["val_0.JPEG", "val_1.JPEG", "val_2.JPEG"]
    assert y_test.tolist() == [2, 0, 1]  # val_0 is n03, the third WNID in sorted order
    scenario = build_scenario(build_dataset("tinyimagenet200", tmp_path, False), initial_increment=0, increment=1,
                              class_order=None, transform=build_test_transform("tinyimagenet200", 32))
    assert scenario[0][0][0].shape == (3, 32, 32)  # 64x64 resized and cropped, as for ImageNet


def test_tiny_imagenet_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="tiny-imagenet-200/wnids.txt nor"):
        build_dataset("tinyimagenet200", tmp_path, True)
    folder = write_tiny_imagenet(tmp_path)
    annotations = folder / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_9.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match=f"{annotations} line 4: expected FILE"):
        build_dataset("tinyimagenet200", tmp_path, False)
    shutil.rmtree(folder / "train" / "n02" / "images")
    with pytest.raises(DatasetError, match="n02/images not found"):
        build_dataset("tinyimagenet200", tmp_path, True)


# ---------------------------------------------------------------------------
# ImageNet-R
# ---------------------------------------------------------------------------

def write_imagenet_r(folder: Path, per_class: tuple[int, ...] = (10, 5, 7)) -> Path:
    for index, count in enumerate(per_class):
        write_class_folder(folder / f"n0{index}", count, first=index)
    return folder


@pytest.mark.parametrize("inside", [True, False])
def test_imagenet_r_split_is_80_20_per_class_and_the_same_every_time(tmp_path: Path, inside: bool) -> None:
    write_imagenet_r(tmp_path / "imagenet-r" if inside else tmp_path)
    x_train, y_train, _ = build_dataset("imagenet_r", tmp_path, True).get_data()
    x_test, y_test, _ = build_dataset("imagenet_r", tmp_path, False).get_data()
    assert np.bincount(y_train).tolist() == [8, 4, 6] and np.bincount(y_test).tolist() == [2, 1, 1]
    assert not set(x_train) & set(x_test) and x_train.dtype.kind == "U"
    train, test = imagenet_r_split(tmp_path)
    assert sorted(train + test) == sorted(str(Path(p).relative_to(tmp_path)) for p in [*x_train, *x_test])
    assert drawn_split("imagenet_r", tmp_path) == (train, test) and drawn_split("imagefolder", tmp_path) is None
    assert build_dataset("imagenet_r", tmp_path, False).get_data()[0].tolist() == x_test.tolist()
    assert IMAGENET_R_SPLIT_SEED == 0  # fixed, documented: not the run's --seed


def test_imagenet_r_already_split_or_empty_folders_are_errors(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imagenet-r", ("a", "b"), 1, 1, test_split="test")
    with pytest.raises(DatasetError, match="already split into train/ and test/.*--data-set imagefolder"):
        build_dataset("imagenet_r", tmp_path, True)
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetError, match=f"no class folder in {tmp_path / 'other'}"):
        build_dataset("imagenet_r", tmp_path / "other", True)


def test_a_class_order_longer_than_the_folder_names_the_option_and_the_classes(image_folder: Path) -> None:
    dataset = build_dataset("imagefolder", image_folder, True)
    with pytest.raises(ConfigError, match=r"option 'class_order' must be a permutation of the dataset's 4 classes "
                                          r"0..3: .*unknown \[4, 5\] \(length 6\)"):
        build_scenario(dataset, initial_increment=2, increment=2, class_order=[5, 4, 3, 2, 1, 0],
                       transform=build_test_transform("imagefolder", 16))
