"""A phase's training loader with persistent workers: the batches and the run's random streams of a loader
without workers, over two epochs and after a resume inside an epoch; the same worker processes in every
epoch, gone when the phase ends."""
from __future__ import annotations

import os
import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, get_worker_info

from continual.data.epoch_loader import EpochLoader
from continual.data.samplers import build_train_loader


class RandomViews(Dataset):
    """Each read draws from the three streams augmentations use (torch, NumPy, Python)."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.rand(3) + float(np.random.rand()) + random.random(), index


def phase_loader(dataset: Dataset, workers: int, rank: int = 0, persistent: bool = True) -> EpochLoader:
    """Repeated augmentation over two processes (this one is ``rank``), batches of 8."""
    return EpochLoader(build_train_loader(dataset, batch_size=8, shuffle=True, repeated_aug=True, world_size=2,
                                          rank=rank, seed=3, num_workers=workers, pin_memory=False,
                                          persistent_workers=persistent))


def seeded_run(read: Callable[[], list]) -> tuple[list, tuple]:
    """``read()``'s batches from seeded streams, then the next draw of each of the main process's streams."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    return read(), (torch.rand(1).item(), np.random.rand(), random.random())


def as_lists(batches: list) -> list[tuple[list, list]]:
    return [(views.tolist(), indices.tolist()) for views, indices in batches]


@pytest.mark.parametrize("rank", [0, 1])
def test_persistent_workers_give_the_batches_and_streams_of_no_workers_also_resumed_inside_an_epoch(
        rank: int) -> None:
    def two_epochs(workers: int, skip: int = 0) -> list:
        """Epochs 0 and 1; ``skip``: a phase resumed at that step of epoch 0 by a new loader."""
        with phase_loader(RandomViews(), workers, rank) as loader:
            first = loader.epoch(0)
            for _ in range(skip):
                next(first)
            return list(first) + list(loader.epoch(1))

    without, streams = seeded_run(lambda: two_epochs(0))
    assert len(without) == 8  # ceil(64 / 2) = 32 samples of this rank per epoch, in batches of 8
    persistent, persistent_streams = seeded_run(lambda: two_epochs(2))
    assert as_lists(persistent) == as_lists(without)  # images, targets and order
    assert persistent_streams == streams  # one base seed drawn per epoch, as by a new iterator
    resumed, resumed_streams = seeded_run(lambda: two_epochs(2, skip=3))
    assert as_lists(resumed) == as_lists(without[3:]) and resumed_streams == streams


class WorkerPids(Dataset):
    """Each sample is the process id of the worker that read it."""

    def __len__(self) -> int:
        return 64  # 32 samples of rank 0 per epoch: 4 batches, 2 for each worker

    def __getitem__(self, index: int) -> int:
        assert get_worker_info() is not None
        return os.getpid()


def pids_of(batches: object) -> set[int]:
    return {pid for batch in batches for pid in batch.tolist()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_workers_serve_every_epoch_of_the_phase_and_end_with_it() -> None:
    with phase_loader(WorkerPids(), 2) as loader:
        first = pids_of(loader.epoch(0))
        next(loader.epoch(1))  # an epoch broken off (--batches-per-epoch): the next one starts cleanly
        last = loader.epoch(2)  # held, as the training loop holds its epoch's batches
        assert pids_of(last) == first and len(first) == 2 and os.getpid() not in first
        assert all(alive(pid) for pid in first)
    assert not any(alive(pid) for pid in first)  # ended, not left to the garbage collector
    restarting = phase_loader(WorkerPids(), 2, persistent=False)  # --no-persistent-workers
    assert pids_of(restarting.epoch(0)).isdisjoint(pids_of(restarting.epoch(1)))


def test_a_phase_stopped_by_an_error_ends_its_workers() -> None:
    with pytest.raises(KeyboardInterrupt), phase_loader(WorkerPids(), 2) as loader:
        batches = loader.epoch(0)
        workers = pids_of([next(batches), next(batches)])
        raise KeyboardInterrupt  # a stop, a pre-emption, a bad loss: the loader's `with` ends the workers
    assert len(workers) == 2 and not any(alive(pid) for pid in workers)
