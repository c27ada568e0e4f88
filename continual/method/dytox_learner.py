"""DyTox as a continual learner: the hooks the task loop calls at each phase of a task.

    begin_task       the teacher (a frozen copy, when distilling), the new task token and head, freeze_task
    training_set     the task's images and the memory
    objective        classification, distillation, the divergence head, POD (continual.method.dytox_objective)
    finetuning_set   the balanced memory, or None when there is no finetuning after this task
    begin/end_finetuning   the divergence head per head_div_mode, freeze_ft

The memory hooks are every rehearsal method's (continual.method.replay). The same learner trains the
baseline of the paper's ablation (``dytox: false``): the model differs, not the method.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from continual.config.settings import LearnerSettings
from continual.data.scenarios import memory_taskset
from continual.method.dytox_objective import BatchLoss, batch_loss_of
from continual.method.replay import RehearsalLearner, frozen_copy
from continual.model.base import ContinualModel
from continual.model.build import grown_model
from continual.vocabulary import FINETUNE, TRAIN


def begin_task(model: ContinualModel, learner: LearnerSettings, distills: bool, task_id: int,
               nb_new_classes: int) -> ContinualModel | None:
    """Start a task: the teacher, a frozen copy taken before the expansion (when
    distilling), then the new token and heads (the baseline: the classifier's new rows), and
    ``freeze_task``; with ``retrain_scratch`` every weight is then drawn afresh. Returns the teacher."""
    teacher = None
    if task_id > 0:
        if distills:
            teacher = frozen_copy(model)
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


class DyToxLearner(RehearsalLearner):
    """DyTox's side of a run (see the module docstring)."""

    @property
    def learner(self) -> LearnerSettings:
        return self.settings.learner

    def begin_task(self, model: ContinualModel, task_id: int) -> ContinualModel | None:
        nb_new = self.scenarios.classes_per_task[task_id]
        return begin_task(model, self.learner, self.settings.loss.distills, task_id, nb_new)

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
        return self.with_memory(dataset, self.learner.oversample_memory)

    def objective(self, model: ContinualModel, phase: str) -> BatchLoss:
        return batch_loss_of(self.settings.loss, self.settings.mixup.active, model.nb_classes_per_task)

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

    def begin_finetuning(self, model: ContinualModel, resumed: bool = False) -> None:
        if self.learner.finetuning_resetclf and not resumed:  # drawn when finetuning starts, not again
            model.reset_heads()
        begin_finetuning(model, self.learner)

    def end_finetuning(self, model: ContinualModel) -> None:
        model.set_phase(TRAIN)

    def finetuning_teacher(self, teacher: ContinualModel | None) -> ContinualModel | None:
        return teacher if self.learner.finetuning_teacher else None
