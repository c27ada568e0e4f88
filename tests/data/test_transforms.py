"""Transforms: the published train recipe, the test transforms, augmentation of real images."""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import AugmentOp, RandAugment
from torchvision import transforms as T

from continual.data.datasets import build_dataset
from continual.data.transforms import build_test_transform, build_transform

PUBLISHED_AUG = dict(color_jitter=0.4, aa="rand-m9-mstd0.5-inc1", interpolation="bicubic",
                     reprob=0.0, remode="pixel", recount=1)


def test_small_train_transform_matches_published_recipe() -> None:
    steps = build_transform("fashion_mnist", 32, True, **PUBLISHED_AUG).transforms
    assert isinstance(steps[0], T.RandomCrop) and steps[0].padding == 4
    assert not any(isinstance(s, T.ColorJitter) for s in steps)  # timm drops it with RandAugment
    rand_augment = next(s for s in steps if isinstance(s, RandAugment))
    assert rand_augment.ops[0].kwargs["fillcolor"] == (124, 116, 104)  # ImageNet mean fill
    normalize = next(s for s in steps if isinstance(s, T.Normalize))
    assert list(normalize.mean) == [0.2860] * 3 and list(normalize.std) == [0.3530] * 3
    no_aa = build_transform("cifar", 32, True, **{**PUBLISHED_AUG, "aa": "none"}).transforms
    assert any(isinstance(s, T.ColorJitter) for s in no_aa)


def test_test_transforms() -> None:
    small = build_test_transform("cifar", 32).transforms
    assert [type(s) for s in small] == [T.ToTensor, T.Normalize]
    assert tuple(small[1].mean) == (0.5071, 0.4867, 0.4408)
    large = build_test_transform("imagenet100", 224).transforms
    assert [type(s) for s in large] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert large[0].size == 256 and large[0].interpolation == T.InterpolationMode.BICUBIC
    image = Image.new("RGB", (300, 260), (200, 10, 50))
    assert build_test_transform("imagenet1000", 224)(image).shape == (3, 224, 224)
    assert build_transform("imagenet100", 224, True, **PUBLISHED_AUG)(image).shape == (3, 224, 224)


def test_zero_bit_posterize_works_on_real_image(fashion_train) -> None:
    """`inc1` at magnitude 10 posterizes to 0 bits; Pillow 13 refuses it."""
    image = Image.fromarray(fashion_train.get_data()[0][0])
    posterize = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    assert np.asarray(posterize(image)).max() == 0


def test_train_augmentation_on_real_images(fashion_train) -> None:
    """300 real images through the full published train pipeline, each with its own seed."""
    digits_x = build_dataset("digits", "", True).get_data()[0]
    fashion_x = fashion_train.get_data()[0]
    transforms = {name: build_transform(name, 32, True, **{**PUBLISHED_AUG, "reprob": 0.25})
                  for name in ("fashion_mnist", "digits")}
    for seed in range(300):
        random.seed(seed)
        torch.manual_seed(seed)
        name, images = ("fashion_mnist", fashion_x) if seed % 2 else ("digits", digits_x)
        out = transforms[name](Image.fromarray(images[(seed * 37) % len(images)]))
        assert out.shape == (3, 32, 32) and torch.isfinite(out).all()
