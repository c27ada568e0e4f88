"""The run folder of a run: a new one, or an earlier one continued from a run state or a task checkpoint.

Every refusal (a missing folder, other options than the saved run's, a
checkpoint of another scenario) is a ConfigError raised before any training.
"""
from __future__ import annotations

from pathlib import Path

import torch

from continual.config.errors import ConfigError
from continual.config.settings import RunSettings, Settings
from continual.report.records import TaskResult
from continual.report.run_log import run_name
from continual.runtime.device import attention_kernel_for
from continual.runtime.distributed import all_reduce_sum, broadcast_object
from continual.state import checkpoints
from continual.state.run_state import RunState
from continual.state.saved_runs import (
    Position,
    config_differences,
    find_run_to_resume,
    load_latest_state,
    saved_process_count,
)
from continual.train.loop import TaskLoop
from continual.vocabulary import FINETUNE, TRAIN


def resume_folder(run: RunSettings, data_set: str) -> Path | None:
    """The run folder to continue: ``--resume DIR``, or with ``--auto-resume`` the newest saved run of this name."""
    if run.resume:
        run_dir = Path(run.resume)
        if not run_dir.is_dir():
            raise ConfigError(f"--resume {run_dir}: no such run folder")
        return run_dir
    if run.auto_resume:
        return find_run_to_resume(Path(run.output_basedir), data_set, run.log_category, run.name)
    return None


def prepare_run_dir(settings: Settings) -> tuple[Path, Path, bool]:
    """(run folder, mirrored log path, whether it continues an earlier run)."""
    run, data_set = settings.run, settings.data.data_set
    run_dir = resume_folder(run, data_set)
    continuing = run_dir is not None
    if run_dir is None and run.output_dir and not run.name:  # the published --output-dir, unless --name is set
        run_dir = new_output_dir(Path(run.output_dir))
    if run_dir is not None:
        relative = Path(data_set) / run.log_category / run_dir.name
    else:
        relative = run_name(data_set, run.log_category, run.name)
        run_dir = Path(run.output_basedir) / relative
        continuing = run_dir.exists()
    return run_dir, Path(run.log_dir) / relative.with_suffix(".jsonl"), continuing


def new_output_dir(run_dir: Path) -> Path:
    """``--output-dir``: the folder of a new run, which must not hold anything yet."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"--output-dir {run_dir}: the folder exists and is not empty; continue it with "
                          f"--resume {run_dir}, or give a new folder")
    return run_dir


def restore_run_state(loop: TaskLoop) -> Position:
    """Load the newest complete run state of the run folder into ``loop``; return where to continue."""
    ctx = loop.ctx

    def all_ok(ok: bool) -> bool:
        failures = torch.tensor([0.0 if ok else 1.0], device=ctx.device)
        return all_reduce_sum(failures).item() == 0

    saved_processes = saved_process_count(loop.run_dir)
    if saved_processes is not None and saved_processes != ctx.world_size:
        raise ConfigError(f"--resume {loop.run_dir}: the run was saved by {saved_processes} process(es) and is "
                          f"resumed with {ctx.world_size}: resume it with {saved_processes} (e.g. bash train.sh cpu "
                          f"{saved_processes}, or {saved_processes} GPUs)")
    loaded = load_latest_state(loop.run_dir, ctx.rank, ctx.world_size, say=print, all_ok=all_ok)
    if loaded is None:
        raise ConfigError(
            f"no saved run state (checkpoints/state_*_rank*.pth for {ctx.world_size} process(es)) in "
            f"{loop.run_dir}; to restart from the end of a task use --resume DIR --start-task K")
    loop.sequence, saved = loaded
    differences = config_differences(saved["config"], dict(loop.settings.options))
    if saved["world_size"] != ctx.world_size:
        differences.insert(0, f"world_size ({saved['world_size']} saved, {ctx.world_size} now)")
    if differences:
        raise ConfigError(f"refusing to resume {loop.run_dir}: these options differ from the saved run: "
                          f"{', '.join(differences)}")
    state = RunState.from_state_dict(saved, ctx.device, attention_kernel_for(ctx.device))
    loop.model = state.model
    loop.learner.memory = state.memory
    loop.results = list(state.results)
    if loop.logs is not None:
        loop.logs.reset(state.results, state.epochs)
    loop.resumed = state
    loop.model.set_phase(FINETUNE if state.position.phase == FINETUNE else TRAIN)
    return state.position


def restart_at_task(loop: TaskLoop, start_task: int) -> None:
    """``--start-task K``: load the model and memory saved after task K - 1 of the run folder."""
    previous = start_task - 1
    model, _ = checkpoints.load_task_checkpoint(checkpoints.checkpoint_path(loop.run_dir, previous), loop.ctx.device)
    expected = loop.scenarios.classes_per_task[:start_task]
    if model.nb_classes_per_task != expected:
        raise ConfigError(f"checkpoint of task {previous} has classes per task {model.nb_classes_per_task}, "
                          f"the scenario {expected}")
    loop.model = model
    if loop.settings.memory.memory_size:
        loop.learner.memory = checkpoints.load_memory(
            checkpoints.memory_path(loop.run_dir, previous, loop.memory_rank()))
    rows = None
    if loop.logs is not None:
        loop.logs.keep_before_task(start_task)
        rows = loop.logs.tasks.rows
    loop.results = [TaskResult.from_row(row) for row in broadcast_object(rows)]  # type: ignore[union-attr]


def latest_task_checkpoint(run_dir: Path) -> int:
    """Task id of the last checkpoint in a run folder."""
    tasks = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("checkpoint_*.pth"))
    if not tasks:
        raise ConfigError(f"no checkpoint_<task>.pth in {run_dir / 'checkpoints'}")
    return tasks[-1]
