"""The readable results of a run folder, kept up to date by the main process.

After every epoch: TensorBoard scalars. After every task: ``summary.json``,
the PNG plots and the task's TensorBoard scalars. All of them are derived from
the records of ``log.jsonl`` and ``epochs.jsonl``, which stay the source of truth.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from continual.report.plots import write_plots
from continual.report.records import EpochRecord, TaskResult
from continual.report.summary import run_summary, write_summary
from continual.report.tensorboard import ScalarLog


class ReportOptions(Protocol):
    """What the reports read of a run's settings (continual.config.settings.RunSettings has it)."""

    @property
    def name(self) -> str: ...

    @property
    def options(self) -> Sequence[str]: ...

    @property
    def plots(self) -> bool: ...

    @property
    def tensorboard(self) -> bool: ...


class RunResults:
    """``summary.json``, plots (``--no-plots``) and TensorBoard (``--no-tensorboard``) of one run folder."""

    def __init__(self, run_dir: Path, settings: ReportOptions, nb_tasks: int, started: float) -> None:
        """``started``: ``time.perf_counter()`` when the run began, for its wall time."""
        self.run_dir = run_dir
        self.name = settings.name
        self.options = list(settings.options)
        self.nb_tasks = nb_tasks
        self.plots = settings.plots
        self.scalars = ScalarLog(run_dir) if settings.tensorboard else None
        self.started = started

    def resume_from(self, results: list[TaskResult], epochs: list[EpochRecord]) -> None:
        """A resumed run starts with the records saved so far: rebuild the scalars from them."""
        if self.scalars is not None:
            self.scalars.replay(results, epochs)

    def epoch_done(self, index: int, record: EpochRecord) -> None:
        if self.scalars is not None:
            self.scalars.epoch(index, record)

    def task_done(self, results: list[TaskResult], epochs: list[EpochRecord]) -> dict:
        """Rewrite the summary and plots with the new task; return the summary."""
        summary = self.write_summary(results)
        if self.plots:
            write_plots(self.run_dir, results, epochs)
        if self.scalars is not None:
            self.scalars.task(results[-1])
        return summary

    def write_summary(self, results: list[TaskResult]) -> dict:
        summary = run_summary(results, name=self.name, options=self.options, nb_tasks=self.nb_tasks,
                              wall_seconds=time.perf_counter() - self.started)
        write_summary(self.run_dir, summary)
        return summary

    def close(self) -> None:
        if self.scalars is not None:
            self.scalars.close()
