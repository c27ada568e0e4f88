"""Progress bars of training epochs (tqdm): running loss terms, lr and throughput.

Shown only on the main process and only when both stdout and stderr are
terminals: a job whose output goes to a file or a pipe gets the plain
per-epoch lines alone (``--no-progress`` turns the bars off anyway). The bar
only reads the epoch's running sums, so it cannot change what is computed; it
reads them at most once a second, since each read waits for the device.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

from continual.report.records import EpochProgress

# Loss-term name in EpochProgress.sums -> short label in the bar.
BAR_TERMS = {"total": "loss", "kd": "kd", "div": "div"}
LOSS_REFRESH_SECONDS = 1.0


def bars_wanted(progress: bool, is_main: bool, streams: tuple[TextIO, ...] = (sys.stdout, sys.stderr)) -> bool:
    """Bars only for a person watching: main process, terminal output, not switched off (``--no-progress``)."""
    return is_main and progress and all(stream.isatty() for stream in streams)


def bar_postfix(progress: EpochProgress, lr: float) -> dict[str, str]:
    """Running means of the loss terms so far in the epoch, the lr and images per second."""
    steps = max(progress.steps, 1)
    postfix = {label: f"{progress.sums[name] / steps:.4f}" for name, label in BAR_TERMS.items()
               if name in progress.sums}
    postfix["lr"] = f"{lr:.2e}"
    postfix["img/s"] = f"{progress.images / progress.seconds:.0f}" if progress.seconds else "-"
    return postfix


class EpochBar:
    """One bar per epoch; ``update`` is called after each step with the epoch's progress and a function that
    reads its loss sums."""

    def __init__(self, description: str, nb_batches: int, lr: float, file: TextIO | None = None) -> None:
        self.lr = lr
        self.bar = tqdm(total=nb_batches, desc=description, leave=False, dynamic_ncols=True,
                        file=file if file is not None else sys.stderr)
        self._read_at: float | None = None

    def update(self, progress: EpochProgress, read_sums: Callable[[], dict[str, float]]) -> None:
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= LOSS_REFRESH_SECONDS or progress.steps == self.bar.total:
            self._read_at = now
            read = dataclasses.replace(progress, sums=read_sums())
            self.bar.set_postfix(bar_postfix(read, self.lr), refresh=False)  # shown by update's refresh
        self.bar.update(progress.steps - self.bar.n)  # steps counts the steps done before a resume too

    def close(self) -> None:
        self.bar.close()


@contextmanager
def epoch_bar(enabled: bool, description: str, nb_batches: int,
              lr: float) -> Iterator[Callable[[EpochProgress, Callable[[], dict[str, float]]], None] | None]:
    """The per-step callback of an epoch's bar (None when bars are off); the bar is closed on any exit."""
    if not enabled:
        yield None
        return
    bar = EpochBar(description, nb_batches, lr)
    try:
        yield bar.update
    finally:
        bar.close()
