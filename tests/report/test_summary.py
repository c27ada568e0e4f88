"""The run summary (summary.json) of hand-built task results."""
from __future__ import annotations

from support import MATRIX, hand_rows

from continual.report.summary import run_summary


def test_run_summary_repeats_the_rows_and_sums_the_phase_times() -> None:
    rows = hand_rows()
    summary = run_summary(rows, name="hand", options=["a.yaml"], nb_tasks=5, wall_seconds=12.5)
    assert summary["accuracy_matrix"] == MATRIX
    assert [t["acc_task_incremental"] for t in summary["tasks"]] == [90.0, 91.0, 92.0]
    assert summary["tasks"][0]["acc_old"] is None
    assert summary["tasks_done"] == 3 and summary["nb_tasks"] == 5
    assert summary["params_total"] == 10_733_586
    assert summary["phase_seconds"] == {"train": 30.0, "eval": 6.0}
