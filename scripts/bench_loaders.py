"""Time spent waiting for batches, with and without persistent loader workers, on the offline digits demo.

Runs the demo (``--num-workers 2`` by default) ``--repeats`` times in each mode,
alternating the modes, each run in its own process (2 torch threads), and reads
``epochs.jsonl``: ``data_seconds`` is the time an epoch's training loop waited
for its batches. Prints, per mode, the median over runs of the mean wait per
epoch, split into the first epoch of each phase (where persistent workers start
too) and the later ones, and the median wall time; writes them to ``--out``.

    python scripts/bench_loaders.py                                # 3 runs per mode, the whole demo
    python scripts/bench_loaders.py --repeats 1 --extra --max-task 2   # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

from lib.bench_common import read_rows, run_main

OPTIONS = ["options/data/digits_demo.yaml", "options/model/demo_tiny.yaml"]
MODES = {"persistent": "--persistent-workers", "restarted each epoch": "--no-persistent-workers"}


def waits(run_dir: Path) -> dict[str, float]:
    """Mean seconds waited per epoch: every epoch, the first of each phase, the others."""
    epochs = read_rows(run_dir / "epochs.jsonl")
    firsts = [e["data_seconds"] for e in epochs if e["epoch"] == 0]
    later = [e["data_seconds"] for e in epochs if e["epoch"] > 0]
    return {"per epoch": statistics.mean(firsts + later), "first epoch of a phase": statistics.mean(firsts),
            "later epochs": statistics.mean(later) if later else 0.0, "epochs": len(epochs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench_loaders"))
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more main.py options (last)")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):
        for mode, flag in MODES.items():
            name = f"loaders_{flag.strip('-').replace('-', '_')}_{repeat}"
            extra = ["--num-workers", str(args.workers), flag, "--no-plots", "--no-tensorboard", *args.extra]
            result = run_main(OPTIONS, 0, name, args.out, extra)
            runs[mode].append({"seconds": result["seconds"], **waits(Path(result["run_dir"]))})
            print(f"{mode}, run {repeat}: {json.dumps(runs[mode][-1])}", flush=True)
    summary = {mode: {key: statistics.median(run[key] for run in results) for key in results[0]}
               for mode, results in runs.items()}
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.workers} workers, "
          f"median of {args.repeats} runs")
    for mode, values in summary.items():
        print(f"{mode}: data wait per epoch {values['per epoch'] * 1000:.1f} ms (first epoch of a phase "
              f"{values['first epoch of a phase'] * 1000:.1f} ms, later epochs {values['later epochs'] * 1000:.1f} "
              f"ms) over {values['epochs']:.0f} epochs; wall {values['seconds']:.1f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_loaders.json").write_text(json.dumps({"runs": runs, "median": summary}, indent=2))


if __name__ == "__main__":
    main()
