"""A training loader read epoch after epoch through one phase, its worker processes kept alive in between.

A DataLoader without ``persistent_workers`` starts its workers again at every
epoch (a fork each, and a wait for their first batches); with it, the same
workers serve every epoch, and ``close`` ends them when the phase ends (torch
would keep them until the loader is garbage collected, which a traceback held
after a stop can delay, and a run of many tasks would pile them up).

Nothing a run computes depends on it: each sample is read and augmented from
its own seed (``SampleSeeds``), whichever worker reads it, and the run's torch
stream advances by one draw per epoch either way (the base seed torch draws for
each new iterator, drawn here for a reused one).
"""
from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from continual.data.samplers import set_sampler_epoch


def draw_base_seed(loader: DataLoader) -> None:
    """The draw torch makes when it creates an iterator of ``loader``: one int64 (the workers' base seed) from
    ``loader.generator``, the run's torch stream when None."""
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)


class EpochLoader:
    """``loader``'s batches of one epoch at a time (``epoch``), its persistent workers ended by ``close``
    (or on leaving a ``with`` block)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self._started: Iterator[Any] | None = None  # the persistent workers' iterator, once they run

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def persistent(self) -> bool:
        return bool(self.loader.persistent_workers) and self.loader.num_workers > 0

    def epoch(self, epoch: int) -> Iterator[Any]:
        """The batches of ``epoch``: the sampler's order and seeds of that epoch (set before the workers are
        handed their first indices). Breaking off early is fine: the next epoch discards what was prefetched."""
        set_sampler_epoch(self.loader, epoch)
        return self._read()

    def _read(self) -> Iterator[Any]:
        """Started at the first batch asked for, as iterating a DataLoader is: the time the workers take to
        start (every epoch without persistent workers) counts as time waiting for data."""
        if self._started is not None:
            draw_base_seed(self.loader)  # torch reuses the iterator and draws nothing: as a new one would
        batches = iter(self.loader)
        if self.persistent:
            self._started = batches
        yield from batches

    def close(self) -> None:
        """End the persistent workers now; a later ``epoch`` would start new ones."""
        started, self._started = self._started, None
        if isinstance(started, _MultiProcessingDataLoaderIter):
            started._shutdown_workers()  # torch's own shutdown (there is no public call for it)
            self.loader._iterator = None  # so that torch does not reuse the ended workers

    def __enter__(self) -> EpochLoader:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
