"""The end-of-run report: the task table, the closing lines, number formats."""
from __future__ import annotations

import dataclasses

from support import hand_rows

from continual.report.summary import run_summary
from continual.report.table import format_duration, format_params, format_percent, run_report, task_table


def test_task_table_layout() -> None:
    expected = (
        "task  classes  top-1  top-5    old    new  task-IL  task-pred\n"
        "----  -------  -----  -----  -----  -----  -------  ---------\n"
        "   0       10  80.00  95.00      -  80.00    90.00      85.25\n"
        "   1       20  82.00  94.00  55.50  70.00    91.00      85.25\n"
        "   2       30  62.00  93.00  55.50  75.00    92.00      85.25"
    )
    assert task_table(hand_rows()) == expected


def test_the_method_s_other_classifiers_get_a_column_and_their_avg_and_last() -> None:
    rows = [dataclasses.replace(row, acc1_other={"head": value}) for row, value in zip(hand_rows(), [70.0, 50.0, 31.5],
                                                                                        strict=True)]
    table = task_table(rows).splitlines()
    assert table[0].endswith("task-pred   head") and table[4].endswith("85.25  31.50")
    summary = run_summary(rows, name="hand", options=[], nb_tasks=3, wall_seconds=1.0)
    assert summary["other_predictions"] == {"head": {"avg_acc": 50.5, "last_acc": 31.5}}
    lines = run_report(summary).splitlines()
    assert lines[4].endswith("31.50") and lines[-4] == "head: Avg 50.50  Last 31.50"


def test_run_report_gives_avg_last_forgetting_bwt_parameters_and_time() -> None:
    summary = run_summary(hand_rows(), name="hand", options=[], nb_tasks=3, wall_seconds=3725.0)
    lines = run_report(summary).splitlines()
    assert lines[-4] == "Avg 74.67  Last 62.00  (average incremental and last top-1 accuracy, 3 of 3 tasks)"
    assert lines[-3] == "forgetting 25.00  backward transfer -20.00"
    assert lines[-2] == "parameters 10,733,586 (10.73M), 10,700,000 (10.70M) without the divergence head"
    assert lines[-1] == "wall time 1h 02m 05s"


def test_number_formats() -> None:
    assert format_percent(None) == "-" and format_percent(float("nan")) == "-" and format_percent(7.005) == "7.00"
    assert format_duration(42.04) == "42.0s" and format_duration(187) == "3m 07s"
    assert format_params(10_779_664) == "10,779,664 (10.77M)"  # truncated like the paper's tables
