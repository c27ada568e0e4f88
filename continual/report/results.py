"""The readable results of a run folder, kept up to date by the main process.

After every epoch: TensorBoard scalars. After every task: ``summary.json``,
the PNG plots and the task's TensorBoard scalars. All of them are derived from
the rows of ``log.jsonl`` and ``epochs.jsonl``, which stay the source of truth.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from continual.report.plots import write_plots
from continual.report.summary import run_summary, write_summary
from continual.report.tensorboard import ScalarLog


class RunResults:
    """``summary.json``, plots (``--no-plots``) and TensorBoard (``--no-tensorboard``) of one run folder."""

    def __init__(self, run_dir: Path, cfg: argparse.Namespace, nb_tasks: int, started: float) -> None:
        """``started``: ``time.perf_counter()`` when the run began, for its wall time."""
        self.run_dir = run_dir
        self.name = cfg.name
        self.options = list(cfg.options)
        self.nb_tasks = nb_tasks
        self.plots = cfg.plots
        self.scalars = ScalarLog(run_dir) if cfg.tensorboard else None
        self.started = started

    def resume_from(self, rows: list[dict], epoch_rows: list[dict]) -> None:
        """A resumed run starts with the rows saved so far: rebuild the scalars from them."""
        if self.scalars is not None:
            self.scalars.replay(rows, epoch_rows)

    def epoch_done(self, index: int, epoch_row: dict) -> None:
        if self.scalars is not None:
            self.scalars.epoch(index, epoch_row)

    def task_done(self, rows: list[dict], epoch_rows: list[dict]) -> dict:
        """Rewrite the summary and plots with the new task row; return the summary."""
        summary = self.write_summary(rows)
        if self.plots:
            write_plots(self.run_dir, rows, epoch_rows)
        if self.scalars is not None:
            self.scalars.task(rows[-1])
        return summary

    def write_summary(self, rows: list[dict]) -> dict:
        summary = run_summary(rows, name=self.name, options=self.options, nb_tasks=self.nb_tasks,
                              wall_seconds=time.perf_counter() - self.started)
        write_summary(self.run_dir, summary)
        return summary

    def close(self) -> None:
        if self.scalars is not None:
            self.scalars.close()
