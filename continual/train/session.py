"""A whole run: set-up, the tasks, the summary; or ``--eval`` of a saved checkpoint.

``run`` is what main.py calls for one class order (continual.train.orders
calls it once per order).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from continual.config.errors import ConfigError
from continual.config.files import save_config
from continual.config.settings import Settings
from continual.config.validate import check_world_size
from continual.data.scenarios import Scenarios, load_scenarios
from continual.method.learner import Learner, LearnerParts
from continual.method.registry import METHODS, build_learner
from continual.method.rehearsal import Memory
from continual.model import build
from continual.model.base import ContinualModel
from continual.report.progress import bars_wanted
from continual.report.records import EvalRecord, TaskResult
from continual.report.results import RunResults
from continual.report.run_log import RunLogs
from continual.report.table import run_report, task_table
from continual.runtime.device import attention_kernel_for, set_deterministic
from continual.runtime.distributed import DistContext, broadcast_object
from continual.runtime.preemption import Preempted, StopRequest
from continual.runtime.seeding import restore_rng, seed_everything
from continual.state.data_split import check_split, record_split
from continual.state.pretrained import start_from_pretrained, write_pretrained_record
from continual.state.saved_runs import Position
from continual.train.fit import precision_of
from continual.train.loaders import Loaders
from continual.train.loop import TaskLoop, evaluate_other_predictions, evaluate_seen_classes
from continual.train.run_folder import (
    Start,
    check_same_run,
    evaluation_memory,
    latest_task_checkpoint,
    prepare_run_dir,
    restart_at_task,
    restore_run_state,
    task_checkpoint,
)


@dataclass(frozen=True)
class Outcome:
    """What a training run leaves: its folder, its task results and (main process) its summary."""

    run_dir: Path
    results: list[TaskResult]
    summary: dict | None


def method_of(settings: Settings, ctx: DistContext, scenarios: Scenarios, loaders: Loaders, rng: np.random.Generator,
              memory: Memory) -> Learner:
    """The ``--method`` of the options (continual.method.registry), holding ``memory``."""
    return build_learner(settings.learner.method, LearnerParts(settings, scenarios, ctx, loaders.features, rng, memory))


def build_loop(settings: Settings, ctx: DistContext, run_dir: Path, scenarios: Scenarios, start: Start,
               logs: RunLogs | None, reporter: RunResults | None) -> TaskLoop:
    """The task loop of a run, whole: the method with the start's memory, the run's files, a stop request
    (installed while the tasks run) and the progress bars' switch. Both draw from the process's generator."""
    rng = np.random.default_rng(settings.run.seed + ctx.rank)
    loaders = Loaders(settings.loader, settings.recipe, ctx)
    learner = method_of(settings, ctx, scenarios, loaders, rng, start.memory)
    return TaskLoop(settings, ctx, run_dir, scenarios, start.model, learner, loaders, rng, logs, reporter,
                    StopRequest(), bars_wanted(settings.run.progress, ctx.is_main), start.results, start.resumed,
                    start.sequence)


def new_model(settings: Settings, ctx: DistContext, nb_classes: int) -> ContinualModel:
    config = dataclasses.replace(settings.model, gpsa_kernel=attention_kernel_for(ctx.device))
    return build.new_model(config, nb_classes).to(ctx.device)


def run(settings: Settings, ctx: DistContext) -> list[TaskResult] | list[EvalRecord]:
    """Run every task of the scenario (up to ``max_task``), or ``--eval`` a checkpoint."""
    check_world_size(settings.run.world_size, ctx.world_size)
    if settings.learner.method not in METHODS:
        raise ConfigError(f"--method {settings.learner.method}: unknown method; the methods are "
                          f"{', '.join(METHODS)} (continual/method/registry.py)")
    if settings.run.eval:
        return [evaluate_checkpoint(settings, ctx)]
    return train(settings, ctx).results


def evaluate_checkpoint(settings: Settings, ctx: DistContext) -> EvalRecord:
    """``--eval --resume DIR [--start-task K]``: accuracy of the model saved after task K-1 (default: the last)."""
    run_dir = Path(settings.run.resume)
    if not run_dir.is_dir():
        raise ConfigError(f"--eval --resume {run_dir}: no such run folder")
    start_task = settings.run.start_task
    task_id = start_task - 1 if start_task else latest_task_checkpoint(run_dir)
    action = f"--eval --resume {run_dir}"
    check_split(run_dir, settings.data)
    model, saved = task_checkpoint(action, run_dir, task_id, ctx.device)
    check_same_run(action, run_dir, saved["config"], settings.options)  # any number of processes evaluates alike
    scenarios = load_scenarios(settings.data)
    loaders = Loaders(settings.loader, settings.recipe, ctx)
    # Every process holds every exemplar the task kept: the memory is global here, whatever it was in the run.
    memory = evaluation_memory(action, run_dir, task_id, settings.memory.memory_size)
    settings = dataclasses.replace(settings, memory=dataclasses.replace(settings.memory, global_memory=True))
    learner = method_of(settings, ctx, scenarios, loaders, np.random.default_rng(settings.run.seed), memory)
    accuracy, nb_images = evaluate_seen_classes(learner, model, settings, ctx, loaders, scenarios, task_id)
    others = evaluate_other_predictions(learner, model, settings, ctx, loaders, scenarios, task_id)
    record = EvalRecord(task_id, scenarios.classes_seen(task_id), accuracy.top1, accuracy.top5, accuracy.per_task,
                        accuracy.old, accuracy.new, accuracy.task_incremental, accuracy.task_prediction, nb_images)
    if ctx.is_main:
        other_lines = "".join(f"\n{name}: top-1 {top1:.2f}" for name, top1 in others.items())
        print(f"checkpoint of task {task_id} ({record.classes_seen} classes, {nb_images} test images), "
              f"{run_dir}:\n{task_table([record])}\naccuracy per task {[round(a, 2) for a in accuracy.per_task]}"
              f"{other_lines}", flush=True)
    return record


def start_run(settings: Settings, ctx: DistContext, started: float) -> tuple[TaskLoop, Position, int]:
    """Seeds, data, run folder and where the run begins (a new model, or what the folder holds): (loop, start,
    last task + 1). Nothing is written in the folder before a resume is accepted."""
    if settings.run.deterministic:
        set_deterministic(ctx.device)
    seed_everything(settings.run.seed + ctx.rank)
    precision = precision_of(settings.precision, ctx.device)
    for note in precision.warnings(amp_requested_but_disabled=settings.precision.amp_overridden):
        if ctx.is_main:
            print(f"warning: {note}", file=sys.stderr, flush=True)
    scenarios = load_scenarios(settings.data)  # fails fast on missing or malformed data
    classes_per_task = scenarios.classes_per_task
    run_dir, mirror, continuing = broadcast_object(prepare_run_dir(settings))  # rank 0's names
    check_split(run_dir, settings.data)  # a drawn train/test split (ImageNet-R) must be the saved one
    logs = RunLogs(run_dir, mirror) if ctx.is_main else None
    if continuing and settings.run.start_task:
        start = restart_at_task(settings, ctx, run_dir, scenarios, logs)
    elif continuing:
        start = restore_run_state(settings, ctx, run_dir, logs)
    else:
        start = Start(new_model(settings, ctx, classes_per_task[0]), Memory(), [], Position(0))
    pretrained = start_from_pretrained(settings, start.model, run_dir, continuing)
    max_task = settings.run.max_task
    last_task = len(classes_per_task) if max_task is None else min(max_task, len(classes_per_task))
    reporter = None
    if logs is not None:  # the main process, once the resume is accepted
        run_dir.mkdir(parents=True, exist_ok=True)
        name = f"config_resume_{time.strftime('%Y%m%d-%H%M%S')}.yaml" if continuing else "config.yaml"
        save_config(dict(settings.options), run_dir / name)
        record_split(run_dir, settings.data)
        write_pretrained_record(run_dir, pretrained)
        reporter = RunResults(run_dir, settings.run, last_task, started)  # rebuilds tensorboard/ from the logs
        reporter.resume_from(logs.task_results(), logs.epoch_records())
    return build_loop(settings, ctx, run_dir, scenarios, start, logs, reporter), start.position, last_task


def train(settings: Settings, ctx: DistContext) -> Outcome:
    """Train task after task in a new or resumed run folder; print the summary at the end."""
    started = time.perf_counter()
    loop, start, last_task = start_run(settings, ctx, started)
    classes_per_task = loop.scenarios.classes_per_task
    loop.say(f"run folder {loop.run_dir}: {len(classes_per_task)} tasks {classes_per_task}, "
             f"running from task {start.task} ({start.phase}) to {last_task - 1} on {ctx.world_size} process(es), "
             f"{ctx.device}; {loop.learner.memory_mode} memory of "
             f"{settings.memory.budget(ctx.world_size)} exemplars per process")
    if loop.resumed is not None:
        restore_rng(loop.resumed.rng, loop.rng)
    loop.stop.install()
    try:
        for task_id in range(start.task, last_task):
            loop.run_task(task_id, start if task_id == start.task else None)
    except Preempted as stopped:
        loop.say(f"{stopped}; checkpoint saved. Resume with the same command and --resume {loop.run_dir}")
        raise
    finally:
        loop.stop.uninstall()
        if loop.reporter is not None:
            loop.reporter.close()
    summary = None
    if loop.reporter is not None and loop.logs is not None and loop.logs.tasks.rows:
        summary = loop.reporter.write_summary(loop.logs.task_results())  # the final wall time
        loop.say(f"\nresults of {loop.run_dir} (summary.json, plots and tensorboard/ in that folder):\n"
                 f"{run_report(summary)}")
    return Outcome(loop.run_dir, loop.results, summary)
