"""One epoch of training and one evaluation pass, shared by every phase of the task loop."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from continual.config.errors import ConfigError
from continual.method.learner import Objective, TeacherOutput
from continual.method.losses import LossTerms
from continual.method.metrics import EvalCounts, task_of_class
from continual.method.sam import SAM
from continual.report.records import EpochProgress
from continual.train.loss_watch import LossWatch

Mixer = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Predictor = Callable[[Any, Tensor], Tensor]  # (model, images) -> class scores: a method's ``predict``


class LossOf(Protocol):
    """The loss terms of a batch; ``first_pass`` False is SAM's second pass, which has no POD term (as published)."""

    def __call__(self, images: Tensor, targets: Tensor, first_pass: bool = True) -> LossTerms: ...


AMP_DTYPES: dict[str, torch.dtype | None] = {"auto": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cpu_has_fast_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 or AMX), rather than emulating it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@dataclass(frozen=True)
class Precision:
    """Device and autocast, only when AMP is asked for: ``amp_dtype`` "auto" is float16 on CUDA (the
    published choice) and bfloat16 on the CPU; "float16" is refused on the CPU."""

    device: torch.device
    amp: bool
    amp_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.amp_dtype not in AMP_DTYPES:
            raise ConfigError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, got {self.amp_dtype!r}")
        if self.amp and self.device.type == "cpu" and self.amp_dtype == "float16":
            raise ConfigError("--amp-dtype float16 is for CUDA; on the CPU use bfloat16 (or auto)")

    @property
    def dtype(self) -> torch.dtype:
        chosen = AMP_DTYPES[self.amp_dtype]
        if chosen is None:  # auto
            return torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return chosen

    def autocast(self) -> AbstractContextManager:
        if not self.amp:
            return nullcontext()  # published evaluation ran under fp16 even without AMP: not here
        return torch.autocast(self.device.type, dtype=self.dtype)

    def warnings(self, amp_requested_but_disabled: bool = False) -> list[str]:
        """What the user should know about this precision before a long run."""
        notes = []
        if amp_requested_but_disabled:
            notes.append("amp: true has no effect: no_amp is true in the option files (the published CIFAR "
                         "files set it); --amp on the command line turns mixed precision on")
        if self.amp and self.device.type == "cpu" and not cpu_has_fast_bfloat16():  # bfloat16 on the CPU
            notes.append("mixed precision (--amp, or no_amp: false as in the published ImageNet files) on a CPU "
                         "without bfloat16 instructions (AVX-512 / AMX): bfloat16 runs emulated, far slower than "
                         "float32 (a 2048x2048 matmul measured 600x slower on an AVX2 EPYC); "
                         "--no-amp trains in float32")
        return notes

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """Loss scaling is needed for float16 only."""
        if self.amp and self.dtype == torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None


@dataclass
class EpochStats:
    """Means of the loss terms over an epoch, where its time went, and whether it stopped early."""

    losses: dict[str, float]
    images: int
    seconds: float
    data_seconds: float
    next_step: int | None = None  # set when the epoch stopped on a signal: the step to resume from
    progress: EpochProgress | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @classmethod
    def from_progress(cls, progress: EpochProgress, next_step: int | None = None) -> EpochStats:
        means = {name: total / max(progress.steps, 1) for name, total in progress.sums.items()}
        return cls(means, progress.images, progress.seconds, progress.data_seconds, next_step, progress)


def _teacher_output(teacher: nn.Module | None, images: Tensor, precision: Precision,
                    with_maps: bool) -> TeacherOutput | None:
    """The frozen teacher's logits (and its encoder maps, when the objective wants them), computed in inference
    mode (no autograd bookkeeping at all), then copied: inference tensors cannot be saved for the backward of
    the losses."""
    if teacher is None:
        return None
    with torch.inference_mode(), precision.autocast():
        out = teacher(images)
    return TeacherOutput(out.logits.clone(), tuple(m.clone() for m in out.encoder_maps) if with_maps else ())


def batch_loss(
    model: nn.Module, teacher: nn.Module | None, images: Tensor, targets: Tensor, objective: Objective,
    precision: Precision, first_pass: bool = True,
) -> LossTerms:
    """The method's loss terms of one batch, from the model's output under autocast and the teacher's;
    targets are class indices (B,) or MixUp soft targets (B, C)."""
    teacher_out = _teacher_output(teacher, images, precision, objective.wants_teacher_maps(first_pass))
    with precision.autocast():
        out = model(images)
    return objective(out, teacher_out, targets, first_pass)


