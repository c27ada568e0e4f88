"""DyTox against the paper's rivals and bounds on one setting, under one memory protocol: accuracy after each task,
Avg, Last, forgetting, size, time.

Seven methods, each trained by its own ``main.py`` run with the same seed(s), the same data, schedule and memory:

- ``dytox``: the setting's option files as they are (DyTox, rehearsal, distillation, balanced finetuning);
- ``baseline``: the same + ``options/model/baseline.yaml`` + ``--exact-freeze``: the transformer without task
  tokens of the paper's ablation, with the same rehearsal, distillation and finetuning (exact freeze, so the
  SABs that finetuning freezes are trained again at the next task, instead of the published quirk);
- ``icarl``, ``wa``, ``der``: the rivals of the paper's CIFAR-100 table (``--method icarl|wa|der``) on the
  baseline's encoder (the same network but the method's head), with the setting's memory and schedule;
- ``finetuning``: the baseline without memory, distillation or finetuning (naive finetuning, the lower bound);
- ``joint``: the baseline trained from scratch at each task on all the images of the classes seen so far,
  without memory, distillation or finetuning (the upper bound).

    python scripts/compare_methods.py --setting demo          # digits_demo + demo_tiny, a few minutes a method
    python scripts/compare_methods.py --setting fashion --seeds 0 1 2   # Split Fashion-MNIST + cpu_small
    python scripts/compare_methods.py --setting demo --processes 2 --memory global distributed  # the two protocols
    python scripts/compare_methods.py --setting demo --from-runs        # re-plot the runs already trained
    python scripts/compare_methods.py --setting demo --methods dytox joint --extra --epochs 10 --base-epochs 10

Memory protocols (the DyTox erratum's): ``--memory global`` keeps one selection of ``memory_size`` exemplars
shared by all processes; ``--memory distributed`` lets each of the ``--processes`` processes herd its own
``memory_size / processes`` (the published DyTox runs' protocol, whose numbers its erratum corrected). Several
``--memory`` values train the methods that keep exemplars once under each; ``finetuning`` and ``joint`` keep none
and run once (their protocol shows as "none"). ``--processes N`` > 1 runs ``bash train.sh cpu N``.

The schedule (epochs, finetuning epochs, memory size) is the option files' unless ``--extra`` overrides it:
``--extra`` takes the rest of the command line and gives it to every method's ``main.py`` after the method's
own flags, so it wins over them too. The runs go one after the other (``--jobs N``: N at a time, sharing the
CPUs, so their wall times are no longer comparable to the benchmarks') to
``<work-dir>/<memory>/<method>/seed<seed>/``, each with a ``run.json`` (its command, wall time and machine)
beside its run folder; ``--from-runs`` rebuilds the outputs from those.

Writes to ``--out-dir`` (default: the work dir) ``comparison.png`` (top-1 vs classes seen, one line per method
and protocol, the seeds' min-max as a band), ``comparison.md`` (one row per method and protocol: mean ± sample
std over seeds) and ``comparison.json`` (the same numbers, every seed's accuracy after each task, the commands,
the machine), and prints the Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lib.bench_common import REPO, mean_std, read_rows, run_main

sys.path.insert(0, str(REPO))
import matplotlib  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from continual.report.plots import save_figure  # noqa: E402
from continual.runtime.files import atomic_write  # noqa: E402

SETTINGS: dict[str, dict] = {  # option files, and the --data-path given to main.py (relative to the repo)
    "demo": {"options": ["options/data/digits_demo.yaml", "options/model/demo_tiny.yaml"], "data_path": None},
    "fashion": {"options": ["options/data/fashion_mnist_5x2.yaml", "options/model/cpu_small.yaml"],
                "data_path": "../shared/data/fashion-mnist"},
}
BASELINE = ["options/model/baseline.yaml"]
NO_REHEARSAL = ["--memory-size", "0", "--no-auto-kd", "--kd", "0", "--finetuning="]
METHODS: dict[str, tuple[list[str], list[str]]] = {  # option files added to the setting's, and flags
    "dytox": ([], []),
    "baseline": (BASELINE, ["--exact-freeze"]),
    "icarl": (BASELINE, ["--method", "icarl"]),
    "wa": (BASELINE, ["--method", "wa", "--distillation-tau", "2"]),  # the paper's temperature
    "der": (BASELINE, ["--method", "der"]),
    "finetuning": (BASELINE, ["--exact-freeze", *NO_REHEARSAL]),
    "joint": (BASELINE, ["--exact-freeze", "--retrain-scratch", *NO_REHEARSAL]),
}
WITHOUT_MEMORY = ("finetuning", "joint")  # the memory protocol does not change them: trained once
MEMORY_FLAGS = {"global": "--global-memory", "distributed": "--distributed-memory"}
METRICS = {"avg_acc": "Avg", "last_acc": "Last", "forgetting": "forgetting", "params_total": "parameters",
           "wall_seconds": "wall time (s)"}
RUN_RECORD = "run.json"
RECORDED = ("options", "flags", "compare_command", "machine", "threads", "jobs", "processes")  # from run.json


def protocols_of(method: str, memories: list[str]) -> list[str]:
    """The memory protocols ``method`` is trained under: each asked, or "none" for a method without memory."""
    return ["none"] if method in WITHOUT_MEMORY else memories


def seed_dir(work_dir: Path, method: str, memory: str, seed: int) -> Path:
    return work_dir / memory / method / f"seed{seed}"


def run_name(method: str, seed: int) -> str:
    return f"{method}_seed{seed}"


def main_command(options: list[str], seed: int, name: str, out_dir: Path, extra: list[str], threads: int,
                 processes: int) -> str:
    """The command ``lib.bench_common.run_main`` runs (from the repo folder), for the record."""
    start = ["python", "main.py"] if processes == 1 else ["bash", "train.sh", "cpu", str(processes)]
    argv = [*start, "--options", *options, "--seed", str(seed), "--name", name, "--output-basedir",
            str(out_dir / "outputs"), "--log-dir", str(out_dir / "logs"), "--no-progress", *extra]
    return f"OMP_NUM_THREADS={threads} {shlex.join(argv)}"


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


def method_argv(args: argparse.Namespace, method: str, memory: str) -> tuple[list[str], list[str]]:
    """Option files and main.py flags of ``method`` on ``args.setting`` under ``memory``; ``--extra`` comes last
    and wins."""
    files, flags = METHODS[method]
    setting = SETTINGS[args.setting]
    data_path = args.data_path or ((REPO / setting["data_path"]).resolve() if setting["data_path"] else None)
    data = ["--data-path", str(data_path)] if data_path else []
    protocol = [MEMORY_FLAGS[memory]] if memory in MEMORY_FLAGS else []
    return [*setting["options"], *files], [*data, *flags, *protocol, *args.extra]


def train(args: argparse.Namespace, method: str, memory: str, seed: int) -> None:
    """One ``main.py`` run; writes its ``run.json`` (command, wall seconds, machine, run folder)."""
    options, flags = method_argv(args, method, memory)
    out_dir, name = seed_dir(args.work_dir, method, memory, seed), run_name(method, seed)
    result = run_main(options, seed, name, out_dir, flags, threads=args.threads, processes=args.processes)
    record = {"method": method, "memory": memory, "seed": seed,
              "run_dir": str(Path(result["run_dir"]).relative_to(out_dir)), "options": options, "flags": flags,
              "command": main_command(options, seed, name, out_dir, flags, args.threads, args.processes),
              "compare_command": args.command, "seconds": result["seconds"], "threads": args.threads,
              "jobs": args.jobs, "processes": args.processes, "machine": machine()}
    atomic_write(out_dir / RUN_RECORD, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    summary = json.loads((Path(result["run_dir"]) / "summary.json").read_text())
    print(f"{method} ({memory} memory) seed {seed}: Avg {summary['avg_acc']:.2f} Last {summary['last_acc']:.2f} "
          f"({result['seconds']:.0f} s)", flush=True)


def runs_of(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(method, memory protocol) of every row of the table, in its order."""
    return [(method, memory) for method in args.methods for memory in protocols_of(method, args.memory)]


