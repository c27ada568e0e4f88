"""Compare two run folders: identical log rows (timings aside), epoch rows, task checkpoints and memories.

    python scripts/compare_runs.py RUN_A RUN_B

Exit status 0 when they are identical. Used to check that a refactoring
changed no computation (docs/architecture.md): run the demo with --deterministic
before and after, then compare the two folders.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

TIMINGS = {"seconds", "data_seconds", "images_per_s", "data_wait_fraction"}


def same_entry(first: object, second: object) -> bool:
    """A state dict's tensors compared bit for bit; its other entries (a model's extra state) by value."""
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        return torch.equal(first, second)
    return first == second


def rows(path: Path) -> list[dict]:
    """JSON rows without timings, with their key order; a task row keeps the names of its timed phases."""
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        phases = sorted(row["seconds"]) if isinstance(row.get("seconds"), dict) else None
        out.append({**{k: v for k, v in row.items() if k not in TIMINGS}, "phases": phases, "keys": list(row)})
    return out


def differences(a: Path, b: Path) -> list[str]:
    problems = []
    for name in ("log.jsonl", "epochs.jsonl"):
        if rows(a / name) != rows(b / name):
            problems.append(f"{name} rows differ")
    names = sorted(p.name for p in (a / "checkpoints").glob("checkpoint_*.pth"))
    if names != sorted(p.name for p in (b / "checkpoints").glob("checkpoint_*.pth")):
        problems.append("different task checkpoints")
    for name in names:
        first = torch.load(a / "checkpoints" / name, weights_only=True)["model"]
        second = torch.load(b / "checkpoints" / name, weights_only=True)["model"]
        if first.keys() != second.keys() or any(not same_entry(first[k], second[k]) for k in first):
            problems.append(f"weights of {name} differ")
    for memory in sorted((a / "memory").glob("*.npz")):
        with np.load(memory) as first, np.load(b / "memory" / memory.name) as second:
            if any(not np.array_equal(first[k], second[k]) for k in ("x", "y", "t")):
                problems.append(f"memory {memory.name} differs")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    problems = differences(args.first, args.second)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"identical: {len(rows(args.first / 'log.jsonl'))} task rows, "
              f"{len(rows(args.first / 'epochs.jsonl'))} epoch rows, weights and memories")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
