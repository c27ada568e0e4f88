"""The split a run draws for a dataset without an official test set (ImageNet-R), kept in its run folder.

A run writes ``split.json`` (the train and the test files, relative to --data-path) when it starts. Going back
into the folder (``--resume``, with or without ``--start-task``, or ``--eval``) draws the split again from the
dataset folder and refuses, before any work and without writing anything, a dataset whose files changed since:
the run would otherwise go on training and testing on other images than it started with.
"""
from __future__ import annotations

import json
from pathlib import Path

from continual.config.errors import ConfigError
from continual.config.settings import DataSettings
from continual.data.datasets import drawn_split
from continual.runtime.files import atomic_write, reading_error

SPLIT_FILE = "split.json"
EXAMPLES = 2  # file names quoted per difference


def current_split(data: DataSettings) -> dict | None:
    """The split the dataset folder gives now, or None for a dataset with an official one."""
    files = drawn_split(data.data_set, data.data_path)
    if files is None:
        return None
    return {"data_set": data.data_set, "train": files[0], "test": files[1]}


def record_split(run_dir: Path, data: DataSettings) -> None:
    """Write ``split.json`` when a run starts (a continued run keeps the one it has)."""
    path = run_dir / SPLIT_FILE
    split = None if path.exists() else current_split(data)
    if split is not None:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(split, indent=0)))


def check_split(run_dir: Path, data: DataSettings) -> None:
    """Refuse to go back into ``run_dir`` when its recorded split is not the one the dataset folder gives now."""
    path = run_dir / SPLIT_FILE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: unreadable ({reading_error(error)}); it records the run's train/test split"
                          ) from error
    if saved.get("data_set") != data.data_set:
        return  # another dataset: the options' own check refuses the run
    now = current_split(data) or {}
    differences = [difference for part in ("train", "test")
                   if (difference := _difference(part, saved.get(part, []), now.get(part, [])))]
    if differences:
        raise ConfigError(f"{run_dir}: refused, the dataset's train/test split differs from the one saved in "
                          f"{path} ({'; '.join(differences)}): restore --data-path {data.data_path} as it was "
                          f"when the run started, or start a new run")


def _difference(part: str, saved: list[str], now: list[str]) -> str:
    added, removed = sorted(set(now) - set(saved)), sorted(set(saved) - set(now))
    said = [f"{len(names)} {verb} {names[:EXAMPLES]}" for names, verb in ((added, "added"), (removed, "removed"))
            if names]
    return f"{part} files: {', '.join(said)}" if said else ""
