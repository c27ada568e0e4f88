"""Weight aligning (``--method wa``; Zhao et al., "Maintaining Discrimination and Fairness in Class Incremental
Learning", CVPR 2020), on the baseline's network (``--no-dytox``: one classifier that grows).

- Loss: (1 - lambda) cross-entropy over all seen classes + lambda distillation of the old classes' logits at
  temperature ``distillation_tau`` (the paper's T = 2), lambda = old classes / seen classes.
- After each task's training: the new classes' weight vectors are scaled by
  gamma = mean norm of the old classes' rows / mean norm of the new classes' rows.
- After each optimiser step: the classifier's weights are clipped to be non-negative.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from continual.method.learner import TeacherOutput
from continual.method.losses import LossTerms
from continual.method.replay import RehearsalLearner
from continual.model.base import ContinualModel, ModelOutput
from continual.model.baseline import IncrementalClassifier


def soft_distillation(logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """The paper's distillation: -sum_k softmax(teacher / tau)_k log softmax(student_old / tau)_k over the old
    classes, averaged over the batch."""
    student = F.log_softmax(logits[:, : teacher_logits.shape[1]] / tau, dim=1)
    return -(F.softmax(teacher_logits / tau, dim=1) * student).sum(dim=1).mean()


def aligning_factor(weight: Tensor, nb_old: int) -> float:
    """gamma = mean norm of the first ``nb_old`` rows / mean norm of the others."""
    norms = weight.detach().norm(dim=1)
    return float(norms[:nb_old].mean() / norms[nb_old:].mean())


def classifier(model: ContinualModel) -> nn.Linear:
    """The growing classifier's Linear, whose rows are the classes' weight vectors."""
    return cast(IncrementalClassifier, model).head.head


@dataclass(frozen=True)
class AlignedDistillation:
    """(1 - lambda) cross-entropy + lambda distillation; cross-entropy alone without a teacher (the first task)."""

    tau: float

    def wants_teacher_maps(self, first_pass: bool) -> bool:
        return False

    def __call__(self, out: ModelOutput, teacher: TeacherOutput | None, targets: Tensor,
                 first_pass: bool = True) -> LossTerms:
        logits = out.logits.float()
        cross_entropy = F.cross_entropy(logits, targets)
        if teacher is None:
            return LossTerms(classification=cross_entropy)
        old = teacher.logits.float()
        weight = old.shape[1] / logits.shape[1]
        return LossTerms(classification=(1 - weight) * cross_entropy,
                         kd=weight * soft_distillation(logits, old, self.tau))


class WeightAligning(RehearsalLearner):
    """WA: distillation from the previous model, then the new classes' weights aligned to the old ones'."""

    def begin_task(self, model: ContinualModel, task_id: int) -> ContinualModel | None:
        """The teacher (a frozen copy of the model before it grows), then the new classes' rows."""
        return self.grow_after_teacher(model, task_id)

    def training_set(self, task_id: int) -> Dataset:
        return self.with_memory(self.scenarios.training_set(task_id))

    def objective(self, model: ContinualModel, phase: str) -> AlignedDistillation:
        return AlignedDistillation(self.settings.loss.distillation_tau)

    def step_constraint(self, model: ContinualModel) -> Callable[[], None] | None:
        """Non-negative classifier weights after every update, as in the paper."""
        weight = classifier(model).weight

        def clip() -> None:
            with torch.no_grad():
                weight.clamp_(min=0)
        return clip

    def end_training(self, model: ContinualModel, task_id: int) -> None:
        """Weight aligning: the new classes' rows scaled by gamma (from the second task on)."""
        if task_id == 0:
            return
        nb_old = model.nb_classes - model.nb_classes_per_task[-1]
        weight = classifier(model).weight
        gamma = aligning_factor(weight, nb_old)
        with torch.no_grad():
            weight[nb_old:] *= gamma
