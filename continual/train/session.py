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
from continual.method.dytox_learner import DyToxLearner
from continual.model import build
from continual.report.progress import bars_wanted
from continual.report.records import EvalRecord, TaskResult
from continual.report.results import RunResults
from continual.report.run_log import RunLogs
from continual.report.table import run_report, task_table
from continual.runtime.device import attention_kernel_for, set_deterministic
from continual.runtime.distributed import DistContext, broadcast_object
from continual.runtime.preemption import Preempted, StopRequest
from continual.runtime.seeding import restore_rng, seed_everything
from continual.state.saved_runs import Position
from continual.train.fit import precision_of
from continual.train.loaders import Loaders
from continual.train.loop import TaskLoop
from continual.train.run_folder import (
    check_same_run,
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


def build_loop(settings: Settings, ctx: DistContext, run_dir: Path, scenarios: Scenarios,
               model: build.ContinualModel) -> TaskLoop:
    """The task loop of a run, with the DyTox learner; both draw from the process's generator."""
    rng = np.random.default_rng(settings.run.seed + ctx.rank)
    loaders = Loaders(settings.loader, settings.recipe, ctx)
    learner = DyToxLearner(settings.learner, settings.loss, settings.memory, scenarios, ctx, loaders.features, rng)
    return TaskLoop(settings, ctx, run_dir, scenarios, model, learner, loaders, rng)


def new_model(settings: Settings, ctx: DistContext, nb_classes: int) -> build.ContinualModel:
    config = dataclasses.replace(settings.model, gpsa_kernel=attention_kernel_for(ctx.device))
    return build.new_model(config, nb_classes).to(ctx.device)


def run(settings: Settings, ctx: DistContext) -> list[TaskResult] | list[EvalRecord]:
    """Run every task of the scenario (up to ``max_task``), or ``--eval`` a checkpoint."""
    check_world_size(settings.run.world_size, ctx.world_size)
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
    model, saved = task_checkpoint(action, run_dir, task_id, ctx.device)
    check_same_run(action, run_dir, saved["config"], settings.options)  # any number of processes evaluates alike
    scenarios = load_scenarios(settings.data)
    loop = build_loop(settings, ctx, run_dir, scenarios, model)
    accuracy, nb_images = loop.evaluate(task_id)
    record = EvalRecord(task_id, scenarios.classes_seen(task_id), accuracy.top1, accuracy.top5, accuracy.per_task,
                        accuracy.old, accuracy.new, accuracy.task_incremental, accuracy.task_prediction, nb_images)
    loop.say(f"checkpoint of task {task_id} ({record.classes_seen} classes, {nb_images} test images), "
             f"{run_dir}:\n{task_table([record])}\naccuracy per task {[round(a, 2) for a in accuracy.per_task]}")
    return record


def start_run(settings: Settings, ctx: DistContext, started: float) -> tuple[TaskLoop, Position, int]:
    """Seeds, data, run folder and (when continuing) the restored state: (loop, start, last task + 1)."""
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
    loop = build_loop(settings, ctx, run_dir, scenarios, new_model(settings, ctx, classes_per_task[0]))
    max_task = settings.run.max_task
    last_task = len(classes_per_task) if max_task is None else min(max_task, len(classes_per_task))
    if ctx.is_main:
        loop.logs = RunLogs(run_dir, mirror)
    start = Position(settings.run.start_task)
    if continuing and settings.run.start_task:
        restart_at_task(loop, settings.run.start_task)
    elif continuing:
        start = restore_run_state(loop)
    if ctx.is_main:  # only once the resume is accepted: nothing is written in a refused run's folder
        run_dir.mkdir(parents=True, exist_ok=True)
        name = f"config_resume_{time.strftime('%Y%m%d-%H%M%S')}.yaml" if continuing else "config.yaml"
        save_config(dict(settings.options), run_dir / name)
        loop.reporter = RunResults(run_dir, settings.run, last_task, started)  # rebuilds tensorboard/ from the logs
        loop.reporter.resume_from(loop.logs.task_results(), loop.logs.epoch_records())  # type: ignore[union-attr]
    return loop, start, last_task


def train(settings: Settings, ctx: DistContext) -> Outcome:
    """Train task after task in a new or resumed run folder; print the summary at the end."""
    started = time.perf_counter()
    loop, start, last_task = start_run(settings, ctx, started)
    loop.bars = bars_wanted(settings.run.no_progress, ctx.is_main)
    classes_per_task = loop.scenarios.classes_per_task
    loop.say(f"run folder {loop.run_dir}: {len(classes_per_task)} tasks {classes_per_task}, "
             f"running from task {start.task} ({start.phase}) to {last_task - 1} on {ctx.world_size} process(es), "
             f"{ctx.device}; {loop.learner.memory_mode} memory of "
             f"{settings.memory.budget(ctx.world_size)} exemplars per process")
    if loop.resumed is not None:
        restore_rng(loop.resumed.rng, loop.rng)
    loop.stop = StopRequest().install()
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
