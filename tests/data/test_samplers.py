"""Samplers and train loaders: repeated augmentation (one and two processes), the epoch length, shuffling,
and the augmentation seed of every sample (the same with any number of workers)."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from continual.data.samplers import (
    RepeatedAugSampler,
    SampleSeeds,
    SeededSamples,
    build_feature_loader,
    build_train_loader,
)


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


def epoch_order(size: int, epoch: int) -> list[int]:
    generator = torch.Generator()
    generator.manual_seed(epoch)
    return torch.randperm(size, generator=generator).tolist()


@pytest.mark.parametrize("size", [1000, 1001, 100])
def test_repeated_aug_with_two_replicas_splits_the_published_stream_between_the_ranks(size: int) -> None:
    """Published (DeiT's RASampler, world size 2): the epoch's order, each index 3 times, padded to an even
    length; rank r takes every other element from r; both take (size // 256 * 256) / 2. Under 256 images
    (published: an empty epoch) each takes ceil(size / 2)."""
    ranks = [RepeatedAugSampler(range(size), num_replicas=2, rank=rank) for rank in (0, 1)]
    for epoch in (0, 3):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        shares = [list(sampler) for sampler in ranks]
        per_rank = size // 256 * 256 // 2 or -(-size // 2)
        assert [len(share) for share in shares] == [len(sampler) for sampler in ranks] == [per_rank, per_rank]
        stream = [index for index in epoch_order(size, epoch) for _ in range(3)]
        stream += stream[: len(stream) % 2]
        interleaved = [index for pair in zip(*shares, strict=True) for index in pair]
        assert interleaved == stream[: 2 * per_rank]
        # Every drawn image is seen 3 times over the two ranks (the last one drawn may be cut), on both.
        counts = Counter(interleaved)
        assert all(count == 3 for index, count in counts.items() if index != interleaved[-1])
        assert set(shares[0]) - {interleaved[-1]} == set(shares[1]) - {interleaved[-1]}


def test_repeated_aug_with_two_replicas_is_seeded_by_the_epoch_alone() -> None:
    first = RepeatedAugSampler(range(600), num_replicas=2, rank=1)
    torch.manual_seed(123)  # the global stream plays no part
    second = RepeatedAugSampler(range(600), num_replicas=2, rank=1)
    first.set_epoch(2)
    second.set_epoch(2)
    assert list(first) == list(second)
    second.set_epoch(3)
    assert list(first) != list(second)


def test_every_sample_gets_a_seed_of_its_rank_epoch_and_position_only() -> None:
    sampler = RepeatedAugSampler(range(600), num_replicas=2, rank=0)
    seeded = SampleSeeds(sampler, seed=7, rank=0)
    seeded.set_epoch(1)
    assert sampler.epoch == 1  # passed on
    pairs = list(seeded)
    assert [index for index, _ in pairs] == list(sampler)
    assert len({seed for _, seed in pairs}) == len(pairs)  # the copies of one image: different seeds
    again = SampleSeeds(RepeatedAugSampler(range(600), num_replicas=2, rank=0), seed=7, rank=0)
    again.set_epoch(1)
    assert list(again) == pairs
    other_rank = SampleSeeds(RepeatedAugSampler(range(600), num_replicas=2, rank=0), seed=7, rank=1)
    other_rank.set_epoch(1)
    other_epoch = SampleSeeds(RepeatedAugSampler(range(600), num_replicas=2, rank=0), seed=7, rank=0)
    other_epoch.set_epoch(2)
    assert {seed for _, seed in other_rank}.isdisjoint(seed for _, seed in pairs)
    assert [seed for _, seed in other_epoch] != [seed for _, seed in pairs]


class RandomViews(Dataset):
    """Each read draws from the three streams augmentations use (torch, NumPy, Python)."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        view = torch.rand(3) + float(np.random.rand()) + random.random()
        return view, index


@pytest.mark.parametrize("repeated_aug", [False, True])
def test_augmentations_are_the_same_with_and_without_workers(repeated_aug: bool) -> None:
    def batches(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = build_train_loader(RandomViews(), batch_size=8, shuffle=True, repeated_aug=repeated_aug,
                                    world_size=1, rank=0, seed=3, num_workers=workers, pin_memory=False)
        out = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            out += list(loader)
        return out

    def run_with(workers: int) -> tuple[list, tuple]:
        """The batches, then the next draw of each of the main process's streams."""
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        return batches(workers), (torch.rand(1), np.random.rand(), random.random())

    main, after_main = run_with(0)
    workers, after_workers = run_with(2)
    assert len(main) == len(workers) == 16
    for (views, indices), (worker_views, worker_indices) in zip(main, workers, strict=True):
        assert torch.equal(indices, worker_indices) and torch.equal(views, worker_views)
    # Without workers the augmentations leave the run's own streams as workers do (the DataLoader itself
    # draws a base seed from torch's in both cases).
    assert after_main == after_workers


def test_seeded_samples_read_one_sample_as_a_batch_does() -> None:
    samples = SeededSamples(RandomViews())
    batch = samples.__getitems__([(5, 11), (6, 12)])
    assert torch.equal(samples[(5, 11)][0], batch[0][0]) and torch.equal(samples[(6, 12)][0], batch[1][0])
    assert not torch.equal(samples[(5, 11)][0], samples[(5, 12)][0])


def test_herding_passes_read_in_order_with_their_own_augmentations_with_any_number_of_workers() -> None:
    def views(workers: int, task_id: int, pass_index: int) -> torch.Tensor:
        loader = build_feature_loader(RandomViews(), batch_size=16, num_workers=workers, pin_memory=False, seed=3,
                                      rank=0, task_id=task_id, pass_index=pass_index)
        batches = list(loader)
        assert torch.equal(torch.cat([indices for _, indices in batches]), torch.arange(64))  # dataset order
        return torch.cat([views for views, _ in batches])

    first = views(0, task_id=1, pass_index=0)
    assert torch.equal(views(2, task_id=1, pass_index=0), first)
    assert not torch.equal(views(0, task_id=1, pass_index=1), first)  # rehearsal_modes 2: a second draw
    assert not torch.equal(views(0, task_id=2, pass_index=0), first)
