"""Train and test image transforms (docs/differences.md).

Train: timm's `create_transform` (DeiT/timm ImageNet recipe: random resized
crop, horizontal flip, RandAugment or colour jitter, normalisation, optional
random erasing). For small images (input_size <= 32) its first transform, the
random resized crop, is replaced by `RandomCrop(input_size, padding=4)`, as the
published code does for CIFAR-100.

Test: `ToTensor` + `Normalize` for small images; for ImageNet-size images
`Resize(int(input_size / 0.875), bicubic)` + `CenterCrop(input_size)` first.

Datasets whose images have any size (the folder datasets, `any_size` in the
dataset table) always take the ImageNet path, whatever the input size: the CIFAR
crop would cut an `input_size` window out of a larger image instead of resizing it.

The normalisation is the dataset's (its row of the dataset table), or
`--mean` / `--std` when given.

Published behaviours kept on purpose (docs/differences.md), both inherited from timm:

- colour jitter is *not* applied when an auto-augment policy such as
  RandAugment is set: timm drops it (`color_jitter` only acts with `aa` off);
- RandAugment fills the pixels uncovered by rotations, shears and translations
  with the ImageNet mean colour (124, 116, 104): the published code called
  `create_transform` without a mean, so timm used its ImageNet default. We do
  the same (`RANDAUGMENT_FILL_MEAN`) and only then swap timm's `Normalize` for
  the dataset's own normalisation.

Pillow 13 rejects the 0-bit posterize that `rand-m9-mstd0.5-inc1` requests
when the sampled magnitude reaches 10; requirements.txt pins
Pillow < 13 and tests/data/test_transforms.py runs the whole pipeline on real images.
"""
from __future__ import annotations

from collections.abc import Callable

from timm.data import create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms

from continual.data.datasets import dataset_info, dataset_normalization

SMALL_IMAGE_MAX_SIZE = 32  # at or below this size: CIFAR-style crop and no resize at test
SMALL_IMAGE_PADDING = 4
EVAL_CROP_PCT = 0.875  # ImageNet evaluation: resize to size / 0.875, centre crop size
RANDAUGMENT_FILL_MEAN = IMAGENET_DEFAULT_MEAN
RANDAUGMENT_FILL_STD = IMAGENET_DEFAULT_STD
NO_AUTO_AUGMENT = frozenset({"", "none"})


def auto_augment_policy(aa: str | None) -> str | None:
    """timm auto-augment string, or None for 'none', '' and None (no auto-augment)."""
    if aa is None or aa.strip().lower() in NO_AUTO_AUGMENT:
        return None
    return aa


Channels = tuple[float, ...] | None  # --mean / --std: three values, or None for the dataset's


def _is_small(dataset_name: str, input_size: int) -> bool:
    """The CIFAR path (random crop with padding, no resize at test) for small images of a fixed size."""
    return input_size <= SMALL_IMAGE_MAX_SIZE and not dataset_info(dataset_name).any_size


def _normalize(dataset_name: str, mean: Channels, std: Channels) -> transforms.Normalize:
    channel_mean, channel_std = dataset_normalization(dataset_name, mean, std)
    return transforms.Normalize(mean=channel_mean, std=channel_std)


def build_train_transform(
    dataset_name: str,
    input_size: int,
    *,
    color_jitter: float,
    aa: str | None,
    interpolation: str,
    reprob: float,
    remode: str,
    recount: int,
    mean: Channels = None,
    std: Channels = None,
) -> transforms.Compose:
    """Training augmentation: timm's recipe, CIFAR crop for small images, dataset normalisation.

    timm is given the ImageNet mean so RandAugment's fill colour is the
    published one; its `Normalize` is then replaced by the dataset's.
    """
    timm_transform = create_transform(
        input_size,
        is_training=True,
        color_jitter=color_jitter,
        auto_augment=auto_augment_policy(aa),
        interpolation=interpolation,
        re_prob=reprob,
        re_mode=remode,
        re_count=recount,
        mean=RANDAUGMENT_FILL_MEAN,
        std=RANDAUGMENT_FILL_STD,
    )
    steps = list(timm_transform.transforms)
    if _is_small(dataset_name, input_size):
        steps[0] = _small_image_crop(steps[0], input_size)
    return transforms.Compose(_with_dataset_normalization(steps, _normalize(dataset_name, mean, std)))


def _small_image_crop(first: Callable, input_size: int) -> transforms.RandomCrop:
    """RandomCrop(size, padding=4) in place of timm's random resized crop."""
    if not isinstance(first, RandomResizedCropAndInterpolation):
        raise RuntimeError(f"timm's train transform starts with {first!r}, expected its "
                           "random resized crop: the timm version is not supported")
    return transforms.RandomCrop(input_size, padding=SMALL_IMAGE_PADDING)


def _with_dataset_normalization(steps: list[Callable], normalize: transforms.Normalize) -> list[Callable]:
    """Replace the single `Normalize` of timm's pipeline by the dataset's."""
    positions = [i for i, step in enumerate(steps) if isinstance(step, transforms.Normalize)]
    if len(positions) != 1:
        raise RuntimeError(f"expected one Normalize in timm's train transform, found "
                           f"{len(positions)}: the timm version is not supported")
    steps = list(steps)
    steps[positions[0]] = normalize
    return steps


def build_test_transform(dataset_name: str, input_size: int, mean: Channels = None,
                         std: Channels = None) -> transforms.Compose:
    """Deterministic evaluation transform (no augmentation)."""
    steps: list[Callable] = []
    if not _is_small(dataset_name, input_size):
        resize = int(input_size / EVAL_CROP_PCT)
        steps += [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(input_size),
        ]
    steps += [transforms.ToTensor(), _normalize(dataset_name, mean, std)]
    return transforms.Compose(steps)


def build_transform(
    dataset_name: str,
    input_size: int,
    train: bool,
    *,
    color_jitter: float,
    aa: str | None,
    interpolation: str,
    reprob: float,
    remode: str,
    recount: int,
    mean: Channels = None,
    std: Channels = None,
) -> transforms.Compose:
    """Train or test transform of a dataset; the augmentation options only act in training."""
    if not train:
        return build_test_transform(dataset_name, input_size, mean, std)
    return build_train_transform(
        dataset_name, input_size, color_jitter=color_jitter, aa=aa,
        interpolation=interpolation, reprob=reprob, remode=remode, recount=recount, mean=mean, std=std,
    )
