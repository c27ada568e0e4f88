"""The run folder of a run: a new one, or an earlier one continued from a run state or a task checkpoint.

Each way of starting gives a ``Start`` (the model, the memory, the results so far and, for a full
resume, the run state), from which the session builds the task loop whole. Every refusal (a missing
folder, other options than the saved run's, a checkpoint of another scenario) is a ConfigError raised
before any training.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from continual.config.errors import ConfigError
from continual.config.options import config_differences
from continual.config.settings import RunSettings, Settings
from continual.data.scenarios import Scenarios
from continual.method.rehearsal import Memory
from continual.model.base import ContinualModel
from continual.report.records import TaskResult
from continual.report.run_log import RunLogs, run_name
from continual.runtime.device import attention_kernel_for
from continual.runtime.distributed import DistContext, all_reduce_sum, broadcast_object
from continual.state import checkpoints
from continual.state.run_state import RunState
from continual.state.saved_runs import (
    Position,
    find_run_to_resume,
    load_latest_state,
    saved_process_count,
)
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


def check_same_run(action: str, run_dir: Path, saved_config: dict[str, object], options: Mapping[str, object],
                   saved_processes: int | None = None, processes: int | None = None) -> None:
    """The one rule for every way back into a run folder (``--resume``, ``--resume --start-task K``,
    ``--eval --resume``): refuse, before any work, a run whose computation differs from the saved one's,
    naming the two numbers of processes or each differing option. ``processes`` None: the number does
    not matter (evaluation shards the test set exactly)."""
    check_processes(action, saved_processes, processes)
    differences = config_differences(saved_config, dict(options))
    if differences:
        raise ConfigError(f"{action}: refused, these options differ from the saved run: {'; '.join(differences)}; "
                          f"give the options the run was saved with (listed in {run_dir / 'config.yaml'})")


def check_processes(action: str, saved: int | None, now: int | None) -> None:
    if now is not None and saved is not None and saved != now:
        raise ConfigError(f"{action}: the run was saved by {saved} process(es) and is resumed with {now}: "
                          f"resume it with {saved} (e.g. bash train.sh cpu {saved}, or {saved} GPUs)")


@dataclass(frozen=True)
class Start:
    """Where a run begins: a new model at task 0, or what a run folder holds. ``resumed`` is the full run
    state being continued (until the loop has caught up with it); ``sequence`` the number of the last
    saved run state."""

    model: ContinualModel
    memory: Memory
    results: list[TaskResult]
    position: Position
    resumed: RunState | None = None
    sequence: int = 0


def restore_run_state(settings: Settings, ctx: DistContext, run_dir: Path, logs: RunLogs | None) -> Start:
    """The newest complete run state of the run folder (the logs take its records): where to continue."""
    action = f"--resume {run_dir}"

    def all_ok(ok: bool) -> bool:
        failures = torch.tensor([0.0 if ok else 1.0], device=ctx.device)
        return all_reduce_sum(failures).item() == 0

    check_processes(action, saved_process_count(run_dir), ctx.world_size)  # before reading any file
    loaded = load_latest_state(run_dir, ctx.rank, ctx.world_size, say=print, all_ok=all_ok)
    if loaded is None:
        raise ConfigError(no_run_state_message(run_dir))
    sequence, saved = loaded
    check_same_run(action, run_dir, saved["config"], settings.options, saved["world_size"], ctx.world_size)
    state = RunState.from_state_dict(saved, ctx.device, attention_kernel_for(ctx.device))
    if logs is not None:
        logs.reset(state.results, state.epochs)
    state.model.set_phase(FINETUNE if state.position.phase == FINETUNE else TRAIN)
    return Start(state.model, state.memory, list(state.results), state.position, state, sequence)


def no_run_state_message(run_dir: Path) -> str:
    """Why a full resume cannot start, and the way back that remains: the end of the newest saved task."""
    states = sorted((run_dir / "checkpoints").glob("state_*_rank*.pth"))
    tasks = saved_tasks(run_dir)
    restart = (f"restart from the end of task {tasks[-1]} with --resume {run_dir} --start-task {tasks[-1] + 1}"
               if tasks else f"no task was completed ({run_dir / 'checkpoints'} holds no checkpoint_<task>.pth): "
                             f"start the run again in a new folder")
    if states:
        return (f"--resume {run_dir}: every run state is unreadable ({len(states)} checkpoints/state_*.pth files, "
                f"see the warnings above); {restart}")
    return f"--resume {run_dir}: no saved run state (checkpoints/state_*_rank*.pth); {restart}"


def task_checkpoint(action: str, run_dir: Path, task_id: int, device: torch.device) -> tuple[ContinualModel, dict]:
    """The model saved after ``task_id`` and its checkpoint, or a ConfigError saying what to do."""
    path = checkpoints.checkpoint_path(run_dir, task_id)
    try:
        return checkpoints.load_task_checkpoint(path, device)
    except FileNotFoundError as error:
        raise ConfigError(f"{action}: {error}; {_other_tasks(run_dir)}") from error
    except ValueError as error:
        raise ConfigError(f"{action}: {error}; it was truncated or corrupted: {_other_tasks(run_dir, task_id)}"
                          ) from error


def _other_tasks(run_dir: Path, unreadable: int | None = None) -> str:
    tasks = [task for task in saved_tasks(run_dir) if task != unreadable]
    if not tasks:
        return "the folder holds no other task checkpoint"
    return f"the folder holds the checkpoints of tasks {tasks} (--start-task K continues after task K - 1)"


def restart_at_task(settings: Settings, ctx: DistContext, run_dir: Path, scenarios: Scenarios,
                    logs: RunLogs | None) -> Start:
    """``--start-task K``: the model and memory saved after task K - 1 of the run folder (the logs forget
    task K and the later ones)."""
    start_task = settings.run.start_task
    previous = start_task - 1
    action = f"--resume {run_dir} --start-task {start_task}"
    model, saved = task_checkpoint(action, run_dir, previous, ctx.device)
    check_same_run(action, run_dir, saved["config"], settings.options, saved.get("world_size"), ctx.world_size)
    expected = scenarios.classes_per_task[:start_task]
    if model.nb_classes_per_task != expected:
        raise ConfigError(f"{action}: the checkpoint of task {previous} has classes per task "
                          f"{model.nb_classes_per_task}, the scenario {expected}")
    memory = Memory()
    if settings.memory.memory_size:
        rank = checkpoints.memory_rank(ctx.rank, ctx.world_size, settings.memory.mode(ctx.world_size))
        memory = saved_memory(action, checkpoints.memory_path(run_dir, previous, rank))
    rows = None
    if logs is not None:
        logs.keep_before_task(start_task)
        rows = logs.tasks.rows
    results = [TaskResult.from_row(row) for row in broadcast_object(rows)]  # type: ignore[union-attr]
    return Start(model, memory, results, Position(start_task))


def saved_memory(action: str, path: Path) -> Memory:
    """The rehearsal memory of ``path``; a missing, unreadable or empty file is a ConfigError (a run
    must never continue with an empty memory in place of the saved one)."""
    try:
        memory = checkpoints.load_memory(path)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"{action}: {error}; continue from an earlier task (--start-task K with a readable "
                          f"memory_<K-1>.npz), or from the full run state with --resume alone") from error
    if not len(memory):
        raise ConfigError(f"{action}: the rehearsal memory {path} holds no exemplars, but --memory-size is set; "
                          f"continue from an earlier task, or from the full run state with --resume alone")
    return memory


def evaluation_memory(action: str, run_dir: Path, task_id: int, memory_size: int) -> Memory:
    """Every exemplar kept after ``task_id`` (the union of the processes' memories when each had its own), for a
    method that classifies with its exemplars; an empty memory without ``memory_size``."""
    if not memory_size:
        return Memory()
    paths = checkpoints.task_memory_paths(run_dir, task_id)
    if not paths:
        raise ConfigError(f"{action}: no rehearsal memory of task {task_id} in {run_dir / 'memory'} "
                          f"(memory_{task_id}.npz or memory_{task_id}_rank<R>.npz), but --memory-size is set")
    try:
        return Memory.union([checkpoints.load_memory(path) for path in paths])
    except ValueError as error:
        raise ConfigError(f"{action}: {error}") from error


def saved_tasks(run_dir: Path) -> list[int]:
    """Ids of the tasks whose checkpoint the run folder holds, in order."""
    paths = (run_dir / "checkpoints").glob("checkpoint_*.pth")
    return sorted(int(path.stem.split("_")[1]) for path in paths if path.stem.split("_")[1].isdigit())


def latest_task_checkpoint(run_dir: Path) -> int:
    """Task id of the last checkpoint in a run folder."""
    tasks = saved_tasks(run_dir)
    if not tasks:
        raise ConfigError(f"--eval --resume {run_dir}: no checkpoint_<task>.pth in {run_dir / 'checkpoints'}")
    return tasks[-1]
