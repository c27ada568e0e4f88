"""What every rehearsal method shares: the exemplar memory, its quota, its update under the three memory
protocols, and "no finetuning" by default.

A method subclasses ``RehearsalLearner`` and writes its own ``begin_task``,
``training_set`` and ``objective`` (continual.method.learner says what each is).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

import numpy as np
import torch
from continuum.tasks import TaskSet
from torch import Tensor
from torch.utils.data import Dataset

from continual.config.settings import MemorySettings, Settings
from continual.data.images import image_taskset
from continual.data.scenarios import Scenarios, memory_taskset, taskset_with_memory
from continual.method.learner import FeatureLoader, LearnerParts, Predictor
from continual.method.rehearsal import Memory, extract_features, feature_kind, per_class_quota, select_exemplars
from continual.model.base import ContinualModel
from continual.runtime.distributed import DistContext, all_reduce_sum, broadcast_object
from continual.vocabulary import TRAIN


def frozen_copy(model: ContinualModel) -> ContinualModel:
    """The teacher of a distilling method: a copy of the model as it is, every part frozen (and in eval mode)."""
    teacher = copy.deepcopy(model)
    teacher.freeze(["all"])
    return teacher


@dataclass
class RehearsalLearner:
    """A method that keeps exemplars of the classes it has seen (``memory_size`` in all)."""

    settings: Settings
    scenarios: Scenarios
    ctx: DistContext
    feature_loader: FeatureLoader
    rng: np.random.Generator
    memory: Memory = field(default_factory=Memory)

    @classmethod
    def from_parts(cls, parts: LearnerParts) -> Self:
        return cls(parts.settings, parts.scenarios, parts.ctx, parts.feature_loader, parts.rng, parts.memory)

    @property
    def memory_settings(self) -> MemorySettings:
        return self.settings.memory

    @property
    def nb_tasks(self) -> int:
        return len(self.scenarios.classes_per_task)

    @property
    def memory_mode(self) -> str:
        return self.memory_settings.mode(self.ctx.world_size)

    # ---------------------------------------------------------- the memory
    def with_memory(self, dataset: Dataset, times: int = 1) -> Dataset:
        """``dataset`` and the memory, each exemplar ``times`` times."""
        if not len(self.memory) or times == 0:
            return dataset
        x, y, t = self.memory.get()
        if times > 1:
            x, y, t = (np.concatenate([part] * times) for part in (x, y, t))
        return taskset_with_memory(dataset, x, y, t)

    def memory_quota(self, task_id: int) -> int | None:
        """Exemplars per class after ``task_id`` (None without memory)."""
        if self.memory_settings.memory_size == 0:
            return None
        return per_class_quota(self.memory_settings.budget(self.ctx.world_size), self.scenarios.classes_seen(task_id),
                               sum(self.scenarios.classes_per_task), self.memory_settings.fixed_memory)

    def update_memory(self, model: ContinualModel, task_id: int, quota: int) -> None:
        """Select ``quota`` exemplars of each new class and shrink the old classes to ``quota``.

        Global memory: process 0 selects and every process receives the same
        indices. Distributed and published memory: each process selects on its
        own augmented features, within its own budget.
        """
        if self.memory_mode == "global":
            chosen = self._herd_modes(model, task_id, quota) if self.ctx.is_main else None
            indices = broadcast_object(chosen)
        else:
            indices = self._herd_modes(model, task_id, quota)
        assert indices is not None  # process 0's selection, on every process
        self.memory.trim(quota, self.memory_settings.rehearsal_modes)
        x, y, t = self.scenarios.train[task_id].get_raw_samples()
        self.memory.add(x, y, t, indices)

    def _herd_modes(self, model: ContinualModel, task_id: int, quota: int) -> np.ndarray:
        """One selection of ``quota`` per class, or (``rehearsal_modes`` 2, as published) two selections of
        ``quota // 2``, each on its own pass of features: with the training augmentation they differ, with a
        deterministic selection on test-transform features the second repeats the first."""
        modes = self.memory_settings.rehearsal_modes
        return np.concatenate([self._herd(model, task_id, quota // modes, mode) for mode in range(modes)])

    def _herding_set(self, task_id: int) -> TaskSet:
        """The task's images with the transform features are extracted with (train by default, as published)."""
        taskset = self.scenarios.train[task_id]
        if not self.memory_settings.rehearsal_test_trsf:
            return taskset
        test_transform = self.scenarios.test[0].trsf
        return image_taskset(*taskset.get_raw_samples(), trsf=test_transform, data_type=taskset.data_type)

    def _herd(self, model: ContinualModel, task_id: int, quota: int, pass_index: int) -> np.ndarray:
        """Indices of the exemplars of the new classes, herded on this process's features of that pass."""
        taskset = self._herding_set(task_id)
        y = taskset.get_raw_samples()[1]
        kind = feature_kind(self.memory_settings.rehearsal)
        features = None
        if kind is not None:
            loader = self.feature_loader(taskset, task_id, pass_index)
            features, targets = extract_features(model, loader, kind, self.ctx.device)
            assert np.array_equal(targets, y), "feature extraction must keep the task set's order"
        return select_exemplars(y, features, quota, self.memory_settings.rehearsal, self.rng)

    def total_memory(self) -> int:
        """Exemplars held across processes (counted once in global mode)."""
        if self.memory_mode == "global":
            return len(self.memory)
        return int(all_reduce_sum(torch.tensor([len(self.memory)], device=self.ctx.device)).item())

    def memory_dataset(self) -> Dataset:
        """The memory with the training transform."""
        return memory_taskset(self.scenarios.train, *self.memory.get())

    def grow_after_teacher(self, model: ContinualModel, task_id: int) -> ContinualModel | None:
        """A distilling method's start of a task: the teacher, a frozen copy of the model before it grows (from
        the second task on), then the new classes; the training phase, nothing frozen. Returns the teacher."""
        teacher = None
        if task_id > 0:
            teacher = frozen_copy(model)
            model.expand(self.scenarios.classes_per_task[task_id])
        model.set_phase(TRAIN)
        model.freeze([])
        return teacher

    # ------------------------------------------------ defaults a method may replace
    def resume_task(self, model: ContinualModel, task_id: int) -> None:
        """Nothing to redo: override when ``begin_task`` freezes parts (requires_grad is not saved)."""

    def unused_parameters(self, model: ContinualModel) -> bool:
        return model.idle_parameters()

    def step_constraint(self, model: ContinualModel) -> Callable[[], None] | None:
        return None

    def end_training(self, model: ContinualModel, task_id: int) -> None:
        """Nothing after the training phase by default."""

    def finetuning_set(self, task_id: int) -> Dataset | None:
        return None

    def begin_finetuning(self, model: ContinualModel, resumed: bool = False) -> None:
        """No finetuning phase by default (``finetuning_set`` is None)."""

    def end_finetuning(self, model: ContinualModel) -> None:
        """No finetuning phase by default."""

    def finetuning_teacher(self, teacher: ContinualModel | None) -> ContinualModel | None:
        return None

    def prepare_evaluation(self, model: ContinualModel, task_id: int) -> None:
        """Nothing to compute: ``predict`` reads the model alone by default."""

    def predict(self, model: ContinualModel, images: Tensor) -> Tensor:
        """The model's own class scores."""
        return model(images).logits

    def other_predictions(self, model: ContinualModel) -> dict[str, Predictor]:
        """No other classifier by default."""
        return {}
