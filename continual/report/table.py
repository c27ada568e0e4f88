"""The summary printed at the end of a run: pure functions from results to text.

Kept apart from the task loop so the layout can be tested on hand-written
rows, and reused for ``--eval`` and for runs over several class orders.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from continual.report.records import EvalResult

# (header, key of the task row, formatter) of each column of the per-task table.
Column = tuple[str, str, str]
TASK_COLUMNS: tuple[Column, ...] = (
    ("task", "task", "int"),
    ("classes", "classes_seen", "int"),
    ("top-1", "acc1", "pct"),
    ("top-5", "acc5", "pct"),
    ("old", "acc_old", "pct"),
    ("new", "acc_new", "pct"),
    ("task-IL", "acc_task_incremental", "pct"),
    ("task-pred", "acc_task_prediction", "pct"),
)


def format_percent(value: float | None) -> str:
    """``73.66``; ``-`` when undefined (old-class accuracy after the first task is NaN, or null in JSON)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}"


def format_cell(value: object, kind: str) -> str:
    if kind == "pct":
        return format_percent(value)  # type: ignore[arg-type]
    return "-" if value is None else str(value)


def format_duration(seconds: float) -> str:
    """``42.0s``, ``3m 07s`` or ``2h 05m 09s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"


def format_params(count: int) -> str:
    """``10,733,584 (10.73M)``: exact, and in the paper's unit (millions, truncated like its tables)."""
    return f"{count:,} ({math.floor(count / 1e4) / 100:.2f}M)"


def format_table(headers: list[str], cells: list[list[str]], left: frozenset[int] = frozenset()) -> str:
    """Columns under a header line and a rule: numbers right-aligned, the columns in ``left`` left-aligned."""
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i in left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in cells)])


def task_table(results: Sequence[EvalResult]) -> str:
    """One line per task (top-1 etc. on all classes seen after that task)."""
    return _rows_table([result.to_row() for result in results])


def _rows_table(rows: Sequence[Mapping[str, object]]) -> str:
    """The task table of rows in the log's layout (a record's ``to_row``, or summary.json's tasks); a column more
    for each of the method's other classifiers (``acc1_other``), headed by its name."""
    others: list[str] = list(dict.fromkeys(name for row in rows for name in _others(row)))
    headers = [header for header, _, _ in TASK_COLUMNS] + others
    cells = [[format_cell(row.get(key), kind) for _, key, kind in TASK_COLUMNS]
             + [format_percent(_others(row).get(name)) for name in others] for row in rows]
    return format_table(headers, cells)


def _others(row: Mapping[str, object]) -> Mapping[str, float]:
    return row.get("acc1_other") or {}  # type: ignore[return-value]


def run_report(summary: dict) -> str:
    """The end-of-run text: the per-task table, then Avg, Last, forgetting, BWT, parameters, time."""
    totals = [
        f"Avg {format_percent(summary['avg_acc'])}  Last {format_percent(summary['last_acc'])}  "
        f"(average incremental and last top-1 accuracy, {summary['tasks_done']} of {summary['nb_tasks']} tasks)",
        *(f"{name}: Avg {format_percent(other['avg_acc'])}  Last {format_percent(other['last_acc'])}"
          for name, other in summary.get("other_predictions", {}).items()),
        f"forgetting {format_percent(summary['forgetting'])}  "
        f"backward transfer {format_percent(summary['backward_transfer'])}",
        f"parameters {format_params(summary['params_total'])}, "
        f"{format_params(summary['params_without_head_div'])} without the divergence head",
        f"wall time {format_duration(summary['wall_seconds'])}",
    ]
    return "\n".join([_rows_table(summary["tasks"]), "", *totals])


def orders_report(aggregate: dict) -> str:
    """One line per class order, then the mean ± std of Avg and Last over the orders."""
    cells = [[str(o["order"]), format_percent(o["avg_acc"]), format_percent(o["last_acc"]), o["run_dir"]]
             for o in aggregate["orders"]]
    table = format_table(["order", "Avg", "Last", "run folder"], cells, left=frozenset({3}))
    avg, last = aggregate["avg_acc"], aggregate["last_acc"]
    return (f"{table}\n\nover {len(cells)} class orders (mean ± {aggregate['std']} std): "
            f"Avg {format_percent(avg['mean'])} ± {format_percent(avg['std'])}  "
            f"Last {format_percent(last['mean'])} ± {format_percent(last['std'])}")
