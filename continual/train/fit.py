"""One training phase of a task, epoch after epoch: the training phase and the finetuning phase alike.

A phase builds its optimiser, schedule, loss scaler and SAM, trains its
epochs, and hands the loop a ``FitState`` to save every ``save_every_epoch``
epochs and when a signal asks the run to stop (inside an epoch too). Resumed
with that state, it continues at the same step with the same random numbers.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import numpy as np
import torch
from timm.data import Mixup
from timm.scheduler.scheduler import Scheduler
from torch.utils.data import Dataset

from continual.config.settings import MixupSettings, PrecisionSettings, SamSettings, Settings
from continual.data.epoch_loader import EpochLoader
from continual.method.learner import Objective
from continual.method.sam import SAM, sam_rho_for_task
from continual.model.base import ContinualModel
from continual.report.progress import epoch_bar
from continual.report.records import EpochProgress
from continual.runtime.distributed import DistContext, wrap_for_training
from continual.runtime.seeding import capture_rng, restore_rng
from continual.state.run_state import FitState
from continual.state.saved_runs import Position
from continual.train.compilation import compiled_for_phase
from continual.train.epoch import (
    EpochCursor,
    EpochStats,
    Precision,
    SamPlan,
    StepObserver,
    StepOptions,
    train_one_epoch,
)
from continual.train.loaders import Loaders, endless
from continual.train.optim import build_optimizer, build_scheduler, current_lr, set_epoch_lr
from continual.vocabulary import phase_option_name


@dataclass(frozen=True)
class Phase:
    """What a phase trains on, with which loss and for how long; ``schedule_length`` None is a constant lr."""

    task_id: int
    name: str  # "train" or "finetune"
    dataset: Dataset
    objective: Objective  # the method's loss of a batch
    lr: float
    epochs: int
    shuffle: bool
    teacher: ContinualModel | None
    schedule_length: int | None
    memory: Dataset | None = None  # the memory, for SAM passes on memory batches
    find_unused: bool = False  # some trainable parameters take no part in the loss (DDP must look for them)
    after_step: Callable[[], None] | None = None  # the method's constraint after each optimiser step


@dataclass(frozen=True)
class Resume:
    """A phase resumed from a run state saved at ``position`` (inside the phase when ``fit`` is set),
    whose random state was ``rng``."""

    position: Position
    fit: FitState | None
    rng: dict[str, Any]


class RunControl(Protocol):
    """What a phase asks of the run: save its state, whether to stop, stop, report an epoch."""

    def save(self, position: Position, teacher: ContinualModel | None, fit: FitState | None = None) -> None: ...

    def stop_requested(self) -> bool: ...  # agreed now, between epochs

    def stop_requested_after_step(self) -> bool: ...  # agreed without waiting for the device, inside an epoch

    def preempted(self, where: str) -> NoReturn: ...

    def epoch_done(self, phase: Phase, epoch: int, stats: EpochStats, lr: float) -> None: ...


def build_mixer(settings: MixupSettings, nb_classes: int) -> Mixup | None:
    """timm's MixUp/CutMix over all classes seen so far (DyTox+), or None."""
    if not settings.active:
        return None
    return Mixup(
        mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix,
        cutmix_minmax=None if settings.cutmix_minmax is None else list(settings.cutmix_minmax),
        prob=settings.mixup_prob, switch_prob=settings.mixup_switch_prob, mode=settings.mixup_mode,
        label_smoothing=settings.smoothing, num_classes=nb_classes,
    )


def precision_of(settings: PrecisionSettings, device: torch.device) -> Precision:
    return Precision(device, settings.amp, settings.amp_dtype)


def memory_batch_size(settings: Settings, task_id: int) -> int:
    """Batch of the memory loader SAM's memory passes draw from: ``replay_memory`` when set, else the
    task's batch size, as published."""
    return settings.memory.replay_memory or settings.recipe.batch_size_of(task_id)


def sam_wanted(settings: SamSettings, task_id: int, phase: str) -> bool:
    """SAM runs in this phase when ``sam_rho`` > 0 and ``sam_mode`` / ``sam_skip_first`` allow it."""
    return (settings.sam_rho > 0 and phase_option_name(phase) in settings.sam_mode
            and not (settings.sam_skip_first and task_id == 0))


