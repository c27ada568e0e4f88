"""Experience replay (``--method er``): train on each task's images and the memory with cross-entropy alone;
no teacher, no distillation, no finetuning, nothing frozen.

The whole method is this file and its line in continual.method.registry; the
memory (its quota, herding, the three memory protocols) is every rehearsal
method's, from ``RehearsalLearner``. It trains the model the options give
(DyTox's, or the baseline's with ``--no-dytox``) and classifies by its head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from continual.method.learner import TeacherOutput
from continual.method.losses import LossTerms
from continual.method.replay import RehearsalLearner
from continual.model.base import ContinualModel, ModelOutput
from continual.vocabulary import TRAIN


@dataclass(frozen=True)
class CrossEntropy:
    """Cross-entropy over every class seen; MixUp's soft targets (B, C) are class probabilities."""

    def wants_teacher_maps(self, first_pass: bool) -> bool:
        return False

    def __call__(self, out: ModelOutput, teacher: TeacherOutput | None, targets: Tensor,
                 first_pass: bool = True) -> LossTerms:
        return LossTerms(classification=F.cross_entropy(out.logits.float(), targets))


class ExperienceReplay(RehearsalLearner):
    """Rehearsal and cross-entropy: the simplest method that keeps exemplars."""

    def begin_task(self, model: ContinualModel, task_id: int) -> ContinualModel | None:
        """Grow the model for the task's classes; everything trains; no teacher."""
        if task_id > 0:
            model.expand(self.scenarios.classes_per_task[task_id])
        model.set_phase(TRAIN)
        model.freeze([])
        return None

    def training_set(self, task_id: int) -> Dataset:
        """The task's images and every exemplar of the memory, once."""
        return self.with_memory(self.scenarios.training_set(task_id))

    def objective(self, model: ContinualModel, phase: str) -> CrossEntropy:
        return CrossEntropy()
