"""BENCHMARKS.md §1: Split Fashion-MNIST (5 tasks of 2 classes) with the small CPU DyTox, seeds 0, 1, 2.

Runs ``main.py`` once per seed (each in its own process, 2 torch threads),
then prints per-task accuracies, Avg and Last (mean ± std over seeds) and the
wall time of each run, and writes them to ``--out`` as JSON.

    python scripts/bench_fashion.py                    # the benchmark as defined
    python scripts/bench_fashion.py --seeds 0 --extra --epochs 1   # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ["options/data/fashion_mnist_5x2.yaml", "options/model/cpu_small.yaml"]


def run_seed(seed: int, out_dir: Path, extra: list[str]) -> dict:
    name = f"bench_seed{seed}"
    command = [
        sys.executable, "main.py", "--options", *OPTIONS, "--seed", str(seed), "--name", name,
        "--output-basedir", str(out_dir / "outputs"), "--log-dir", str(out_dir / "logs"), *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, env=env, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    log = next((out_dir / "outputs").glob(f"*/*/*_{name}/log.jsonl"))
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return {"seed": seed, "seconds": seconds, "rows": rows}


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def report(results: list[dict]) -> None:
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 2 torch threads")
    for result in results:
        accs = " ".join(f"{r['acc1']:.2f}" for r in result["rows"])
        phases = {k: round(sum(r["seconds"].get(k, 0) for r in result["rows"]), 1) for k in result["rows"][0]["seconds"]}
        print(f"seed {result['seed']}: acc after each task [{accs}] Avg {result['rows'][-1]['avg_acc']:.2f} "
              f"Last {result['rows'][-1]['acc1']:.2f}; wall {result['seconds']:.0f} s, phases (s) {phases}")
    print(f"Avg  {mean_std([r['rows'][-1]['avg_acc'] for r in results])}")
    print(f"Last {mean_std([r['rows'][-1]['acc1'] for r in results])}")
    print(f"wall time per run: median {statistics.median([r['seconds'] for r in results]):.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "bench_fashion")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more main.py flags")
    args = parser.parse_args()
    results = [run_seed(seed, args.work_dir, args.extra) for seed in args.seeds]
    report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