def train_all(args: argparse.Namespace) -> None:
    """Every method, protocol and seed, one run after the other, or ``--jobs`` at a time."""
    triples = [(method, memory, seed) for method, memory in runs_of(args) for seed in args.seeds]
    if args.jobs == 1:
        for method, memory, seed in triples:
            train(args, method, memory, seed)
        return
    with ThreadPoolExecutor(args.jobs) as pool:  # threads: each waits on its own main.py process
        futures = [pool.submit(train, args, method, memory, seed) for method, memory, seed in triples]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def collect(work_dir: Path, method: str, memory: str, seed: int) -> dict:
    """What one run's ``run.json``, ``summary.json`` and last ``log.jsonl`` row say, as a row of comparison.json."""
    out_dir = seed_dir(work_dir, method, memory, seed)
    if not (out_dir / RUN_RECORD).exists():
        sys.exit(f"error: no finished run of {method} ({memory} memory) seed {seed} in {out_dir} (train it "
                 f"without --from-runs)")
    record = json.loads((out_dir / RUN_RECORD).read_text())
    run_dir = out_dir / record["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    last = read_rows(run_dir / "log.jsonl")[-1]  # the protocol the run logged, not the one asked
    return {"seed": seed, "run_dir": str(run_dir), "command": record["command"],
            **{key: record.get(key, 1) if key == "processes" else record[key] for key in RECORDED},
            "memory_mode": last["memory_mode"] if last["memory_total"] else "none",
            "memory_total": last["memory_total"], "world_size": last["world_size"], "wall_seconds": record["seconds"],
            "classes_seen": [task["classes_seen"] for task in summary["tasks"]],
            "acc1": [task["acc1"] for task in summary["tasks"]],
            **{key: summary[key] for key in ("avg_acc", "last_acc", "forgetting", "params_total",
                                             "params_without_head_div", "tasks_done", "nb_tasks")}}


def stats(values: list[float]) -> dict:
    """Mean, sample std (ddof=1, 0 for one seed), min, max and the values."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "std": std, "min": min(values), "max": max(values), "per_seed": values}


def aggregate(method: str, memory: str, runs: list[dict]) -> dict:
    classes = runs[0]["classes_seen"]
    if any(run["classes_seen"] != classes for run in runs):
        sys.exit(f"error: the seeds of {method} saw different classes: {[run['classes_seen'] for run in runs]}")
    per_task = [stats([run["acc1"][i] for run in runs]) for i in range(len(classes))]
    return {"method": method, "memory": memory, "protocol": protocol_label(runs),
            "options": one_or_all([run["options"] for run in runs]),
            "flags": one_or_all([run["flags"] for run in runs]), "classes_seen": classes, "acc1_per_task": per_task,
            **{key: stats([run[key] for run in runs]) for key in METRICS},
            "runs": [{k: v for k, v in run.items() if k not in RECORDED} for run in runs]}


def protocol_label(runs: list[dict]) -> str:
    """The memory protocol the runs logged: "global, 200 exemplars, 2 processes", or "none"."""
    modes = distinct([(run["memory_mode"], run["memory_total"], run["world_size"]) for run in runs])
    labels = []
    for mode, total, world in modes:
        processes = f"{world} process{'es' if world > 1 else ''}"
        labels.append(f"none, {processes}" if mode == "none" else f"{mode}, {total} exemplars, {processes}")
    return "; ".join(labels)


def row_name(method: str, memory: str, memories: list[str]) -> str:
    """The table's name of a (method, protocol) row: the method, with its protocol when several are compared."""
    return method if len(memories) == 1 or memory == "none" else f"{method} ({memory})"


def distinct(values: list) -> list:
    return [value for i, value in enumerate(values) if value not in values[:i]]


def one_or_all(values: list) -> object:
    """The value the runs share, else the list of their distinct values."""
    values = distinct(values)
    return values[0] if len(values) == 1 else values


def comparison(args: argparse.Namespace) -> dict:
    """comparison.json: every method's numbers, from the run folders in the work dir."""
    runs = {(method, memory): [collect(args.work_dir, method, memory, seed) for seed in args.seeds]
            for method, memory in runs_of(args)}
    every_run = [run for method_runs in runs.values() for run in method_runs]
    report = {"setting": args.setting, "options": SETTINGS[args.setting]["options"], "seeds": args.seeds,
              "memory": args.memory, "processes": one_or_all([run["processes"] for run in every_run]),
              "threads": one_or_all([run["threads"] for run in every_run]),
              "jobs": one_or_all([run["jobs"] for run in every_run]),
              "compare_commands": distinct([run["compare_command"] for run in every_run]),
              "commands": [run["command"] for run in every_run],
              "machine": one_or_all([run["machine"] for run in every_run]),
              "methods": {row_name(method, memory, args.memory): aggregate(method, memory, method_runs)
                          for (method, memory), method_runs in runs.items()}}
    if args.from_runs:
        report["rebuilt_with"] = args.command
    return report


def plot(report: dict) -> Figure:
    """Top-1 after each task vs classes seen: the mean over seeds, the seeds' min-max as a band; one colour per
    method, dashed under distributed memory; the legend beside the axes."""
    protocols = len(report["memory"]) > 1
    figure = Figure(figsize=(9.5 if protocols else 8.5, 4.5))
    axes = figure.add_subplot()
    palette = matplotlib.colormaps["tab10"]
    for name, result in report["methods"].items():
        classes, per_task = result["classes_seen"], result["acc1_per_task"]
        colour = palette(list(METHODS).index(result["method"]))
        style = "--" if result["memory"] == "distributed" else "-"
        axes.plot(classes, [task["mean"] for task in per_task], marker="o", linewidth=2, linestyle=style,
                  color=colour, label=f"{name} (Avg {result['avg_acc']['mean']:.2f})")
        if len(report["seeds"]) > 1:
            axes.fill_between(classes, [task["min"] for task in per_task], [task["max"] for task in per_task],
                              color=colour, alpha=0.12, linewidth=0)
    seeds = ", ".join(str(seed) for seed in report["seeds"])
    axes.set_title(f"{report['setting']}: {' + '.join(Path(o).stem for o in report['options'])} (seeds {seeds})")
    axes.set_xlabel("Number of classes")
    axes.set_ylabel("Top-1 accuracy (%)")
    axes.set_xticks(next(iter(report["methods"].values()))["classes_seen"])
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    figure.tight_layout()
    return figure


def cell(key: str, values: list[float]) -> str:
    """One table cell: the value for one seed, else mean ± sample std (a parameter count the seeds share once)."""
    if key == "params_total":
        return f"{values[0]:,}" if len(set(values)) == 1 else f"{statistics.mean(values):,.0f} ± " \
                                                               f"{statistics.stdev(values):,.0f}"
    if key == "wall_seconds":
        std = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1f}{std}"
    return mean_std(values) if len(values) > 1 else f"{values[0]:.2f}"


