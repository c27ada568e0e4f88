"""Samplers and train loaders: repeated augmentation, the epoch length, shuffling."""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils.data import TensorDataset

from continual.data.samplers import RepeatedAugSampler, build_train_loader


def test_repeated_aug_sampler_matches_the_published_epoch_length_and_repeats() -> None:
    sampler = RepeatedAugSampler(range(1000))
    indices = list(sampler)
    assert len(indices) == len(sampler) == 768  # 1000 // 256 * 256
    assert all(count == 3 for count in list(Counter(indices).values())[:-1])  # 256 images x 3 views
    assert indices[0] == indices[1] == indices[2]


def test_repeated_aug_sampler_shuffles_each_epoch_with_the_epoch_as_seed() -> None:
    sampler = RepeatedAugSampler(range(600))
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert first != second and list(sampler) == first


def test_small_task_never_gives_an_empty_epoch() -> None:
    """Published: a task under 256 images gives 0 samples per epoch (and a division by zero)."""
    sampler = RepeatedAugSampler(range(100))
    assert len(list(sampler)) == len(sampler) == 100
    loader = build_train_loader(TensorDataset(torch.zeros(10, 1)), batch_size=32, shuffle=True, repeated_aug=True,
                                world_size=1, rank=0, seed=0, num_workers=0, pin_memory=False)
    assert sum(len(batch[0]) for batch in loader) == 10


def test_plain_shuffle_sees_every_sample_each_epoch() -> None:
    loader = build_train_loader(TensorDataset(torch.arange(300)), batch_size=32, shuffle=True, repeated_aug=False,
                                world_size=1, rank=0, seed=0, num_workers=0, pin_memory=False)
    seen = torch.cat([batch[0] for batch in loader])
    assert len(seen) == 288 and len(set(seen.tolist())) == 288  # drop_last, no duplicates
