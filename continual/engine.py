"""One epoch of training and one evaluation pass, shared by every phase of the task loop."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from continual.dytox import DyToxOutput
from continual.losses import Criterion, LossTerms, check_finite, dytox_loss
from continual.metrics import EvalCounts, task_of_class

Mixer = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class LossSettings:
    """How a batch's loss is formed (SPEC §2.5)."""

    criterion: Criterion
    auto_kd: bool
    kd_weight: float
    tau: float
    head_div: float


@dataclass(frozen=True)
class Precision:
    """Device and autocast: float16 on CUDA, bfloat16 on CPU, only when AMP is asked for."""

    device: torch.device
    amp: bool

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.device.type == "cuda" else torch.bfloat16

    def autocast(self) -> AbstractContextManager:
        if not self.amp:
            return nullcontext()  # published evaluation ran under fp16 even without AMP: not here
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """Loss scaling is needed for float16 only."""
        if self.amp and self.dtype == torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None


@dataclass
class EpochStats:
    """Means of the loss terms over an epoch, and where its time went."""

    losses: dict[str, float]
    images: int
    seconds: float
    data_seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass
class _Running:
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    steps: int = 0

    def add(self, terms: LossTerms) -> None:
        for name, value in terms.to_floats().items():
            self.sums[name] += value
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {name: total / max(self.steps, 1) for name, total in self.sums.items()}


def _teacher_logits(teacher: nn.Module | None, images: Tensor, precision: Precision) -> Tensor | None:
    if teacher is None:
        return None
    with torch.no_grad(), precision.autocast():
        return teacher(images).logits


def _optimizer_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip_grad: float | None,
    parameters: list[nn.Parameter],
) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def train_one_epoch(
    model: nn.Module,
    teacher: nn.Module | None,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_settings: LossSettings,
    precision: Precision,
    *,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float | None = None,
    mixer: Mixer | None = None,
    where: str = "",
) -> EpochStats:
    """Train ``model`` on every batch of ``loader`` once; stop with an error on a non-finite loss."""
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    running, images_seen, data_seconds = _Running(), 0, 0.0
    start = fetch_start = time.perf_counter()
    for step, (images, targets, *_) in enumerate(loader):
        data_seconds += time.perf_counter() - fetch_start
        images = images.to(precision.device, non_blocking=True)
        targets = targets.to(precision.device, non_blocking=True).long()
        if mixer is not None and len(images) % 2 == 0:  # timm's MixUp needs an even batch
            images, targets = mixer(images, targets)
        teacher_logits = _teacher_logits(teacher, images, precision)
        with precision.autocast():
            out: DyToxOutput = model(images)
        terms = dytox_loss(
            out.logits.float(),
            None if out.div_logits is None else out.div_logits.float(),
            targets,
            None if teacher_logits is None else teacher_logits.float(),
            loss_settings.criterion,
            auto_kd=loss_settings.auto_kd,
            kd_weight=loss_settings.kd_weight,
            tau=loss_settings.tau,
            head_div=loss_settings.head_div,
        )
        check_finite(terms, f"{where}, step {step}")
        _optimizer_step(terms.total, optimizer, scaler, clip_grad, parameters)
        running.add(terms)
        images_seen += len(images)
        fetch_start = time.perf_counter()
    return EpochStats(running.means(), images_seen, time.perf_counter() - start, data_seconds)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, precision: Precision, classes_per_task: list[int]) -> EvalCounts:
    """Correct counts per task of the true class, over every batch of ``loader``."""
    was_training = model.training
    model.eval()
    class_tasks = task_of_class(classes_per_task, precision.device)
    counts = EvalCounts.zeros(len(classes_per_task), precision.device)
    for images, targets, *_ in loader:
        with precision.autocast():
            logits = model(images.to(precision.device, non_blocking=True)).logits
        counts.add_batch(logits.float(), targets.to(precision.device).long(), class_tasks)
    model.train(was_training)
    return counts