def markdown(report: dict) -> str:
    """The table (one row per method), the per-task accuracies, and the line that says how they were made."""
    methods = report["methods"]
    classes = next(iter(methods.values()))["classes_seen"]
    lines = ["| method | memory protocol | " + " | ".join(METRICS.values()) + " |",
             "|---|---|" + "---:|" * len(METRICS)]
    lines += [f"| {m} | {r['protocol']} | " + " | ".join(cell(k, r[k]["per_seed"]) for k in METRICS) + " |"
              for m, r in methods.items()]
    lines += ["", "Top-1 after each task (mean over seeds), by number of classes seen:", "",
              "| method | " + " | ".join(str(c) for c in classes) + " |", "|---|" + "---:|" * len(classes)]
    lines += [f"| {m} | " + " | ".join(f"{t['mean']:.2f}" for t in r["acc1_per_task"]) + " |"
              for m, r in methods.items()]
    commands = "; ".join(f"`{command}`" for command in report["compare_commands"])
    seeds = ", ".join(str(seed) for seed in report["seeds"])
    lines += ["", f"Command: {commands}; setting `{report['setting']}`, options {', '.join(report['options'])}; "
                  f"seeds {seeds}; {report['threads']} torch threads, {report['jobs']} run(s) at a time "
                  "(mean ± sample std over seeds)."]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, out_dir: Path) -> str:
    table = markdown(report)
    atomic_write(out_dir / "comparison.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    atomic_write(out_dir / "comparison.md", lambda tmp: tmp.write_text(table))
    save_figure(plot(report), out_dir / "comparison.png")
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--work-dir", type=Path, help="where the runs go (default: outputs/compare_methods/SETTING)")
    parser.add_argument("--out-dir", type=Path, help="where the figure and tables go (default: the work dir)")
    parser.add_argument("--data-path", type=Path, help="the dataset folder (default: the setting's)")
    parser.add_argument("--memory", nargs="+", choices=list(MEMORY_FLAGS), default=["global"],
                        help="memory protocol(s): one selection shared by all processes (global), or each process "
                             "its own share (distributed, with --processes > 1)")
    parser.add_argument("--processes", type=int, default=1, help="processes of each run (> 1: bash train.sh cpu N)")
    parser.add_argument("--threads", type=int, help="torch threads of each process (default: 2 / processes)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (more than 1: they share the CPUs, so their wall times grow)")
    parser.add_argument("--from-runs", action="store_true", help="train nothing: rebuild from the work dir's runs")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more main.py flags for every method (the rest of the command line)")
    args = parser.parse_args(argv)
    if "distributed" in args.memory and args.processes < 2:
        parser.error("--memory distributed shares the memory between processes: give --processes 2 or more")
    args.memory = [memory for memory in MEMORY_FLAGS if memory in args.memory]
    args.threads = args.threads or max(1, 2 // args.processes)
    args.command = shlex.join(["python", "scripts/compare_methods.py", *(sys.argv[1:] if argv is None else argv)])
    args.methods = [method for method in METHODS if method in args.methods]  # the table's order, once each
    args.work_dir = (args.work_dir or REPO / "outputs" / "compare_methods" / args.setting).resolve()
    args.out_dir = (args.out_dir or args.work_dir).resolve()
    args.data_path = args.data_path and args.data_path.resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.from_runs:
        train_all(args)
    print(write_outputs(comparison(args), args.out_dir), end="")
    print(f"(figure and tables in {args.out_dir})")


if __name__ == "__main__":
    main()