@dataclass
class SamPlan:
    """SAM for a phase: the perturbation state and which batch each of the two passes uses."""

    sam: SAM
    first_on_memory: bool = False
    second_on_memory: bool = False
    memory_batches: Iterator[tuple[Tensor, Tensor]] | None = None  # endless batches of the memory

    def batch(self, on_memory: bool, main: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        if on_memory and self.memory_batches is not None:
            images, targets, *_ = next(self.memory_batches)
            return images, targets.long()
        return main


def _backward(loss: Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (loss if scaler is None else scaler.scale(loss)).backward()


def clip_and_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, clip_grad: float | None,
    parameters: list[nn.Parameter],
) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def sam_step(
    plan: SamPlan, step: int, loss_of: LossOf, main: tuple[Tensor, Tensor],
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, where: str,
    watch: LossWatch | None = None,
) -> LossTerms:
    """Gradient at w, ascend to w + e, gradient there, back to w (look-SAM: one pass between full steps).

    Returns the loss terms of the main batch, for logging; each pass is checked for non-finite terms.
    """
    device = main[0].device
    watch = watch or LossWatch(device)
    first_images, first_targets = (t.to(device, non_blocking=True) for t in plan.batch(plan.first_on_memory, main))
    optimizer.zero_grad(set_to_none=True)
    terms = loss_of(first_images, first_targets)
    watch.check(terms, where)
    _backward(terms.total, scaler)
    if not plan.sam.is_full_step(step):
        plan.sam.reuse_direction()
        return terms
    if not plan.sam.ascend(grad_scale=1.0 if scaler is None else scaler.get_scale()):
        return terms  # an overflowing first pass: its gradients make the scaler skip the step
    second_images, second_targets = (t.to(device, non_blocking=True) for t in plan.batch(plan.second_on_memory, main))
    optimizer.zero_grad(set_to_none=True)
    second_terms = loss_of(second_images, second_targets, first_pass=False)
    watch.check(second_terms, where + " (SAM second pass)")
    _backward(second_terms.total, scaler)
    plan.sam.restore()
    return second_terms if plan.first_on_memory else terms


def _sync_unless(model: nn.Module, accumulating: bool) -> AbstractContextManager:
    """Skip DDP's gradient all-reduce on micro-batches that do not end an accumulation group."""
    no_sync = getattr(model, "no_sync", None)  # a DistributedDataParallel's
    return no_sync() if accumulating and no_sync is not None else nullcontext()


@dataclass(frozen=True)
class StepOptions:
    """How each optimiser step is taken: loss scaling, clipping, MixUp, SAM, gradient accumulation.

    With ``accum_steps`` > 1 the optimiser steps once per group of that many
    batches, on the mean of their gradients, so one process reproduces the
    optimisation of ``accum_steps`` processes (the last group may be shorter).
    """

    scaler: torch.amp.GradScaler | None = None
    clip_grad: float | None = None
    mixer: Mixer | None = None
    sam: SamPlan | None = None
    accum_steps: int = 1
    after_step: Callable[[], None] | None = None  # a method's constraint on the weights after each step


StepObserver = Callable[[EpochProgress, Callable[[], dict[str, float]]], None]  # (progress, read the loss sums)


@dataclass(frozen=True)
class EpochCursor:
    """Where an epoch starts and when it stops early.

    A resumed epoch passes the remaining batches with ``start_step``, its
    ``nb_batches`` and the saved ``progress``. ``should_stop`` is asked after
    each optimiser step; when it says yes the epoch ends early and the result
    carries the step to resume from. ``after_step`` sees the progress after each
    step, and a function that reads the loss sums (progress bars; each read waits
    for the device). ``where`` names the epoch in errors. ``max_batches`` ends the
    epoch after that many batches (``--debug``).
    """

    where: str = ""
    nb_batches: int | None = None
    start_step: int = 0
    progress: EpochProgress | None = None
    should_stop: Callable[[], bool] | None = None
    after_step: StepObserver | None = None
    max_batches: int | None = None


def _train_step(
    model: nn.Module, step: int, batch: tuple[Tensor, Tensor], loss_of: LossOf,
    optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter], options: StepOptions, nb_batches: int,
    watch: LossWatch, where: str,
) -> bool:
    """One batch: forward, backward and, at the end of an accumulation group, the optimiser step; its loss
    terms go to ``watch``. Returns whether the optimiser stepped."""
    if options.sam is not None:
        terms = sam_step(options.sam, step, loss_of, batch, optimizer, options.scaler, where, watch)
        watch.add(terms, where)
        clip_and_step(optimizer, options.scaler, options.clip_grad, parameters)
        if options.after_step is not None:
            options.after_step()
        return True
    group_start = step - step % options.accum_steps
    group_size = min(options.accum_steps, nb_batches - group_start)
    ends_group = step + 1 == group_start + group_size
    if step == group_start:
        optimizer.zero_grad(set_to_none=True)
    with _sync_unless(model, not ends_group):
        terms = loss_of(*batch)
        watch.add(terms, where)  # before the backward: on the CPU a bad step stops here, as published
        _backward(terms.total / group_size, options.scaler)
    if ends_group:
        clip_and_step(optimizer, options.scaler, options.clip_grad, parameters)
        if options.after_step is not None:
            options.after_step()
    return ends_group


