"""Whole-run fidelity on the offline demo, next to the published code's figures (docs/benchmarks.md).

Runs the demo configuration (scikit-learn digits at 16x16, 5 tasks of 2 classes, memory 200,
20 epochs per task, 10 finetuning epochs) for seeds 0, 1, 2, one process after the other, 2 torch
threads each, and prints per-seed and mean ± std (sample) Avg and Last beside the published DyTox
code run on the same arrays and options on this workplace's CPU. The default mode's means must be
within 3 points (Avg) and 6 points (Last) of the published ones.

    python scripts/bench_fidelity.py            # the default (fast) paths
    python scripts/bench_fidelity.py --plain    # the published arithmetic (--no-fused-attention --no-joint-tokens)
    python scripts/bench_fidelity.py --both     # both, one table
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

from lib.bench_common import REPO, mean_std, run_main

OPTIONS = ["options/data/digits_demo.yaml", "options/model/demo_tiny.yaml"]
MODES = {"default": [], "plain": ["--no-fused-attention", "--no-joint-tokens"]}
# The published code (arthurdouillard/dytox at 4da25c1), seeds 0, 1, 2, run on the same arrays and options.
PUBLISHED = {"avg": [68.06, 70.15, 69.01], "last": [54.32, 61.84, 52.09]}
BARS = {"avg": 3.0, "last": 6.0}  # largest allowed gap between the means, in points


def run_mode(mode: str, seeds: list[int], work_dir: Path, extra: list[str]) -> list[dict]:
    results = []
    for seed in seeds:
        result = run_main(OPTIONS, seed, f"fidelity_{mode}_seed{seed}", work_dir, MODES[mode] + extra)
        last = result["rows"][-1]
        results.append({"seed": seed, "avg": last["avg_acc"], "last": last["acc1"], "seconds": result["seconds"],
                        "acc_per_task": [row["acc1"] for row in result["rows"]]})
        print(f"  {mode} seed {seed}: Avg {last['avg_acc']:.2f} Last {last['acc1']:.2f} "
              f"({result['seconds']:.0f} s)", flush=True)
    return results


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| run (seeds " + ", ".join(str(r["seed"]) for r in next(iter(results.values()))) + ") | Avg | Last |",
             "|---|---|---|",
             f"| published code | {mean_std(PUBLISHED['avg'])} ({', '.join(map(str, PUBLISHED['avg']))}) "
             f"| {mean_std(PUBLISHED['last'])} ({', '.join(map(str, PUBLISHED['last']))}) |"]
    for mode, runs in results.items():
        cells = [f"{mean_std([r[k] for r in runs])} ({', '.join(f'{r[k]:.2f}' for r in runs)})"
                 for k in ("avg", "last")]
        lines.append(f"| this project, {mode} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def verdicts(results: dict[str, list[dict]]) -> list[str]:
    lines = []
    for mode, runs in results.items():
        for key in ("avg", "last"):
            gap = statistics.mean(r[key] for r in runs) - statistics.mean(PUBLISHED[key])
            status = "within" if abs(gap) <= BARS[key] else "OUTSIDE"
            lines.append(f"{mode} {key}: mean {gap:+.2f} points from the published code, {status} ±{BARS[key]:.0f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--plain", action="store_true", help="only the published arithmetic")
    which.add_argument("--both", action="store_true", help="the default mode and the plain mode")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "bench_fidelity")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more main.py flags")
    args = parser.parse_args()
    modes = ["default", "plain"] if args.both else ["plain"] if args.plain else ["default"]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 2 torch threads, "
          f"{' '.join(OPTIONS)}", flush=True)
    results = {mode: run_mode(mode, args.seeds, args.work_dir, args.extra) for mode in modes}
    print(table(results))
    print("\n".join(verdicts(results)))
    if args.out:
        args.out.write_text(json.dumps({"published": PUBLISHED, "results": results}, indent=1))


if __name__ == "__main__":
    main()
