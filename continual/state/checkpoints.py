"""Task-boundary checkpoints and rehearsal memory files.

Checkpoints hold only tensors and plain Python data, so they load with
``torch.load(weights_only=True)``; the memory is a ``.npz`` read with
``allow_pickle=False``. Every file is written to a temporary name in the same
folder and moved into place with ``os.replace``: a crash at any instant leaves
the previous file intact.
"""
from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import torch

from continual.method.rehearsal import Memory
from continual.model.base import ContinualModel
from continual.model.build import grown_model
from continual.model.config import config_from_dict
from continual.runtime.device import attention_kernel_for
from continual.runtime.files import atomic_write, reading_error

FORMAT = "dytox-continual/1"


def checkpoint_path(run_dir: Path, task_id: int) -> Path:
    return run_dir / "checkpoints" / f"checkpoint_{task_id}.pth"


def memory_path(run_dir: Path, task_id: int, rank: int | None = None) -> Path:
    """One file per task; one per process and task when processes hold different memories."""
    suffix = "" if rank is None else f"_rank{rank}"
    return run_dir / "memory" / f"memory_{task_id}{suffix}.npz"


def memory_rank(rank: int, world_size: int, memory_mode: str) -> int | None:
    """The rank in a memory file's name: with several processes each has its own memory, unless global."""
    return rank if world_size > 1 and memory_mode != "global" else None


def save_task_checkpoint(run_dir: Path, task_id: int, model: ContinualModel, config: dict[str, object],
                         world_size: int = 1) -> Path:
    """The model after ``task_id`` with what is needed to rebuild it, the run's configuration and its
    number of processes (a restart from this task must use as many)."""
    state = {
        "format": FORMAT,
        "task_id": task_id,
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(model.config),
        "nb_classes_per_task": list(model.nb_classes_per_task),
        "config": config,
        "world_size": world_size,
    }
    path = checkpoint_path(run_dir, task_id)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_task_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[ContinualModel, dict]:
    """Rebuild the model saved by :func:`save_task_checkpoint`; also return the raw checkpoint."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated or foreign file: say which
        raise ValueError(f"checkpoint {path} cannot be read ({reading_error(error)})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this project (format {FORMAT})")
    device = torch.device(device)
    config = config_from_dict(state["model_config"], gpsa_kernel=attention_kernel_for(device))
    model = grown_model(config, state["nb_classes_per_task"], state["model"])
    return model.to(device), state


def save_memory(run_dir: Path, task_id: int, memory: Memory, rank: int | None = None) -> Path:
    path = memory_path(run_dir, task_id, rank)
    x, y, t = memory.get()  # an empty memory: three empty arrays

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, x=x, y=y, t=t)

    atomic_write(path, write)
    return path


def load_memory(path: Path) -> Memory:
    """The memory saved by :func:`save_memory`; a missing file is a FileNotFoundError, a truncated or
    corrupted one a ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"no rehearsal memory at {path}")
    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle, and say so
        raise ValueError(f"rehearsal memory {path} cannot be read (not a complete .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y, t = data["x"], data["y"], data["t"]
    except Exception as error:  # a truncated zip, a damaged array, a missing key: say which file
        raise ValueError(f"rehearsal memory {path} cannot be read ({reading_error(error)})") from error
    if not len(x) == len(y) == len(t):
        raise ValueError(f"rehearsal memory {path} is inconsistent: {len(x)} images, {len(y)} labels, "
                         f"{len(t)} task ids")
    memory = Memory()
    memory.load_state_dict({"x": x if len(y) else None, "y": y, "t": t})
    return memory


def task_memory_paths(run_dir: Path, task_id: int) -> list[Path]:
    """The memory files saved after ``task_id``: the one file, or each process's in rank order (none: [])."""
    single = memory_path(run_dir, task_id)
    if single.is_file():
        return [single]
    prefix = f"memory_{task_id}_rank"
    ranks = sorted(int(path.stem[len(prefix):]) for path in (run_dir / "memory").glob(f"{prefix}*.npz")
                   if path.stem[len(prefix):].isdigit())
    return [memory_path(run_dir, task_id, rank) for rank in ranks]
