"""The run folder and its logs.

A run folder holds the resolved configuration, a JSON-lines log with one row
per task (``log.jsonl``), per-epoch statistics (``epochs.jsonl``), checkpoints
and the rehearsal memory. Its path follows the published layout
``<output_basedir>/<dataset>/<setting>/<date>_<name>``; a copy of the task log
goes to ``<log_dir>/<dataset>/<setting>/<date>_<name>.jsonl``.

Logs are rewritten whole through a temporary file and a rename, so a crash
never leaves a half-written line.
"""
from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from continual.report.records import EpochRecord, TaskResult
from continual.runtime.files import atomic_write


def run_name(data_set: str, log_category: str, name: str, now: datetime | None = None) -> Path:
    """``<dataset>/<setting>/<date>_<name>``, the relative path of a run's folder and log."""
    stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    return Path(data_set) / log_category / (f"{stamp}_{name}" if name else stamp)


def _json_safe(value: Any) -> Any:
    """NaN (e.g. old-class accuracy after the first task) becomes null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class JsonLinesLog:
    """Rows of a JSON-lines file, kept in memory and rewritten atomically on each append."""

    def __init__(self, *paths: Path) -> None:
        self.paths = paths
        self.rows: list[dict] = read_jsonl(paths[0]) if paths[0].exists() else []

    def append(self, row: dict) -> None:
        self.rows.append(_json_safe(row))
        text = "".join(json.dumps(r) + "\n" for r in self.rows)
        for path in self.paths:
            atomic_write(path, lambda tmp: tmp.write_text(text))

    def reset(self, rows: list[dict]) -> None:
        """Replace the rows (a resumed run takes those saved with its state); written on the next append."""
        self.rows = [_json_safe(row) for row in rows]

    def keep_before_task(self, task_id: int) -> None:
        """On resume at ``task_id``, forget rows of that task and later ones (they will be redone)."""
        self.rows = [r for r in self.rows if r.get("task", -1) < task_id]


def write_json(path: Path, data: dict) -> None:
    """One JSON document (e.g. ``summary.json``), NaN as null, written atomically."""
    text = json.dumps(_json_safe(data), indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise ValueError(f"log {path} is not valid JSON lines: {error}") from error


class RunLogs:
    """The two logs of a run folder, typed: ``log.jsonl`` (one TaskResult per task, mirrored under
    ``--log-dir``) and ``epochs.jsonl`` (one EpochRecord per epoch)."""

    def __init__(self, run_dir: Path, mirror: Path) -> None:
        self.tasks = JsonLinesLog(run_dir / "log.jsonl", mirror)
        self.epochs = JsonLinesLog(run_dir / "epochs.jsonl")

    def task_results(self) -> list[TaskResult]:
        return [TaskResult.from_row(row) for row in self.tasks.rows]

    def epoch_records(self) -> list[EpochRecord]:
        return [EpochRecord.from_row(row) for row in self.epochs.rows]

    def add_task(self, result: TaskResult) -> None:
        self.tasks.append(result.to_row())

    def add_epoch(self, record: EpochRecord) -> int:
        """Append an epoch; returns its index over the whole run."""
        self.epochs.append(record.to_row())
        return len(self.epochs.rows) - 1

    def reset(self, results: list[TaskResult], epochs: list[EpochRecord]) -> None:
        """A resumed run continues from the records saved with its state."""
        self.tasks.reset([result.to_row() for result in results])
        self.epochs.reset([record.to_row() for record in epochs])

    def keep_before_task(self, task_id: int) -> None:
        """On a restart at ``task_id``, forget that task and the later ones (they will be redone)."""
        self.tasks.keep_before_task(task_id)
        self.epochs.keep_before_task(task_id)
