"""Split Fashion-MNIST (5 tasks of 2 classes) with the small CPU DyTox, seeds 0, 1, 2 (docs/benchmarks.md).

Runs ``main.py`` once per seed (each in its own process, 2 torch threads),
then prints per-task accuracies, Avg and Last (mean ± std over seeds) and the
wall time of each run, and writes them to ``--out`` as JSON.

    python scripts/bench_fashion.py                    # the benchmark as defined
    python scripts/bench_fashion.py --seeds 0 --extra --epochs 1   # a quick look

Each run's wall time is split by phase: data loading (time the training and
finetuning loops waited for a batch), training, memory selection (herding),
finetuning, evaluation, and start-up and checkpoint saving (the rest).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

from lib.bench_common import REPO, mean_std, read_rows, run_main

OPTIONS = ["options/data/fashion_mnist_5x2.yaml", "options/model/cpu_small.yaml"]


def run_seed(seed: int, out_dir: Path, extra: list[str]) -> dict:
    result = run_main(OPTIONS, seed, f"bench_seed{seed}", out_dir, extra)
    result["phases"] = phase_seconds(result["rows"], Path(result["run_dir"]), result["seconds"])
    return result


def phase_seconds(rows: list[dict], run_dir: Path, wall: float) -> dict[str, float]:
    """Wall time split by phase; waiting for batches is taken out of training and finetuning."""
    phases = ("train", "memory", "finetune", "eval")
    total = {phase: sum(r["seconds"].get(phase, 0.0) for r in rows) for phase in phases}
    epochs = read_rows(run_dir / "epochs.jsonl")
    waiting = {phase: sum(e["data_seconds"] for e in epochs if e["phase"] == phase) for phase in ("train", "finetune")}
    stepping = {phase: sum(e["seconds"] for e in epochs if e["phase"] == phase) for phase in ("train", "finetune")}
    return {
        "data loading": waiting["train"] + waiting["finetune"],
        "training": total["train"] - waiting["train"],
        "memory selection": total["memory"],
        "finetuning": total["finetune"] - waiting["finetune"],
        "evaluation": total["eval"],
        "start-up and saving": wall - sum(total.values()),
        "data wait fraction of step time": (waiting["train"] + waiting["finetune"])
        / max(stepping["train"] + stepping["finetune"], 1e-9),
        "memory selection share of task time": total["memory"] / max(sum(total.values()), 1e-9),
    }


def report(results: list[dict]) -> None:
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 2 torch threads")
    for result in results:
        accs = " ".join(f"{r['acc1']:.2f}" for r in result["rows"])
        print(f"seed {result['seed']}: acc after each task [{accs}] Avg {result['rows'][-1]['avg_acc']:.2f} "
              f"Last {result['rows'][-1]['acc1']:.2f}; wall {result['seconds']:.0f} s")
        print("    " + ", ".join(f"{k} {v:.0f} s" if "fraction" not in k and "share" not in k else f"{k} {v:.1%}"
                                  for k, v in result["phases"].items()))
    print(f"Avg  {mean_std([r['rows'][-1]['avg_acc'] for r in results])}")
    print(f"Last {mean_std([r['rows'][-1]['acc1'] for r in results])}")
    print(f"wall time per run: median {statistics.median([r['seconds'] for r in results]):.0f} s "
          f"(min {min(r['seconds'] for r in results):.0f}, max {max(r['seconds'] for r in results):.0f})")


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
