"""DER without pruning (``--method der``; Yan et al., "DER: Dynamically Expandable Representation for Class
Incremental Learning", CVPR 2021), on the baseline's encoders (``--no-dytox``), one per task
(continual.model.der).

- Each task: a new extractor joins, initialised from the newest one (weights and BatchNorm statistics, as the
  official code and PyCIL do, rather than drawn afresh); the old extractors are frozen (BatchNorm statistics
  included); no teacher, no distillation.
- Training, on the task and the memory once: cross-entropy over every class seen + the auxiliary classifier's
  cross-entropy on the newest extractor's features (the paper's lambda_a = 1), whose classes are "an old class"
  then each new class; the first task has cross-entropy alone.
- Balanced finetuning (``finetuning: balanced``), from the second task on, on the memory once updated (balanced):
  the classifier alone trains, with cross-entropy of the logits divided by ``finetuning_temperature``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from continual.method.learner import TeacherOutput
from continual.method.losses import LossTerms, divergence_soft_targets, divergence_targets
from continual.method.replay import RehearsalLearner
from continual.model.base import ContinualModel, ModelOutput
from continual.model.der import DEROutput
from continual.vocabulary import FINETUNE, TRAIN


def auxiliary_targets(targets: Tensor, nb_old_classes: int) -> Tensor:
    """The auxiliary classifier's targets: 0 for an old class, 1 + (y - old classes) for a new class y; MixUp's
    soft targets (B, C) become (B, 1 + new classes) with the old classes' mass in column 0."""
    if targets.dim() == 2:
        return divergence_soft_targets(targets, nb_old_classes)
    return divergence_targets(targets, nb_old_classes)


@dataclass(frozen=True)
class ExpandedCrossEntropy:
    """Cross-entropy over every class seen + the auxiliary cross-entropy (weight 1), logged as ``div``: DyTox's
    divergence head is DER's auxiliary classifier. Cross-entropy alone when there is no auxiliary classifier."""

    def wants_teacher_maps(self, first_pass: bool) -> bool:
        return False

    def __call__(self, out: ModelOutput, teacher: TeacherOutput | None, targets: Tensor,
                 first_pass: bool = True) -> LossTerms:
        der = cast(DEROutput, out)
        logits = der.logits.float()
        classification = F.cross_entropy(logits, targets)
        if der.aux_logits is None:
            return LossTerms(classification=classification)
        aux_logits = der.aux_logits.float()
        nb_old = logits.shape[1] - (aux_logits.shape[1] - 1)
        return LossTerms(classification=classification,
                         div=F.cross_entropy(aux_logits, auxiliary_targets(targets, nb_old)))


@dataclass(frozen=True)
class TemperedCrossEntropy:
    """Balanced finetuning's loss: cross-entropy of the logits divided by ``temperature``."""

    temperature: float

    def wants_teacher_maps(self, first_pass: bool) -> bool:
        return False

    def __call__(self, out: ModelOutput, teacher: TeacherOutput | None, targets: Tensor,
                 first_pass: bool = True) -> LossTerms:
        return LossTerms(classification=F.cross_entropy(out.logits.float() / self.temperature, targets))


class DynamicallyExpandableRepresentation(RehearsalLearner):
    """DER: a frozen extractor per past task, a new one per task, then the classifier rebalanced on the memory."""

    def begin_task(self, model: ContinualModel, task_id: int) -> ContinualModel | None:
        """The new extractor, classifier columns and rows, and auxiliary classifier; no teacher."""
        if task_id > 0:
            model.expand(self.scenarios.classes_per_task[task_id])
        self.resume_task(model, task_id)
        return None

    def resume_task(self, model: ContinualModel, task_id: int) -> None:
        """The training phase's freezing: every extractor but the newest (a rebuilt model is already so)."""
        model.set_phase(TRAIN)
        model.freeze([])

    def training_set(self, task_id: int) -> Dataset:
        """The task's images and every exemplar of the memory, once."""
        return self.with_memory(self.scenarios.training_set(task_id))

    def objective(self, model: ContinualModel, phase: str) -> ExpandedCrossEntropy | TemperedCrossEntropy:
        if phase == FINETUNE:
            return TemperedCrossEntropy(self.settings.learner.finetuning_temperature)
        return ExpandedCrossEntropy()

    def finetuning_set(self, task_id: int) -> Dataset | None:
        """The memory (balanced after its update), from the second task on, with ``finetuning: balanced``."""
        if self.settings.learner.finetuning != "balanced" or task_id == 0 or not len(self.memory):
            return None
        return self.memory_dataset()

    def begin_finetuning(self, model: ContinualModel, resumed: bool = False) -> None:
        """Every extractor frozen (and in eval mode), the classifier alone trains (drawn again with
        ``finetuning_resetclf`` when finetuning starts, not when it resumes)."""
        if self.settings.learner.finetuning_resetclf and not resumed:
            model.reset_heads()
        model.set_phase(FINETUNE)

    def end_finetuning(self, model: ContinualModel) -> None:
        model.set_phase(TRAIN)
