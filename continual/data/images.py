"""Reading the image files of path datasets (``TaskType.IMAGE_PATH``) as RGB, whatever their mode.

continuum's path task set reads a file with ``Image.open(path).convert("RGB")``, which is right for
RGB, greyscale (L), RGBA, LA, CMYK, 1-bit and palette images, but clips 16-bit and 32-bit greyscale
(``I;16``, ``I``) and float (``F``) images to white instead of scaling them, and lets a decoding
failure escape as a bare PIL error without the file's name. ``read_rgb`` gives PIL's own conversion
for every mode it gets right (so ImageNet's pixels are unchanged) and raises an ``ImageReadError``
naming the file. ``DecodingPathTaskSet`` is continuum's path task set reading through it; every task
set of a path dataset is made one (``decoding``, ``image_taskset``).
"""
from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
from continuum.tasks import BaseTaskSet, TaskSet, TaskType
from continuum.tasks.image_path_task_set import PathTaskSet
from PIL import Image

from continual.data.errors import ImageReadError

# Greyscale with more than 8 bits: 16-bit PNG and TIFF files open as I;16 (older Pillow: I).
WIDE_INTEGER_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
SIXTEEN_TO_EIGHT_BITS = 257.0  # 65535 / 255: full 16-bit white is 8-bit white
# What PIL raises on a truncated, corrupt or unreadable file (its plugins use several types).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
                  Image.DecompressionBombError)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of an opened image.

    16-bit (and 32-bit integer) greyscale is scaled to 8 bits, float greyscale is read as [0, 1]:
    PIL's conversion clips both. A palette image with a transparent colour goes through RGBA (PIL warns
    otherwise; the pixels are the same). Every other mode: PIL's ``convert("RGB")``, alpha dropped.
    """
    if image.mode in WIDE_INTEGER_MODES:
        return _grey_to_rgb(np.asarray(image, dtype=np.float64) / SIXTEEN_TO_EIGHT_BITS)
    if image.mode == "F":
        return _grey_to_rgb(np.asarray(image, dtype=np.float64) * 255.0)
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def _grey_to_rgb(levels: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def read_rgb(path: str) -> Image.Image:
    """The image file ``path`` as RGB; an ``ImageReadError`` naming it if it cannot be read or decoded."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except _DECODE_ERRORS as error:
        raise ImageReadError.of(str(path), error) from error


class DecodingPathTaskSet(PathTaskSet):
    """continuum's task set of image paths, reading each file with ``read_rgb`` when it is asked for."""

    def get_sample(self, index: int) -> Image.Image:
        return read_rgb(str(self._x[index]))


def decoding(taskset: BaseTaskSet) -> BaseTaskSet:
    """``taskset`` itself, or for continuum's path task set the same samples read by ``read_rgb``."""
    if type(taskset) is not PathTaskSet:
        return taskset
    x, y, t = taskset.get_raw_samples()
    return DecodingPathTaskSet(x, y, t, trsf=taskset.trsf, target_trsf=taskset.target_trsf,
                               bounding_boxes=taskset.bounding_boxes)


def image_taskset(x: np.ndarray, y: np.ndarray, t: np.ndarray, *, trsf: Callable | None,
                  data_type: TaskType) -> BaseTaskSet:
    """continuum's ``TaskSet(x, y, t, trsf=..., data_type=...)``, reading image paths with ``read_rgb``."""
    return decoding(TaskSet(x, y, t, trsf=trsf, data_type=data_type))
