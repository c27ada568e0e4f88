"""The contract between the task loop and a continual-learning method.

The loop (continual.train.loop) runs every task through the same phases and asks
the method, through these hooks, what to do in each:

    begin_task / resume_task     the teacher, the model's growth, what is frozen
    training_set                 the images of the training phase (the task's, the memory's)
    objective                    the loss of a batch, from the model's and the teacher's outputs
    step_constraint, end_training  a constraint after each optimiser step, a change after the training phase
    memory_quota / update_memory the exemplars kept after the task
    finetuning_set, begin_finetuning, end_finetuning, finetuning_teacher
                                 an optional second phase on the memory
    prepare_evaluation           what predict needs, computed on every process before an evaluation
                                 (iCaRL: the class means of the exemplars, summed across processes)
    predict                      the class scores evaluation ranks (a method may classify otherwise
                                 than by its head)
    other_predictions            further classifiers whose top-1 is logged beside predict's (iCaRL: its head)

A method is a class that has these hooks, built by ``from_parts`` and named in
continual.method.registry. ``RehearsalLearner`` (continual.method.replay) gives
the memory hooks and "no finetuning" to a method that keeps exemplars.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from continual.config.settings import Settings
from continual.data.scenarios import Scenarios
from continual.method.losses import LossTerms
from continual.method.rehearsal import Memory
from continual.model.base import ContinualModel, ModelOutput
from continual.runtime.distributed import DistContext

FeatureLoader = Callable[[Dataset, int, int], DataLoader]  # (images, task, pass) -> loader of herding's features
Predictor = Callable[[ContinualModel, Tensor], Tensor]  # (model, images) -> class scores (B, classes seen)


@dataclass(frozen=True)
class TeacherOutput:
    """The frozen teacher's outputs on a batch: its class scores and, when the objective asks for them, the
    encoder's feature maps."""

    logits: Tensor
    encoder_maps: tuple[Tensor, ...] = ()


class Objective(Protocol):
    """The loss of one batch. ``targets`` are class indices (B,) or MixUp's soft targets (B, C);
    ``first_pass`` is False on SAM's second pass over the same step."""

    def wants_teacher_maps(self, first_pass: bool) -> bool:
        """Whether the teacher's encoder maps are needed (computing them costs memory)."""
        ...

    def __call__(self, out: ModelOutput, teacher: TeacherOutput | None, targets: Tensor,
                 first_pass: bool = True) -> LossTerms: ...


@dataclass(frozen=True)
class LearnerParts:
    """What a method is built from: the run's settings and data, this process, its loaders and generator,
    and the memory it starts with (empty, or restored by a resume)."""

    settings: Settings
    scenarios: Scenarios
    ctx: DistContext
    feature_loader: FeatureLoader
    rng: np.random.Generator
    memory: Memory


class Learner(Protocol):
    """A class-incremental method, as the task loop sees it (see the module docstring)."""

    @property
    def memory(self) -> Memory: ...

    @property
    def memory_mode(self) -> str:
        """"global", "distributed" or "published" (continual.config.settings.MemorySettings.mode)."""
        ...

    def begin_task(self, model: ContinualModel, task_id: int) -> ContinualModel | None:
        """Prepare ``model`` for task ``task_id`` (grow it, freeze parts); return the teacher, or None."""
        ...

    def resume_task(self, model: ContinualModel, task_id: int) -> None:
        """A task resumed from a run state: the model comes grown, but what is frozen is not saved."""
        ...

    def training_set(self, task_id: int) -> Dataset: ...

    def objective(self, model: ContinualModel, phase: str) -> Objective:
        """The loss of the batches of ``phase`` ("train" or "finetune") of the current task."""
        ...

    def step_constraint(self, model: ContinualModel) -> Callable[[], None] | None:
        """A function run after each optimiser step of this phase (a constraint on the weights), or None."""
        ...

    def end_training(self, model: ContinualModel, task_id: int) -> None:
        """After the training phase of ``task_id`` (before the memory update): a change to the weights."""
        ...

    def unused_parameters(self, model: ContinualModel) -> bool:
        """Whether some trainable parameters take no part in the loss of this phase (DDP must then look for
        them at every step, which costs time)."""
        ...

    def memory_quota(self, task_id: int) -> int | None:
        """Exemplars per class after ``task_id``; None keeps no memory."""
        ...

    def update_memory(self, model: ContinualModel, task_id: int, quota: int) -> None: ...

    def memory_dataset(self) -> Dataset:
        """The memory with the training transform (SAM's memory batches)."""
        ...

    def total_memory(self) -> int:
        """Exemplars held across processes."""
        ...

    def finetuning_set(self, task_id: int) -> Dataset | None:
        """The images of a finetuning phase after this task, or None for no finetuning."""
        ...

    def begin_finetuning(self, model: ContinualModel, resumed: bool = False) -> None:
        """Prepare the finetuning phase; ``resumed``: it continues from a run state saved inside it, so what is
        done once when it starts (e.g. drawing the heads again) is already done."""
        ...

    def end_finetuning(self, model: ContinualModel) -> None: ...

    def finetuning_teacher(self, teacher: ContinualModel | None) -> ContinualModel | None: ...

    def prepare_evaluation(self, model: ContinualModel, task_id: int) -> None:
        """Before each evaluation on the classes seen up to ``task_id``, on every process at the same point (it
        may run collectives): compute what ``predict`` needs."""
        ...

    def predict(self, model: ContinualModel, images: Tensor) -> Tensor:
        """Scores (B, classes seen) whose arg-max is the prediction evaluation counts."""
        ...

    def other_predictions(self, model: ContinualModel) -> dict[str, Predictor]:
        """Other classifiers by name, each evaluated after a task (one more pass over the test images each) and
        its top-1 logged as ``acc1_other[name]``; usually none."""
        ...
