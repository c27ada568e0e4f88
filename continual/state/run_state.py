"""The typed run state: everything one process needs to continue a run exactly where it stopped.

``RunState.state_dict`` gives the plain data written to
``checkpoints/state_<sequence>_rank<r>.pth`` (continual.state.saved_runs) and
``RunState.from_state_dict`` rebuilds the model, the teacher and the memory
from it, so the task loop carries no resume plumbing of its own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from continual.method.rehearsal import Memory
from continual.model.base import ContinualModel
from continual.model.build import grown_model
from continual.model.config import config_from_dict
from continual.report.records import EpochProgress, EpochRecord, TaskResult
from continual.state.saved_runs import Position, memory_from_plain, memory_to_plain


@dataclass
class FitState:
    """A phase in progress: the optimiser side, and for a stop inside an epoch, that epoch's random
    state (to replay its batches) and running sums."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any] | None
    sam: dict[str, Any] | None
    epoch_rng: dict[str, Any] | None = None
    progress: EpochProgress | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler, "sam": self.sam,
            "epoch_rng": self.epoch_rng,
            "progress": None if self.progress is None else dataclasses.asdict(self.progress),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FitState:
        progress = None if state["progress"] is None else EpochProgress(**state["progress"])
        return cls(state["optimizer"], state["scheduler"], state["scaler"], state["sam"], state["epoch_rng"],
                   progress)


@dataclass
class RunState:
    """Where the run stands (``position``) and all it has: model, teacher, memory, random state, the
    records so far, the phase timings of the current task and, inside a phase, its ``fit`` state."""

    position: Position
    model: ContinualModel
    teacher: ContinualModel | None
    memory: Memory
    rng: dict[str, Any]
    results: list[TaskResult]
    epochs: list[EpochRecord]
    timings: dict[str, float]
    fit: FitState | None = None

    def state_dict(self, *, sequence: int, world_size: int, config: dict[str, object]) -> dict[str, Any]:
        return {
            "sequence": sequence,
            "position": self.position.as_dict(),
            "world_size": world_size,
            "config": config,
            "model": self.model.state_dict(),
            "model_config": dataclasses.asdict(self.model.config),
            "nb_classes_per_task": list(self.model.nb_classes_per_task),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "memory": memory_to_plain(*self.memory.get()),
            "rng": self.rng,
            "rows": [result.to_row() for result in self.results],
            "epoch_rows": [record.to_row() for record in self.epochs],
            "timings": dict(self.timings),
            "fit": None if self.fit is None else self.fit.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device, gpsa_kernel: str) -> RunState:
        """The state read back; the model and teacher are rebuilt on ``device`` (building them draws
        random numbers: restore the random state afterwards)."""
        classes = state["nb_classes_per_task"]
        config = config_from_dict(state["model_config"], gpsa_kernel=gpsa_kernel)
        model = grown_model(config, classes, state["model"]).to(device)
        teacher = None
        if state["teacher"] is not None:
            teacher = grown_model(config, classes[:-1], state["teacher"]).to(device)
            teacher.freeze(["all"])
        memory = Memory()
        memory.load_state_dict(memory_from_plain(state["memory"]))
        return cls(
            position=Position(**state["position"]), model=model, teacher=teacher, memory=memory, rng=state["rng"],
            results=[TaskResult.from_row(row) for row in state["rows"]],
            epochs=[EpochRecord.from_row(row) for row in state["epoch_rows"]],
            timings=dict(state["timings"]),
            fit=None if state["fit"] is None else FitState.from_state_dict(state["fit"]),
        )
