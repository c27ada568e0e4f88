"""The files of resumable run states: where a run stands, and which saved state to continue from.

Each process writes ``checkpoints/state_<sequence>_rank<r>.pth`` at every
phase boundary, every ``--save-every-epoch`` epochs and when stopped by a
signal. A sequence is complete when every rank's file exists; a resume takes
the newest complete sequence that loads, and says so when it has to fall back
to the previous one because a file is truncated or corrupted. Each process
keeps its last two sequences.

Files hold tensors and plain Python data only (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from continual.runtime.files import atomic_write, reading_error
from continual.vocabulary import TASK_STEPS

FORMAT = "dytox-continual-state/1"
_STATE_FILE = re.compile(r"state_(\d+)_rank(\d+)\.pth$")


@dataclass(frozen=True)
class Position:
    """The next thing a run does: ``phase`` of ``task``, from ``epoch`` / ``step`` inside it."""

    task: int
    phase: str = "begin"
    epoch: int = 0
    step: int = 0

    def __post_init__(self) -> None:
        if self.phase not in TASK_STEPS:
            raise ValueError(f"unknown phase {self.phase!r}; phases: {TASK_STEPS}")

    def reached(self, task: int, phase: str) -> bool:
        """Whether the run, resumed here, still has to run ``phase`` of ``task`` (from some point in it)."""
        return (task, TASK_STEPS.index(phase)) >= (self.task, TASK_STEPS.index(self.phase))

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# --------------------------------------------------------------------- memory
def memory_to_plain(x: np.ndarray, y: np.ndarray, t: np.ndarray) -> dict[str, object]:
    """Images as a tensor (or file paths as strings), labels and task ids as tensors."""
    images = [str(p) for p in x] if x.dtype.kind in "US" else torch.from_numpy(np.ascontiguousarray(x))
    return {"x": images, "y": torch.from_numpy(y.astype(np.int64)), "t": torch.from_numpy(t.astype(np.int64))}


def memory_from_plain(state: dict[str, Any]) -> dict[str, np.ndarray | None]:
    x = state["x"]
    y = state["y"].numpy()
    x = np.asarray(x) if isinstance(x, list) else x.numpy()
    return {"x": x if len(y) else None, "y": y, "t": state["t"].numpy()}


# ---------------------------------------------------------------------- files
def state_path(run_dir: Path, sequence: int, rank: int) -> Path:
    return run_dir / "checkpoints" / f"state_{sequence:06d}_rank{rank}.pth"


def _ranks_by_sequence(run_dir: Path) -> dict[int, set[int]]:
    ranks: dict[int, set[int]] = {}
    for path in (run_dir / "checkpoints").glob("state_*_rank*.pth"):
        match = _STATE_FILE.search(path.name)
        if match:
            ranks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    return ranks


def sequences(run_dir: Path, world_size: int) -> list[int]:
    """Complete sequences (a file for every rank), newest first."""
    ranks = _ranks_by_sequence(run_dir)
    return sorted((s for s, r in ranks.items() if r >= set(range(world_size))), reverse=True)


def saved_process_count(run_dir: Path) -> int | None:
    """How many processes wrote the run states of ``run_dir`` (None without any): the highest rank of any
    state file, since the newest sequence may be incomplete (a process killed while the others saved)."""
    ranks = _ranks_by_sequence(run_dir)
    return max(max(r) for r in ranks.values()) + 1 if ranks else None


def save_state(run_dir: Path, sequence: int, rank: int, state: dict[str, object]) -> None:
    """Write this process's state, then drop its files older than the previous sequence."""
    atomic_write(state_path(run_dir, sequence, rank), lambda tmp: torch.save({"format": FORMAT, **state}, tmp))
    for path in (run_dir / "checkpoints").glob(f"state_*_rank{rank}.pth"):
        match = _STATE_FILE.search(path.name)
        if match and int(match.group(1)) < sequence - 1:
            path.unlink(missing_ok=True)


def read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupted or foreign file
        raise ValueError(f"checkpoint {path} cannot be read: {reading_error(error)}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not a run state of this project ({FORMAT})")
    return state


def load_latest_state(
    run_dir: Path, rank: int, world_size: int, say: Callable[[str], None] = print,
    all_ok: Callable[[bool], bool] = lambda ok: ok,
) -> tuple[int, dict[str, Any]] | None:
    """(sequence, this rank's state) of the newest complete sequence that loads; None if there is none.

    An unreadable file is reported and the previous sequence is used.
    ``all_ok(ok)`` tells whether every process could read its file of the
    sequence (a collective with several processes), so that all of them fall
    back together.
    """
    complete = sequences(run_dir, world_size)
    for position, sequence in enumerate(complete):
        path = state_path(run_dir, sequence, rank)
        state = None
        try:
            state = read_state(path)
        except ValueError as error:
            fallback = "using the previous checkpoint" if position + 1 < len(complete) else "no earlier one is left"
            say(f"warning: {error}; {fallback}")
        if all_ok(state is not None):  # then this process read its file too
            assert state is not None
            return sequence, state
    return None


def find_run_to_resume(output_basedir: Path, data_set: str, log_category: str, name: str) -> Path | None:
    """``--auto-resume``: the newest run folder of this name that has a saved state."""
    pattern = f"*_{name}" if name else "*"
    folders = sorted((output_basedir / data_set / log_category).glob(pattern), reverse=True)
    return next((f for f in folders if any((f / "checkpoints").glob("state_*_rank0.pth"))), None)
