"""Image files read as RGB whatever their mode, and an undecodable file named in one error line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from continuum.tasks import TaskType
from continuum.tasks.image_path_task_set import PathTaskSet
from PIL import Image
from support import FOLDER_IMAGES, corrupt, write_class_folder, write_image

from continual.data.errors import ImageReadError
from continual.data.images import DecodingPathTaskSet, decoding, image_taskset, read_rgb, to_rgb


def test_every_mode_reads_back_as_its_grey_level_in_rgb(tmp_path: Path) -> None:
    paths = write_class_folder(tmp_path, len(FOLDER_IMAGES))
    for path, (_, mode, size, grey) in zip(paths, FOLDER_IMAGES, strict=True):
        with Image.open(path) as opened:
            assert opened.mode == mode  # each mode is really on disk
        image = read_rgb(str(path))
        assert image.mode == "RGB" and image.size == size, path.name
        assert np.array_equal(np.asarray(image), np.full((size[1], size[0], 3), grey, dtype=np.uint8)), path.name
    assert {"RGB", "L", "RGBA", "P", "CMYK", "I;16"} <= {mode for _, mode, _, _ in FOLDER_IMAGES}


def test_wide_and_float_greyscale_are_scaled_where_pil_clips(tmp_path: Path) -> None:
    path = write_image(tmp_path / "sixteen.png", "I;16", (4, 4), 100)  # 25700 of 65535
    with Image.open(path) as opened:
        assert np.asarray(opened.convert("RGB"))[0, 0].tolist() == [255, 255, 255]  # PIL alone: white
    continuum_set = PathTaskSet(np.array([str(path)]), np.zeros(1), np.zeros(1), trsf=None, target_trsf=None)
    assert np.asarray(continuum_set.get_sample(0))[0, 0].tolist() == [255, 255, 255]  # so continuum too
    assert np.asarray(read_rgb(str(path)))[0, 0].tolist() == [100, 100, 100]
    white = Image.fromarray(np.full((2, 2), 65535, dtype=np.int32))  # I: 16-bit PNGs of older Pillow
    assert np.asarray(to_rgb(white))[0, 0].tolist() == [255, 255, 255]
    half = Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32))  # F: read as [0, 1]
    assert np.asarray(to_rgb(half))[0, 0].tolist() == [128, 128, 128]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_an_undecodable_file_is_one_line_naming_it(tmp_path: Path, damage: str) -> None:
    path = write_image(tmp_path / "photo.jpg", "RGB", (40, 40), 10)
    if damage == "garbage":
        corrupt(path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.unlink()
    with pytest.raises(ImageReadError) as raised:
        read_rgb(str(path))
    assert raised.value.line.startswith(f"cannot decode image {path}: ") and "\n" not in raised.value.line


def test_continuum_path_task_sets_become_decoding_ones(tmp_path: Path) -> None:
    path = write_image(tmp_path / "sixteen.png", "I;16", (5, 3), 40)
    x, y, t = np.array([str(path)]), np.array([1]), np.array([0])
    plain = PathTaskSet(x, y, t, trsf=None, target_trsf=None)
    decoded = decoding(plain)
    assert isinstance(decoded, DecodingPathTaskSet) and decoding(decoded) is decoded
    assert decoded.get_raw_samples()[0].tolist() == [str(path)]  # still paths: read when asked for
    image, label, _ = decoded[0]
    assert image.shape == (3, 3, 5) and float(image.max()) == pytest.approx(40 / 255) and int(label) == 1
    arrays = image_taskset(np.zeros((1, 4, 4, 3), np.uint8), y, t, trsf=None, data_type=TaskType.IMAGE_ARRAY)
    assert not isinstance(arrays, PathTaskSet)
    assert isinstance(image_taskset(x, y, t, trsf=None, data_type=TaskType.IMAGE_PATH), DecodingPathTaskSet)
