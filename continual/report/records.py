"""The typed records of a run: one per finished task, one per epoch, and an epoch's running sums.

``log.jsonl`` holds one ``TaskResult`` per line and ``epochs.jsonl`` one
``EpochRecord`` per line; ``to_row`` gives the JSON layout (field order
included) and ``from_row`` reads it back. The summary, the printed table,
the plots, TensorBoard and the multi-order summary all read these records.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EvalResult:
    """The accuracies (%) of a model on the test images of every class seen after ``task``."""

    task: int
    classes_seen: int
    acc1: float
    acc5: float
    acc_per_task: list[float]
    acc_old: float | None  # undefined (NaN, null in JSON) after the first task
    acc_new: float
    acc_task_incremental: float
    acc_task_prediction: float

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TaskResult(EvalResult):
    """One line of ``log.jsonl``: the accuracies after a task and what the run had then."""

    avg_acc: float
    forgetting: float
    backward_transfer: float
    params_total: int
    params_trainable: int
    params_without_head_div: int
    memory_size: int  # exemplars on this process
    memory_per_class: dict[Any, int]  # class -> exemplars (string keys once read back from JSON)
    seconds: dict[str, float]  # per phase: train, memory, finetune, eval
    eval_images: int
    world_size: int
    memory_mode: str
    memory_total: int  # exemplars over all processes (counted once in global mode)
    memory_fingerprints: list[str]
    # top-1 of the method's other classifiers (iCaRL: its head, "head"); absent from the rows of older runs
    acc1_other: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TaskResult:
        """The record of a log row; a field added since (one with a default) may be missing from an older row."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row or not _has_default(f)})


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


@dataclass(frozen=True)
class EvalRecord(EvalResult):
    """What ``--eval`` prints for a saved checkpoint."""

    eval_images: int


@dataclass
class EpochProgress:
    """Running sums of an epoch; saved with a mid-epoch checkpoint so that the epoch's means stay exact."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0

    def add(self, losses: dict[str, float], images: int) -> None:
        """One optimiser step's loss terms and batch size."""
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1
        self.images += images


@dataclass(frozen=True)
class EpochRecord:
    """One line of ``epochs.jsonl``: an epoch's mean loss terms, learning rate and timing."""

    task: int
    phase: str
    epoch: int
    lr: float
    losses: dict[str, float]  # written inline, between lr and images_per_s
    images_per_s: float
    seconds: float
    data_seconds: float

    @property
    def data_wait_fraction(self) -> float:
        return self.data_seconds / self.seconds

    def to_row(self) -> dict[str, Any]:
        return {"task": self.task, "phase": self.phase, "epoch": self.epoch, "lr": self.lr, **self.losses,
                "images_per_s": self.images_per_s, "seconds": self.seconds, "data_seconds": self.data_seconds,
                "data_wait_fraction": self.data_wait_fraction}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EpochRecord:
        fixed = ("task", "phase", "epoch", "lr", "images_per_s", "seconds", "data_seconds", "data_wait_fraction")
        losses = {key: value for key, value in row.items() if key not in fixed}
        return cls(row["task"], row["phase"], row["epoch"], row["lr"], losses, row["images_per_s"],
                   row["seconds"], row["data_seconds"])
