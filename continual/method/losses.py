"""DyTox training losses as pure functions of logits.

The published reductions are kept on purpose: the BCE is averaged over batch
*and* classes, and the distillation KL is averaged over batch *and* classes
(``reduction='mean'`` of ``F.kl_div``). Together with lambda = old / all classes
they set the effective weight of each term, so changing them changes the
method, not just the scale.

Nothing here knows about models or teachers: callers pass logits, which keeps
the formulas testable against the reference fixture without a network.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

Criterion = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "Criterion",
    "LossTerms",
    "bce_with_logits",
    "build_criterion",
    "divergence_soft_targets",
    "divergence_targets",
    "dytox_loss",
    "hard_cross_entropy",
    "kd_loss",
    "label_smoothing_cross_entropy",
    "one_hot",
    "soft_target_cross_entropy",
]


# --------------------------------------------------------------------------
# Classification criteria
# --------------------------------------------------------------------------


def _is_soft(targets: Tensor) -> bool:
    """Soft (MixUp) targets are a (B, C) float matrix; hard ones are (B,) ints."""
    return targets.dim() == 2


def _check_soft(logits: Tensor, targets: Tensor, name: str) -> None:
    if targets.shape != logits.shape:
        raise ValueError(
            f"{name}: soft targets {tuple(targets.shape)} must match logits "
            f"{tuple(logits.shape)}"
        )


def _check_hard(logits: Tensor, targets: Tensor, name: str) -> None:
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{name}: class-index targets must have shape ({logits.shape[0]},), "
            f"got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point:
        raise ValueError(f"{name}: class-index targets must be integers, got {targets.dtype}")


def one_hot(targets: Tensor, nb_classes: int, dtype: torch.dtype) -> Tensor:
    """``F.one_hot(targets, nb_classes).to(dtype)`` without its range check, which reads the targets' minimum
    and maximum on the host (a device synchronisation per step on CUDA). A class outside [0, nb_classes) would
    give a row of zeros; the loop's labels are the scenario's classes seen so far, in range by construction."""
    classes = torch.arange(nb_classes, device=targets.device)
    return (targets.unsqueeze(1) == classes).to(dtype)  # (B, C)


def bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy of every class logit against one-hot or soft targets.

    DyTox treats each class as an independent sigmoid (it works better than a
    softmax with growing heads). Mean over batch and classes, as published.

    logits: (B, C); targets: (B,) class indices or (B, C) soft targets (MixUp).
    """
    if _is_soft(targets):
        _check_soft(logits, targets, "bce_with_logits")
        dense = targets.to(logits.dtype)  # (B, C)
    else:
        _check_hard(logits, targets, "bce_with_logits")
        dense = one_hot(targets, logits.shape[1], logits.dtype)  # (B, C)
    return F.binary_cross_entropy_with_logits(logits, dense, reduction="mean")


def soft_target_cross_entropy(logits: Tensor, soft_targets: Tensor) -> Tensor:
    """Cross-entropy against a soft distribution (timm's SoftTargetCrossEntropy).

    Used with MixUp when the BCE is off. logits, soft_targets: (B, C).
    """
    _check_soft(logits, soft_targets, "soft_target_cross_entropy")
    per_sample = torch.sum(-soft_targets * F.log_softmax(logits, dim=-1), dim=-1)  # (B,)
    return per_sample.mean()


def label_smoothing_cross_entropy(logits: Tensor, targets: Tensor, smoothing: float) -> Tensor:
    """Cross-entropy with label smoothing (timm's LabelSmoothingCrossEntropy).

    (1 - smoothing) * NLL of the true class + smoothing * mean NLL over classes.
    logits: (B, C); targets: (B,) class indices.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    _check_hard(logits, targets, "label_smoothing_cross_entropy")
    log_probs = F.log_softmax(logits, dim=-1)  # (B, C)
    nll = -log_probs.gather(dim=-1, index=targets.unsqueeze(1)).squeeze(1)  # (B,)
    uniform = -log_probs.mean(dim=-1)  # (B,)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean()


def hard_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Plain softmax cross-entropy on class indices (no BCE, no smoothing, no MixUp)."""
    _check_hard(logits, targets, "hard_cross_entropy")
    return F.cross_entropy(logits, targets)


def build_criterion(bce_loss: bool, smoothing: float, mixup_active: bool) -> Criterion:
    """Pick the classification criterion the way the published main does.

    Priority: BCE (handles hard and MixUp targets alike) > soft-target CE when
    MixUp is active (MixUp already smooths its targets) > label smoothing >
    plain cross-entropy.
    """
    if bce_loss:
        return bce_with_logits
    if mixup_active:
        return soft_target_cross_entropy
    if smoothing > 0.0:
        return partial(label_smoothing_cross_entropy, smoothing=smoothing)
    return hard_cross_entropy


# --------------------------------------------------------------------------
# Distillation and divergence
# --------------------------------------------------------------------------


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """KL(teacher || student) on the old-class logits, at temperature tau, times tau^2.

    Only the first C_old student logits are distilled: the teacher has never
    seen the new classes. Mean over batch *and* classes, as published.

    student_logits: (B, C_all); teacher_logits: (B, C_old) with C_old <= C_all.
    """
    if tau <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {tau}")
    nb_old = teacher_logits.shape[1]
    if nb_old > student_logits.shape[1] or teacher_logits.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} do not fit student logits "
            f"{tuple(student_logits.shape)}"
        )
    student_old = student_logits[:, :nb_old]  # (B, C_old)
    pointwise = F.kl_div(
        F.log_softmax(student_old / tau, dim=1),
        F.log_softmax(teacher_logits / tau, dim=1),
        reduction="none",
        log_target=True,
    )  # (B, C_old)
    # Explicit mean over all elements = the published reduction="mean", which
    # torch deprecates (it will become "batchmean" and change the weight).
    return pointwise.mean() * (tau**2)


