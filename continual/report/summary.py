"""``summary.json``: the results of a run in one file, rewritten after every task.

It gathers, from the task records of ``log.jsonl``, what a results table needs:
the key metrics of each task, the accuracy matrix, Avg, Last, forgetting,
backward transfer, the final parameter count and the time spent.
"""
from __future__ import annotations

from pathlib import Path

from continual.report.records import TaskResult
from continual.report.run_log import write_json

SUMMARY_FILE = "summary.json"

# The metrics of each task row that the summary repeats (the row has more: memory, timings, ...).
TASK_KEYS = (
    "task", "classes_seen", "acc1", "acc5", "acc_old", "acc_new", "acc_task_incremental",
    "acc_task_prediction", "avg_acc", "forgetting", "backward_transfer", "params_total", "acc1_other",
)


def run_summary(results: list[TaskResult], *, name: str, options: list[str], nb_tasks: int,
                wall_seconds: float) -> dict:
    """The summary of the finished tasks (one log record each, in task order).

    ``nb_tasks`` is the number of tasks the run was asked to do, so a reader
    can tell a finished run from an interrupted one. ``wall_seconds`` is the
    time of this invocation; ``phase_seconds`` sums the logged phase timings of
    every task, which also covers the parts done before a resume.
    """
    last = results[-1]
    phase_seconds: dict[str, float] = {}
    for result in results:
        for phase, seconds in result.seconds.items():
            phase_seconds[phase] = phase_seconds.get(phase, 0.0) + seconds
    return {
        "name": name,
        "options": list(options),
        "tasks_done": len(results),
        "nb_tasks": nb_tasks,
        "tasks": [{key: getattr(result, key) for key in TASK_KEYS} for result in results],
        "accuracy_matrix": [result.acc_per_task for result in results],
        "avg_acc": last.avg_acc,
        "last_acc": last.acc1,
        "other_predictions": other_predictions(results),
        "forgetting": last.forgetting,
        "backward_transfer": last.backward_transfer,
        "params_total": last.params_total,
        "params_without_head_div": last.params_without_head_div,
        "wall_seconds": wall_seconds,
        "phase_seconds": phase_seconds,
    }


def other_predictions(results: list[TaskResult]) -> dict[str, dict[str, float]]:
    """Avg and Last of each of the method's other classifiers (``acc1_other``: iCaRL's head), as of the top-1."""
    names = dict.fromkeys(name for result in results for name in result.acc1_other)
    return {name: {"avg_acc": sum(r.acc1_other[name] for r in results) / len(results),
                   "last_acc": results[-1].acc1_other[name]}
            for name in names if all(name in r.acc1_other for r in results)}


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json(run_dir / SUMMARY_FILE, summary)
