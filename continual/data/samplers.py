"""Samplers and data loaders of the training phases.

The published recipe uses DeiT's repeated-augmentation sampler by default
(SPEC §6b): each drawn image appears 3 times (with different augmentations),
an epoch has about as many samples as the task set, rounded down to a multiple
of 256 / world size, and the shuffle is seeded by the epoch number alone.

Two defects of the published code are fixed here (SPEC §6): the epoch is set
on the sampler in every run, single-process included, so each epoch draws a
new shuffle; and a task with fewer than 256 samples (which the rounding would
empty), or fewer samples than a batch with ``drop_last``, still yields batches.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import cast

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

REPEATS = 3
ROUNDING = 256  # the published epoch length is rounded down to a multiple of this


class RepeatedAugSampler(Sampler[int]):
    """DeiT's repeated augmentation: every drawn index appears ``repeats`` times, ranks interleaved."""

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, repeats: int = REPEATS) -> None:
        self.dataset_size = len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank
        self.repeats = repeats
        self.epoch = 0
        per_replica = math.ceil(self.dataset_size * repeats / num_replicas)
        self.total_size = per_replica * num_replicas
        selected = self.dataset_size // ROUNDING * ROUNDING // num_replicas
        # Published: `selected` alone, which is 0 for a task under 256 samples (an empty epoch).
        self.num_selected = selected if selected > 0 else math.ceil(self.dataset_size / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.epoch)  # published: the epoch alone seeds the order
        order = torch.randperm(self.dataset_size, generator=generator).tolist()
        repeated = [index for index in order for _ in range(self.repeats)]
        repeated += repeated[: self.total_size - len(repeated)]
        return iter(repeated[self.rank : self.total_size : self.num_replicas][: self.num_selected])

    def __len__(self) -> int:
        return self.num_selected


class EpochShuffleSampler(Sampler[int]):
    """A plain shuffle drawn from (seed, epoch) alone, so that any epoch can be replayed on resume."""

    def __init__(self, dataset: Sized, seed: int) -> None:
        self.dataset_size = len(dataset)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.dataset_size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.dataset_size


def build_sampler(
    dataset: Dataset, *, shuffle: bool, repeated_aug: bool, world_size: int, rank: int, seed: int
) -> Sampler[int]:
    """The training sampler: repeated augmentation, a plain shuffle, or the dataset order."""
    if not shuffle:
        if world_size > 1:
            return DistributedSampler(dataset, world_size, rank, shuffle=False)
        return SequentialSampler(cast(Sized, dataset))
    if repeated_aug:
        return RepeatedAugSampler(cast(Sized, dataset), world_size, rank)
    if world_size > 1:
        return DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed)
    return EpochShuffleSampler(cast(Sized, dataset), seed)


def set_sampler_epoch(loader: DataLoader, epoch: int) -> None:
    """Give the sampler its epoch (new shuffle each epoch); a no-op for samplers without one."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    repeated_aug: bool,
    world_size: int,
    rank: int,
    seed: int,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    """Training loader with ``drop_last`` (as published), unless that would leave no batch."""
    if len(cast(Sized, dataset)) == 0:
        raise ValueError("cannot train on an empty dataset")
    sampler = build_sampler(
        dataset, shuffle=shuffle, repeated_aug=repeated_aug, world_size=world_size, rank=rank, seed=seed
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=len(cast(Sized, sampler)) >= batch_size,
        persistent_workers=False,
    )


def build_eval_loader(dataset: Dataset, *, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """Evaluation / feature-extraction loader: dataset order, every sample once."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory
    )
