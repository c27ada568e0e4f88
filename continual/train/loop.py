"""The continual-learning task loop, written once: every phase of a task is in this file.

For each task: begin (teacher copy, expansion, freezing), train on the task's
data and the memory, update the memory, finetune on the balanced memory,
evaluate on all seen classes, log and checkpoint. The method's side of each
phase is a hook of its ``Learner`` (continual.method.learner); the epochs of a
phase are a ``PhaseTrainer``'s. Nothing here knows which method runs. A run
state is saved at every phase boundary, so a run resumes at the phase (or the
epoch, or the step) where it stopped.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np

from continual.config.settings import Settings
from continual.data.scenarios import Scenarios
from continual.method.learner import Learner, Predictor
from continual.method.metrics import (
    EvalCounts,
    TaskAccuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
)
from continual.model.base import ContinualModel
from continual.model.build import count_parameters
from continual.report.records import EpochRecord, TaskResult
from continual.report.results import RunResults
from continual.report.run_log import RunLogs
from continual.runtime.distributed import DistContext, all_reduce_sum, barrier, gather_objects
from continual.runtime.preemption import Preempted, StopRequest
from continual.runtime.seeding import capture_rng
from continual.state import checkpoints
from continual.state.run_state import FitState, RunState
from continual.state.saved_runs import Position, save_state
from continual.train.epoch import EpochStats, evaluate
from continual.train.fit import Phase, PhaseTrainer, Resume, precision_of
from continual.train.loaders import Loaders
from continual.vocabulary import FINETUNE, TRAIN


class PhaseClock:
    """Seconds per phase of the current task, including the running phase's so far (for a save)."""

    def __init__(self, done: dict[str, float] | None = None) -> None:
        self.done = dict(done or {})
        self.running: tuple[str, float] | None = None

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        self.running = (phase, time.perf_counter())
        try:
            yield
        finally:
            self.done = self.snapshot()
            self.running = None

    def snapshot(self) -> dict[str, float]:
        seconds = dict(self.done)
        if self.running is not None:
            phase, start = self.running
            seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start
        return seconds


def accuracy_of(predict: Predictor, model: ContinualModel, settings: Settings, ctx: DistContext, loaders: Loaders,
                scenarios: Scenarios, task_id: int) -> tuple[TaskAccuracy, int]:
    """Accuracy of ``predict`` on the test images of all classes seen up to ``task_id``, each image evaluated on
    exactly one process; also the number of images."""
    loader = loaders.eval(scenarios.evaluation_set(task_id), task_id, sharded=True)
    counts = evaluate(predict, model, loader, precision_of(settings.precision, ctx.device),
                      scenarios.classes_per_task[: task_id + 1])
    counts = EvalCounts.from_tensor(all_reduce_sum(counts.as_tensor()))
    return TaskAccuracy.from_counts(counts), int(counts.total.sum())


def evaluate_seen_classes(learner: Learner, model: ContinualModel, settings: Settings, ctx: DistContext,
                          loaders: Loaders, scenarios: Scenarios, task_id: int) -> tuple[TaskAccuracy, int]:
    """Accuracy of the method's predictions on all classes seen up to ``task_id``, and the number of images.
    Every process runs it (the method prepares its evaluation first, perhaps with collectives)."""
    learner.prepare_evaluation(model, task_id)
    return accuracy_of(learner.predict, model, settings, ctx, loaders, scenarios, task_id)


def evaluate_other_predictions(learner: Learner, model: ContinualModel, settings: Settings, ctx: DistContext,
                               loaders: Loaders, scenarios: Scenarios, task_id: int) -> dict[str, float]:
    """Top-1 of each of the method's other classifiers on the same images (one pass each; none for most)."""
    return {name: accuracy_of(predict, model, settings, ctx, loaders, scenarios, task_id)[0].top1
            for name, predict in learner.other_predictions(model).items()}