@dataclass
class PhaseTrainer:
    """Trains the phases of a run; ``control`` is the loop (saving, stopping, reporting)."""

    settings: Settings
    ctx: DistContext
    loaders: Loaders
    rng: np.random.Generator
    nb_tasks: int
    control: RunControl
    bars: bool = False

    def fit(self, model: ContinualModel, phase: Phase, resume: Resume | None = None) -> list[EpochStats]:
        """Train ``phase``; ``resume`` continues it from a run state saved inside it. The phase's loaders keep
        their workers from epoch to epoch and end them when the phase ends or stops."""
        with ExitStack() as phase_loaders:
            return self._fit(model, phase, resume, phase_loaders)

    def _fit(self, model: ContinualModel, phase: Phase, resume: Resume | None,
             phase_loaders: ExitStack) -> list[EpochStats]:
        loader = phase_loaders.enter_context(self.loaders.train(phase.dataset, phase.task_id, phase.shuffle))
        optimizer = build_optimizer(model, self.settings.optimizer, phase.lr)
        scheduler = None
        if phase.schedule_length is not None:
            scheduler = build_scheduler(optimizer, self.settings.schedule, phase.schedule_length)
        mixer = build_mixer(self.settings.mixup, model.nb_classes)
        precision = precision_of(self.settings.precision, self.ctx.device)
        options = StepOptions(precision.grad_scaler(), self.settings.optimizer.clip_grad, mixer,
                              self._sam_plan(phase, optimizer, phase_loaders), self.settings.recipe.grad_accum_steps,
                              phase.after_step)
        trained = compiled_for_phase(wrap_for_training(model, self.ctx, find_unused=phase.find_unused),
                                     self.settings.precision.compile, self.settings.precision.compile_backend)
        if resume is not None and resume.fit is not None:
            self._load(resume.fit, optimizer, scheduler, options)

        def fit_state(epoch_rng: dict | None = None, progress: EpochProgress | None = None) -> FitState:
            return FitState(optimizer.state_dict(), None if scheduler is None else scheduler.state_dict(),
                            None if options.scaler is None else options.scaler.state_dict(),
                            None if options.sam is None else options.sam.sam.state_dict(), epoch_rng, progress)

        history = []
        for epoch in range(resume.position.epoch if resume is not None else 0, phase.epochs):
            if scheduler is not None:
                set_epoch_lr(scheduler, epoch, self.settings.schedule.sched_step_fix)
            with epoch_bar(self.bars, f"task {phase.task_id} {phase.name} {epoch + 1}/{phase.epochs}",
                           len(loader), current_lr(optimizer)) as after_step:
                batches, cursor, epoch_rng = self._epoch_start(loader, phase, epoch, resume, after_step)
                stats = train_one_epoch(trained, phase.teacher, batches, optimizer, phase.objective, precision, options,
                                        cursor)
            if stats.next_step is not None:  # a signal: save inside the epoch and stop
                self.control.save(Position(phase.task_id, phase.name, epoch, stats.next_step), phase.teacher,
                                  fit_state(epoch_rng, stats.progress))
                self.control.preempted(f"in task {phase.task_id}, {phase.name} epoch {epoch}, step {stats.next_step}")
            history.append(stats)
            self.control.epoch_done(phase, epoch, stats, current_lr(optimizer))
            self._between_epochs(phase, epoch, fit_state)
        return history

    def _between_epochs(self, phase: Phase, epoch: int, fit_state: Callable[[], FitState]) -> None:
        """Save every ``save_every_epoch`` epochs, and stop here when a signal asked for it."""
        if epoch + 1 >= phase.epochs:
            return
        every = self.settings.run.save_every_epoch
        stopping = self.control.stop_requested()
        if stopping or (every and (epoch + 1) % every == 0):
            self.control.save(Position(phase.task_id, phase.name, epoch + 1), phase.teacher, fit_state())
            if stopping:
                self.control.preempted(f"after task {phase.task_id}, {phase.name} epoch {epoch}")

    def _epoch_start(self, loader: EpochLoader, phase: Phase, epoch: int, resume: Resume | None,
                     after_step: StepObserver | None) -> tuple[Any, EpochCursor, dict]:
        """The epoch's batches, its cursor (``after_step``: the progress bar's, or None) and the random state
        it starts with (taken before the first batch: starting the batches draws from it); a resumed epoch replays its
        batches up to the saved step (same sampler order and augmentation seeds), then takes the random state
        of that step boundary."""
        where = f"task {phase.task_id}, {phase.name} epoch {epoch}"
        limit = self.settings.recipe.batches_per_epoch
        should_stop = self.control.stop_requested_after_step
        fresh = EpochCursor(where, len(loader), should_stop=should_stop, after_step=after_step, max_batches=limit)
        if resume is None or epoch != resume.position.epoch or resume.position.step == 0 or resume.fit is None:
            epoch_rng = capture_rng(self.rng)
            return loader.epoch(epoch), fresh, epoch_rng
        saved, step = resume.fit, resume.position.step
        assert saved.epoch_rng is not None, "a run state saved inside an epoch has the epoch's random state"
        restore_rng(saved.epoch_rng, self.rng)
        batches = loader.epoch(epoch)  # draws the workers' seeds from the restored state
        for _ in range(step):
            next(batches)
        restore_rng(resume.rng, self.rng)
        cursor = EpochCursor(where, len(loader), step, saved.progress, should_stop, after_step, max_batches=limit)
        return batches, cursor, saved.epoch_rng

    def _load(self, saved: FitState, optimizer: torch.optim.Optimizer, scheduler: Scheduler | None,
              options: StepOptions) -> None:
        optimizer.load_state_dict(saved.optimizer)
        if scheduler is not None:
            assert saved.scheduler is not None, "a phase with a schedule saves the schedule's state"
            scheduler.load_state_dict(saved.scheduler)
        if options.scaler is not None and saved.scaler:
            options.scaler.load_state_dict(saved.scaler)
        if options.sam is not None and saved.sam:
            options.sam.sam.load_state_dict(saved.sam)

    def _sam_plan(self, phase: Phase, optimizer: torch.optim.Optimizer, phase_loaders: ExitStack) -> SamPlan | None:
        sam_settings = self.settings.sam
        if not sam_wanted(sam_settings, phase.task_id, phase.name):
            return None
        rho = sam_rho_for_task(sam_settings.sam_rho, sam_settings.sam_final, phase.task_id, self.nb_tasks)
        sam = SAM(optimizer, rho, adaptive=sam_settings.sam_adaptive, look_k=sam_settings.look_sam_k,
                  look_alpha=sam_settings.look_sam_alpha)
        memory_batches: Iterator | None = None
        if "memory" in (sam_settings.sam_first, sam_settings.sam_second) and phase.task_id > 0 \
                and phase.memory is not None:
            batch = memory_batch_size(self.settings, phase.task_id)
            memory = self.loaders.train(phase.memory, phase.task_id, shuffle=True, batch_size=batch)
            memory_batches = endless(phase_loaders.enter_context(memory))
        return SamPlan(sam, sam_settings.sam_first == "memory", sam_settings.sam_second == "memory", memory_batches)
