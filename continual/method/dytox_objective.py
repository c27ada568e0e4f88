"""DyTox's loss of a batch: classification, distillation of the teacher's logits, the divergence head, and
PODNet's spatial distillation when asked for (continual.method.losses and .pod hold the formulas)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import cast

from torch import Tensor

from continual.config.settings import LossSettings
from continual.method.learner import TeacherOutput
from continual.method.losses import Criterion, LossTerms, build_criterion, dytox_loss
from continual.method.pod import pod_loss, pod_weight
from continual.model.base import ModelOutput
from continual.model.dytox import DyToxOutput


@dataclass(frozen=True)
class BatchLoss:
    """How a batch's DyTox loss is formed (an ``Objective``)."""

    criterion: Criterion
    auto_kd: bool
    kd_weight: float
    tau: float
    head_div: float
    pod: float = 0.0  # POD's weight in this phase (0: off); it needs a teacher
    pod_scales: tuple[int, ...] = (1,)
    pod_tokens_as_maps: bool = False

    def wants_teacher_maps(self, first_pass: bool) -> bool:
        """POD is added to the first pass of a step only, as published."""
        return self.pod > 0 and first_pass

    def __call__(self, out: ModelOutput, teacher: TeacherOutput | None, targets: Tensor,
                 first_pass: bool = True) -> LossTerms:
        """``out`` is a ``DyToxOutput`` (DyTox and the baseline both give one)."""
        dytox_out = cast(DyToxOutput, out)
        terms = dytox_loss(
            dytox_out.logits.float(),
            None if dytox_out.div_logits is None else dytox_out.div_logits.float(),
            targets,
            None if teacher is None else teacher.logits.float(),
            self.criterion,
            auto_kd=self.auto_kd,
            kd_weight=self.kd_weight,
            tau=self.tau,
            head_div=self.head_div,
        )
        if teacher is not None and self.wants_teacher_maps(first_pass):
            pod = pod_loss([m.float() for m in dytox_out.encoder_maps], [m.float() for m in teacher.encoder_maps],
                           self.pod_scales, self.pod_tokens_as_maps)
            terms = dataclasses.replace(terms, pod=self.pod * pod)
        return terms


def batch_loss_of(loss: LossSettings, mixup_on: bool, classes_per_task: list[int] | None = None) -> BatchLoss:
    """The loss of a batch from the loss options (the criterion depends on MixUp). POD weighs in after the
    first task (``classes_per_task`` of the model, which scale it with ``pod_scaling``), as published."""
    pod = 0.0
    if loss.pod is not None and classes_per_task is not None and len(classes_per_task) > 1:
        pod = pod_weight(loss.pod, loss.pod_scaling, classes_per_task[-1], sum(classes_per_task))
    return BatchLoss(
        criterion=build_criterion(loss.bce_loss, loss.smoothing, mixup_on),
        auto_kd=loss.auto_kd, kd_weight=loss.kd, tau=loss.distillation_tau, head_div=loss.head_div,
        pod=pod, pod_scales=loss.pod_scales, pod_tokens_as_maps=loss.pod_tokens_as_maps,
    )