@dataclass
class TaskLoop:
    """The state of a run across tasks, and its phases. Built whole by ``continual.train.session``: the
    run's start (model, learner with its memory, results so far, the run state being resumed), its
    files (main process), its stop request and whether progress bars show."""

    settings: Settings
    ctx: DistContext
    run_dir: Path
    scenarios: Scenarios
    model: ContinualModel
    learner: Learner
    loaders: Loaders
    rng: np.random.Generator
    logs: RunLogs | None  # the main process's files
    reporter: RunResults | None  # the main process's summary, plots and TensorBoard
    stop: StopRequest
    bars: bool
    results: list[TaskResult]  # one per finished task, on every process
    resumed: RunState | None  # the run state being resumed, until the loop has caught up with it
    sequence: int  # number of the last saved run state
    clock: PhaseClock = field(default_factory=PhaseClock)

    def __post_init__(self) -> None:
        self.trainer = PhaseTrainer(self.settings, self.ctx, self.loaders, self.rng,
                                    len(self.scenarios.classes_per_task), control=self, bars=self.bars)

    def say(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    # ------------------------------------------------------------------ one task
    def run_task(self, task_id: int, start: Position | None = None) -> None:
        """Run the phases of a task; ``start`` resumes it from ``self.resumed``."""
        start = start or Position(task_id)
        resumed = self.resumed if start.phase != "begin" else None
        self.clock = PhaseClock(resumed.timings if resumed is not None else None)
        if resumed is None:
            teacher = self.learner.begin_task(self.model, task_id)
        else:  # the model (expanded) and the teacher come from the run state
            teacher = resumed.teacher
            self.learner.resume_task(self.model, task_id)
        params = count_parameters(self.model)
        phases = ((TRAIN, self.train_phase, "memory"), ("memory", self.memory_phase, FINETUNE),
                  (FINETUNE, self.finetune_phase, "eval"))
        for name, run_phase, following in phases:
            if start.reached(task_id, name):
                with self.clock.timing(name):
                    run_phase(task_id, teacher, self.resume_of(start, name))
                self.boundary(Position(task_id, following), teacher)
        self.resumed = None
        with self.clock.timing("eval"):
            accuracy, nb_images = self.evaluate(task_id)
            others = evaluate_other_predictions(self.learner, self.model, self.settings, self.ctx, self.loaders,
                                                self.scenarios, task_id)
        result = self.task_result(task_id, accuracy, params, nb_images, others)
        self.finish_task(result)
        self.clock = PhaseClock()
        self.boundary(Position(task_id + 1), None)

    def resume_of(self, start: Position, phase: str) -> Resume | None:
        """How ``phase`` resumes: from the run state when it was saved inside that phase."""
        if self.resumed is None or start.phase != phase:
            return None
        return Resume(start, self.resumed.fit, self.resumed.rng)

    # ------------------------------------------------------------------- phases
    def train_phase(self, task_id: int, teacher: ContinualModel | None, resume: Resume | None) -> None:
        dataset = self.learner.training_set(task_id)
        memory = self.learner.memory
        self.say(f"task {task_id}: training on {len(dataset)} images "  # type: ignore[arg-type]
                 f"({len(memory)} from memory), classes {self.scenarios.classes_seen(task_id)}")
        recipe = self.settings.recipe
        phase = Phase(task_id, TRAIN, dataset, self.learner.objective(self.model, TRAIN),
                      recipe.lr_of(task_id, self.ctx.world_size), recipe.epochs_of(task_id), shuffle=True,
                      teacher=teacher, schedule_length=recipe.schedule_epochs(task_id),
                      memory=self.learner.memory_dataset() if len(memory) else None,
                      find_unused=self.learner.unused_parameters(self.model),
                      after_step=self.learner.step_constraint(self.model))
        self.trainer.fit(self.model, phase, resume)
        self.learner.end_training(self.model, task_id)

    def memory_phase(self, task_id: int, teacher: ContinualModel | None, resume: Resume | None) -> None:
        quota = self.learner.memory_quota(task_id)
        if quota is None:
            return
        self.say(f"task {task_id}: memory update, {quota} exemplars per class ({self.settings.memory.rehearsal})")
        self.learner.update_memory(self.model, task_id, quota)

    def finetune_phase(self, task_id: int, teacher: ContinualModel | None, resume: Resume | None) -> None:
        """Balanced finetuning on the memory, with ``freeze_ft``, when it applies."""
        dataset = self.learner.finetuning_set(task_id)
        if dataset is None:
            return
        # Inside the phase (a run state saved mid-finetuning), the model already is as finetuning made it.
        self.learner.begin_finetuning(self.model, resumed=resume is not None and resume.fit is not None)
        recipe = self.settings.recipe
        phase = Phase(task_id, FINETUNE, dataset, self.learner.objective(self.model, FINETUNE),
                      recipe.finetuning_lr_of(task_id, self.ctx.world_size), recipe.finetuning_epochs,
                      shuffle=not self.settings.learner.ft_no_sampling,
                      teacher=self.learner.finetuning_teacher(teacher), schedule_length=None, memory=dataset,
                      find_unused=self.learner.unused_parameters(self.model),
                      after_step=self.learner.step_constraint(self.model))
        self.trainer.fit(self.model, phase, resume)
        self.learner.end_finetuning(self.model)

    def evaluate(self, task_id: int) -> tuple[TaskAccuracy, int]:
        return evaluate_seen_classes(self.learner, self.model, self.settings, self.ctx, self.loaders, self.scenarios,
                                     task_id)

    # -------------------------------------------------------------- end of a task
    def task_result(self, task_id: int, accuracy: TaskAccuracy, params: dict[str, int], nb_images: int,
                    others: dict[str, float]) -> TaskResult:
        previous = [r for r in self.results if r.task < task_id]
        matrix = [r.acc_per_task for r in previous] + [accuracy.per_task]
        memory = self.learner.memory
        return TaskResult(
            task=task_id, classes_seen=self.scenarios.classes_seen(task_id), acc1=accuracy.top1, acc5=accuracy.top5,
            acc_per_task=accuracy.per_task, acc_old=accuracy.old, acc_new=accuracy.new,
            acc_task_incremental=accuracy.task_incremental, acc_task_prediction=accuracy.task_prediction,
            avg_acc=average_incremental_accuracy([r.acc1 for r in previous] + [accuracy.top1]),
            forgetting=forgetting(matrix), backward_transfer=backward_transfer(matrix),
            params_total=params["total"], params_trainable=params["trainable"],
            params_without_head_div=params["without_head_div"], memory_size=len(memory),
            memory_per_class=memory.counts_per_class(), seconds=self.clock.snapshot(), eval_images=nb_images,
            world_size=self.ctx.world_size, memory_mode=self.learner.memory_mode,
            memory_total=self.learner.total_memory(), memory_fingerprints=gather_objects(memory.fingerprint()),
            acc1_other=others,
        )

    def finish_task(self, result: TaskResult) -> None:
        """Log the task, checkpoint the model and the memory, print the task's line."""
        self.results.append(result)
        task_id = result.task
        if self.logs is not None:
            self.logs.add_task(result)
            checkpoints.save_task_checkpoint(self.run_dir, task_id, self.model, dict(self.settings.options),
                                             self.ctx.world_size)
            if self.reporter is not None:  # after the checkpoint: a plotting failure must not lose the model
                self.reporter.task_done(self.logs.task_results(), self.logs.epoch_records())
        rank = checkpoints.memory_rank(self.ctx.rank, self.ctx.world_size, self.learner.memory_mode)
        if self.ctx.is_main or rank is not None:  # one file, or one per process
            checkpoints.save_memory(self.run_dir, task_id, self.learner.memory, rank)
        no_old_classes = result.acc_old is None or math.isnan(result.acc_old)  # the first task
        old = "-" if no_old_classes else f"{result.acc_old:.2f}"
        others = "".join(f" {name} {top1:.2f}" for name, top1 in result.acc1_other.items())
        self.say(f"task {task_id}: top-1 {result.acc1:.2f} top-5 {result.acc5:.2f} "
                 f"old {old} new {result.acc_new:.2f} task-IL {result.acc_task_incremental:.2f} "
                 f"task-pred {result.acc_task_prediction:.2f}{others} | Avg {result.avg_acc:.2f} "
                 f"forgetting {result.forgetting:.2f} BWT {result.backward_transfer:.2f} | "
                 f"{result.memory_mode} memory, {result.memory_total} exemplars over {self.ctx.world_size} process(es)")

    # ------------------------------------------------ RunControl: what phases ask
    def epoch_done(self, phase: Phase, epoch: int, stats: EpochStats, lr: float) -> None:
        losses = " ".join(f"{k} {v:.4f}" for k, v in stats.losses.items())
        self.say(f"  task {phase.task_id} {phase.name} epoch {epoch + 1}/{phase.epochs}: {losses} lr {lr:.2e} "
                 f"{stats.images_per_second:.0f} img/s")
        if self.logs is not None:
            record = EpochRecord(phase.task_id, phase.name, epoch, lr, stats.losses, stats.images_per_second,
                                 stats.seconds, stats.data_seconds)
            index = self.logs.add_epoch(record)
            if self.reporter is not None:
                self.reporter.epoch_done(index, record)
        every = self.settings.run.eval_every
        if every and (epoch + 1) % every == 0 and epoch + 1 < phase.epochs:
            accuracy, _ = self.evaluate(phase.task_id)
            self.say(f"  task {phase.task_id} {phase.name} epoch {epoch + 1}: top-1 {accuracy.top1:.2f}")

    def stop_requested(self) -> bool:
        return self.stop.requested(self.ctx.device)

    def stop_requested_after_step(self) -> bool:
        return self.stop.requested_after_step(self.ctx.device)

    def preempted(self, where: str) -> NoReturn:
        raise Preempted(self.stop.signal_name or "SIGTERM", where)

    def save(self, position: Position, teacher: ContinualModel | None, fit: FitState | None = None) -> None:
        """Everything this process needs to continue at ``position`` exactly (continual.state)."""
        self.sequence += 1
        state = RunState(position, self.model, teacher, self.learner.memory, capture_rng(self.rng),
                         list(self.results), self.logs.epoch_records() if self.logs is not None else [],
                         self.clock.snapshot(), fit)
        save_state(self.run_dir, self.sequence, self.ctx.rank,
                   state.state_dict(sequence=self.sequence, world_size=self.ctx.world_size,
                                    config=dict(self.settings.options)))
        barrier()

    def boundary(self, position: Position, teacher: ContinualModel | None) -> None:
        """End of a phase: save the run state, then stop here if a signal asked for it."""
        self.save(position, teacher)
        if self.stop_requested():
            self.preempted(f"before {position.phase} of task {position.task}")
