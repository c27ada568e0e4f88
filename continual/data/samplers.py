"""Samplers and data loaders of the training phases.

The published recipe uses DeiT's repeated-augmentation sampler by default
(docs/differences.md): each drawn image appears 3 times (with different augmentations),
an epoch has about as many samples as the task set, rounded down to a multiple
of 256 / world size, and the shuffle is seeded by the epoch number alone.

Two defects of the published code are fixed here (docs/differences.md): the epoch is set
on the sampler in every run, single-process included, so each epoch draws a
new shuffle; and a task with fewer than 256 samples (which the rounding would
empty), or fewer samples than a batch with ``drop_last``, still yields batches.

Each training sample is augmented from its own seed, drawn from (seed, rank,
epoch, position in the epoch) alone (:class:`SampleSeeds`): the augmentations
are the same with any number of loader workers, and a replayed epoch repeats
them.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler, get_worker_info
from torch.utils.data.distributed import DistributedSampler

from continual.runtime.seeding import seed_streams, streams_kept

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


TRAINING_STREAM = 0  # the seeds of the training loaders; herding passes take their own (feature_stream)


def feature_stream(pass_index: int) -> int:
    return 1 + pass_index


class SampleSeeds(Sampler[tuple[int, int]]):
    """The indices of ``sampler``, each with the seed of its augmentation, drawn from (``seed``, ``rank``,
    ``stream``, epoch, position in the epoch) alone: not from a worker's random stream, which depends on how many
    workers there are. The three copies of an image under repeated augmentation get three seeds."""

    def __init__(self, sampler: Sampler[int], seed: int, rank: int, stream: int = TRAINING_STREAM) -> None:
        self.sampler = sampler
        self.seed = seed
        self.rank = rank
        self.stream = stream
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seeds = np.random.SeedSequence([self.seed, self.rank, self.stream, self.epoch]).generate_state(len(self))
        return zip(self.sampler, (int(seed) for seed in seeds), strict=True)

    def __len__(self) -> int:
        return len(cast(Sized, self.sampler))


class SeededSamples(Dataset):
    """``dataset[index]``, read and augmented with the random streams seeded by the sample's seed
    (``SampleSeeds``). In the main process (no workers) the run's own streams are put back afterwards,
    once per batch (saving NumPy's state costs about 0.1 ms)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        """A batch (the DataLoader's fetcher calls this when it exists)."""
        with streams_kept(get_worker_info() is None):
            return [self._sample(index, seed) for index, seed in keys]

    def _sample(self, index: int, seed: int) -> Any:
        seed_streams(seed)
        return self.dataset[index]


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
    persistent_workers: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader:
    """Training loader with ``drop_last`` (as published), unless that would leave no batch.
    ``persistent_workers``: the workers serve every epoch (read it through ``EpochLoader``); it and
    ``prefetch_factor`` (batches each worker prepares ahead) apply only with workers."""
    if len(cast(Sized, dataset)) == 0:
        raise ValueError("cannot train on an empty dataset")
    sampler = build_sampler(
        dataset, shuffle=shuffle, repeated_aug=repeated_aug, world_size=world_size, rank=rank, seed=seed
    )
    return DataLoader(
        SeededSamples(dataset),
        batch_size=batch_size,
        sampler=SampleSeeds(sampler, seed, rank),
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=len(cast(Sized, sampler)) >= batch_size,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=prefetch_of(num_workers, prefetch_factor),
    )


def prefetch_of(num_workers: int, prefetch_factor: int) -> int | None:
    """The DataLoader's ``prefetch_factor``: torch refuses one without workers (the main process reads each
    batch when it is asked for)."""
    return prefetch_factor if num_workers > 0 else None


def build_feature_loader(dataset: Dataset, *, batch_size: int, num_workers: int, pin_memory: bool, seed: int,
                         rank: int, task_id: int, pass_index: int, prefetch_factor: int = 2) -> DataLoader:
    """Herding's loader: dataset order, every sample once, augmented (herding reads the training transform,
    as published) from the seeds of (task, pass): the same with any number of workers, and on resume."""
    seeds = SampleSeeds(SequentialSampler(cast(Sized, dataset)), seed, rank, feature_stream(pass_index))
    seeds.set_epoch(task_id)
    return DataLoader(SeededSamples(dataset), batch_size=batch_size, sampler=seeds, num_workers=num_workers,
                      pin_memory=pin_memory, prefetch_factor=prefetch_of(num_workers, prefetch_factor))


def build_eval_loader(dataset: Dataset, *, batch_size: int, num_workers: int, pin_memory: bool,
                      prefetch_factor: int = 2) -> DataLoader:
    """Evaluation / feature-extraction loader: dataset order, every sample once."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=prefetch_of(num_workers, prefetch_factor),
    )
