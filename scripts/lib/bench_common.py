"""Shared by the benchmark scripts: one ``main.py`` run in its own process, and how results print."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # scripts/lib/ -> the repository


def launcher(processes: int) -> list[str]:
    """How a run starts: ``python main.py``, or ``bash train.sh cpu N`` (torchrun, gloo) for N processes."""
    return [sys.executable, "main.py"] if processes == 1 else ["bash", "train.sh", "cpu", str(processes)]


def run_main(options: list[str], seed: int, name: str, out_dir: Path, extra: list[str], threads: int = 2,
             processes: int = 1) -> dict:
    """Train with ``main.py`` (``threads`` torch threads per process, ``processes`` processes); returns wall
    seconds, run folder and task rows."""
    command = [
        *launcher(processes), "--options", *options, "--seed", str(seed), "--name", name,
        "--output-basedir", str(out_dir / "outputs"), "--log-dir", str(out_dir / "logs"), "--no-progress", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHON": sys.executable}
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, env=env, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    run_dir = max((out_dir / "outputs").glob(f"*/*/*_{name}"))  # the newest run of this name
    return {"seed": seed, "seconds": seconds, "run_dir": str(run_dir), "rows": read_rows(run_dir / "log.jsonl")}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mean_std(values: list[float]) -> str:
    """Mean ± sample std (ddof=1)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"