def train_one_epoch(
    model: nn.Module,
    teacher: nn.Module | None,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    precision: Precision,
    options: StepOptions | None = None,
    cursor: EpochCursor | None = None,
) -> EpochStats:
    """Train ``model`` on the batches of ``loader``; stop with an error on a non-finite loss.

    Nothing in a step makes the host wait for the device: the loss terms are summed on the device and read
    at the end (``LossWatch``), or when a progress bar asks.
    """
    options = options or StepOptions()
    cursor = cursor or EpochCursor()
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    progress = cursor.progress or EpochProgress()
    watch = LossWatch(precision.device, progress.sums)
    nb_batches = len(loader) if cursor.nb_batches is None else cursor.nb_batches  # type: ignore[arg-type]
    if cursor.max_batches is not None:
        nb_batches = min(nb_batches, cursor.max_batches)

    def loss_of(images: Tensor, targets: Tensor, first_pass: bool = True) -> LossTerms:
        return batch_loss(model, teacher, images, targets, objective, precision, first_pass)

    start = fetch_start = time.perf_counter()
    elapsed_before = progress.seconds
    for step, (images, targets, *_) in enumerate(loader, start=cursor.start_step):
        progress.data_seconds += time.perf_counter() - fetch_start
        images = images.to(precision.device, non_blocking=True)
        targets = targets.to(precision.device, non_blocking=True).long()
        if options.mixer is not None and len(images) % 2 == 0:  # timm's MixUp needs an even batch
            images, targets = options.mixer(images, targets)
        stepped = _train_step(model, step, (images, targets), loss_of, optimizer, parameters, options,
                              nb_batches, watch, f"{cursor.where}, step {step}")
        progress.steps += 1
        progress.images += len(images)
        progress.seconds = elapsed_before + time.perf_counter() - start
        if cursor.after_step is not None:
            cursor.after_step(progress, watch.read)
        if step + 1 == nb_batches:  # the last batch (a shorter epoch ends here, before the loader does)
            break
        if stepped and cursor.should_stop is not None and cursor.should_stop():
            progress.sums = watch.read()
            return EpochStats.from_progress(progress, next_step=step + 1)
        fetch_start = time.perf_counter()
    progress.sums = watch.read()
    progress.seconds = elapsed_before + time.perf_counter() - start
    return EpochStats.from_progress(progress)


@torch.inference_mode()
def evaluate(predict: Predictor, model: nn.Module, loader: Iterable, precision: Precision,
             classes_per_task: list[int]) -> EvalCounts:
    """Correct counts per task of the true class, over every batch of ``loader``, of ``predict``'s scores."""
    was_training = model.training
    model.eval()
    class_tasks = task_of_class(classes_per_task, precision.device)
    counts = EvalCounts.zeros(len(classes_per_task), precision.device)
    for images, targets, *_ in loader:
        with precision.autocast():
            logits = predict(model, images.to(precision.device, non_blocking=True))
        counts.add_batch(logits.float(), targets.to(precision.device, non_blocking=True).long(), class_tasks)
    model.train(was_training)
    return counts