def divergence_targets(targets: Tensor, nb_old_classes: int) -> Tensor:
    """Targets of the divergence head: 0 for every old class, 1..n for the n new ones.

    The auxiliary head only has to tell the new classes apart from "anything
    old", which pushes the newest task token to specialise. targets: (B,) ints.
    """
    if nb_old_classes < 0:
        raise ValueError(f"nb_old_classes must be >= 0, got {nb_old_classes}")
    shifted = targets - nb_old_classes + 1  # new class c -> c - nb_old + 1
    return torch.where(targets < nb_old_classes, torch.zeros_like(targets), shifted)  # (B,)


def divergence_soft_targets(soft_targets: Tensor, nb_old_classes: int) -> Tensor:
    """MixUp version of `divergence_targets`: old-class mass pooled into column 0.

    soft_targets: (B, C) -> (B, C - nb_old_classes + 1); rows keep their sum.
    """
    if not 0 <= nb_old_classes <= soft_targets.shape[1]:
        raise ValueError(
            f"nb_old_classes={nb_old_classes} out of range for {soft_targets.shape[1]} classes"
        )
    old_mass = soft_targets[:, :nb_old_classes].sum(dim=1, keepdim=True)  # (B, 1)
    return torch.cat([old_mass, soft_targets[:, nb_old_classes:]], dim=1)  # (B, n_new + 1)


# --------------------------------------------------------------------------
# Full DyTox loss
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LossTerms:
    """The weighted terms of one DyTox loss; each is already multiplied by its weight.

    Kept separate (rather than summed immediately) so they can be logged and
    checked for non-finite values one by one.
    """

    classification: Tensor
    kd: Tensor | None = None
    div: Tensor | None = None
    pod: Tensor | None = None  # PODNet's spatial distillation (--pod), added by the training step

    @property
    def total(self) -> Tensor:
        """Sum of the present terms, in the published order (cls, kd, div, pod)."""
        total = self.classification
        for term in (self.kd, self.div, self.pod):
            if term is not None:
                total = total + term
        return total

    def named(self) -> dict[str, Tensor]:
        """The present terms by name, for logging and finiteness checks (continual.train.loss_watch)."""
        terms = {"classification": self.classification, "kd": self.kd, "div": self.div, "pod": self.pod}
        return {name: value for name, value in terms.items() if value is not None}

    def to_floats(self) -> dict[str, float]:
        """Python floats of every present term and the total (logging only)."""
        values = {name: float(value.detach()) for name, value in self.named().items()}
        values["total"] = float(self.total.detach())
        return values


def _distillation(
    logits: Tensor, teacher_logits: Tensor, *, auto_kd: bool, kd_weight: float, tau: float
) -> tuple[float, Tensor | None]:
    """(scale of the classification term, weighted KD term or None).

    auto_kd: lambda = C_old / C_all, classification x (1 - lambda), KD x lambda
    (WA-style interpolation). Plain kd: classification unscaled, KD x kd_weight.
    """
    if auto_kd:
        lam = teacher_logits.shape[1] / logits.shape[1]
        return 1.0 - lam, lam * kd_loss(logits, teacher_logits, tau)
    if kd_weight > 0.0:
        return 1.0, kd_weight * kd_loss(logits, teacher_logits, tau)
    return 1.0, None


def _divergence(logits: Tensor, div_logits: Tensor, targets: Tensor, criterion: Criterion) -> Tensor:
    """Unweighted divergence-head loss; C_old = C_all - (div width - 1)."""
    nb_new = div_logits.shape[1] - 1
    nb_old = logits.shape[1] - nb_new
    if nb_new < 1 or nb_old < 0:
        raise ValueError(
            f"divergence logits {tuple(div_logits.shape)} do not fit logits {tuple(logits.shape)}"
        )
    if _is_soft(targets):
        div_targets = divergence_soft_targets(targets, nb_old)  # (B, n_new + 1)
    else:
        div_targets = divergence_targets(targets, nb_old)  # (B,)
    return criterion(div_logits, div_targets)


def dytox_loss(
    logits: Tensor,
    div_logits: Tensor | None,
    targets: Tensor,
    teacher_logits: Tensor | None,
    criterion: Criterion,
    *,
    auto_kd: bool,
    kd_weight: float,
    tau: float,
    head_div: float,
) -> LossTerms:
    """DyTox loss of one batch, term by term.

    logits: (B, C_all) all seen classes in task order; div_logits: (B, n_new + 1)
    or None; targets: (B,) ints or (B, C_all) soft; teacher_logits: (B, C_old) or None.
    """
    classification = criterion(logits, targets)
    kd = None
    if teacher_logits is not None:
        scale, kd = _distillation(
            logits, teacher_logits, auto_kd=auto_kd, kd_weight=kd_weight, tau=tau
        )
        if scale != 1.0:
            classification = scale * classification
    div = None
    if div_logits is not None:
        div = head_div * _divergence(logits, div_logits, targets, criterion)
    return LossTerms(classification=classification, kd=kd, div=div)
