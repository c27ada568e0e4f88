"""DyTox as a continual learner: the hooks the task loop calls at each phase of a task.

    begin_task       the teacher (a frozen copy, when distilling), the new task token and head, freeze_task
    training_set     the task's images and the memory
    memory_quota / update_memory   herd the new classes' exemplars, shrink the old classes to the new quota
    finetuning_set   the balanced memory, or None when there is no finetuning after this task
    begin/end_finetuning   the divergence head per head_div_mode, freeze_ft

The learner owns the rehearsal memory; it never orchestrates phases, saves or logs.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from continuum.tasks import TaskSet
from torch.utils.data import DataLoader, Dataset

from continual.config.settings import LearnerSettings, LossSettings, MemorySettings
from continual.data.images import image_taskset
from continual.data.scenarios import Scenarios, memory_taskset, taskset_with_memory
from continual.method.rehearsal import Memory, extract_features, feature_kind, per_class_quota, select_exemplars
from continual.model.build import ContinualModel, grown_model
from continual.runtime.distributed import DistContext, all_reduce_sum, broadcast_object
from continual.vocabulary import FINETUNE, TRAIN


def begin_task(model: ContinualModel, learner: LearnerSettings, distills: bool, task_id: int,
               nb_new_classes: int) -> ContinualModel | None:
    """Start a task: the teacher, a frozen copy taken before the expansion (when
    distilling), then the new token and heads (the baseline: the classifier's new rows), and
    ``freeze_task``; with ``retrain_scratch`` every weight is then drawn afresh. Returns the teacher."""
    teacher = None
    if task_id > 0:
        if distills:
            teacher = copy.deepcopy(model)
            teacher.freeze(["all"])
        model.expand(nb_new_classes)
    model.set_phase(TRAIN)
    if learner.retrain_scratch:
        redraw_weights(model)
    model.freeze(learner.freeze_task if task_id > 0 else [])
    return teacher


def redraw_weights(model: ContinualModel) -> None:
    """Every parameter and buffer of ``model`` drawn as for a new model of the same shape (joint training
    from scratch). The published ``--retrain-scratch`` calls an ``init_params`` no model defines."""
    fresh = grown_model(model.config, list(model.nb_classes_per_task)).state_dict()
    if "_extra_state" in fresh:  # the baseline's frozen parts are its own, not the fresh model's
        fresh["_extra_state"] = model.get_extra_state()
    model.load_state_dict(fresh)


def begin_finetuning(model: ContinualModel, learner: LearnerSettings) -> None:
    """Balanced finetuning: the divergence head per ``head_div_mode`` and ``freeze_ft``,
    which (as published) makes everything it does not name trainable again, old heads included."""
    model.set_phase(FINETUNE)
    model.freeze(learner.freeze_ft)


@dataclass
class DyToxLearner:
    """The method's side of a run: its settings, the scenarios it draws from and its memory."""

    learner: LearnerSettings
    loss: LossSettings
    memory_settings: MemorySettings
    scenarios: Scenarios
    ctx: DistContext
    feature_loader: Callable[[Dataset, int, int], DataLoader]  # (images, task, pass) -> herding's loader
    rng: np.random.Generator
    memory: Memory = field(default_factory=Memory)

    @property
    def nb_tasks(self) -> int:
        return len(self.scenarios.classes_per_task)

    @property
    def memory_mode(self) -> str:
        return self.memory_settings.mode(self.ctx.world_size)

    def begin_task(self, model: ContinualModel, task_id: int) -> ContinualModel | None:
        nb_new = self.scenarios.classes_per_task[task_id]
        return begin_task(model, self.learner, self.loss.distills, task_id, nb_new)

    def resume_task(self, model: ContinualModel, task_id: int) -> None:
        """A task resumed from a run state: the model comes expanded, but requires_grad is not saved."""
        model.freeze(self.learner.freeze_task if task_id > 0 else [])

    def training_set(self, task_id: int) -> Dataset:
        """The task's images and the memory (``oversample_memory`` times; ``sep_memory``: not at all); with
        ``only_ft``, after the first task, the memory alone, as published; with ``retrain_scratch``, all the
        training images of the tasks seen so far (the held-out ones of ``validation`` included, as published)."""
        if self.learner.retrain_scratch:
            return self.scenarios.train[: task_id + 1]
        dataset = self.scenarios.training_set(task_id)
        if task_id == 0 or not len(self.memory):
            return dataset
        if self.learner.only_ft:
            return self.memory_dataset()
        if self.memory_settings.sep_memory:
            return dataset
        times = self.learner.oversample_memory
        if times == 0:
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

    def finetuning_set(self, task_id: int) -> Dataset | None:
        """The memory, for balanced finetuning after this task; None when there is none."""
        single_task = self.nb_tasks == 1
        if self.learner.finetuning != "balanced" or not len(self.memory) or not (task_id > 0 or single_task):
            return None
        if self.learner.oversample_memory_ft == 1:
            return self.memory_dataset()
        x, y, t = self.memory.get()  # each exemplar of an old task repeated, then the new task's
        old, new = np.where(t < task_id)[0], np.where(t >= task_id)[0]
        order = np.concatenate([np.repeat(old, self.learner.oversample_memory_ft), new])
        return memory_taskset(self.scenarios.train, x[order], y[order], t[order])

    def memory_dataset(self) -> Dataset:
        """The memory with the training transform."""
        return memory_taskset(self.scenarios.train, *self.memory.get())

    def begin_finetuning(self, model: ContinualModel) -> None:
        if self.learner.finetuning_resetclf:
            model.reset_heads()
        begin_finetuning(model, self.learner)

    def end_finetuning(self, model: ContinualModel) -> None:
        model.set_phase(TRAIN)

    def finetuning_teacher(self, teacher: ContinualModel | None) -> ContinualModel | None:
        return teacher if self.learner.finetuning_teacher else None
