"""Continual-learning metrics, the run summary, the end-of-run report, progress bars and class-order runs.

Everything here is checked on hand-built inputs with hand-computed values; the
end-to-end checks of the files a run writes are in test_end_to_end.py.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

from continual.config import ConfigError, parse_config
from continual.config.settings import RunSettings, settings_of
from continual.report.records import EpochProgress, TaskResult
from continual.method.metrics import (
    EvalCounts, TaskAccuracy, average_incremental_accuracy, backward_transfer, forgetting, mean_and_std,
    task_of_class,
)
from continual.train.orders import config_for_order, listed_orders, orders_summary
from continual.report.progress import EpochBar, bar_postfix, bars_wanted, epoch_bar
from continual.report.table import format_duration, format_params, format_percent, orders_report, run_report, task_table
from continual.report.summary import run_summary
from continual.train.session import Outcome

# Two tasks of two classes: classes 0, 1 are task 0; classes 2, 3 are task 1.
CLASS_TASKS = task_of_class([2, 2])
CRAFTED_LOGITS = torch.tensor([
    [1.0, 0.0, 5.0, 0.0],  # target 0: argmax 2 (task 1): class-IL wrong, task wrong; within task 0: 0, right
    [0.0, 4.0, 1.0, 2.0],  # target 3: argmax 1 (task 0): class-IL wrong, task wrong; within task 1: 3, right
    [0.0, 0.0, 1.0, 3.0],  # target 2: argmax 3 (task 1): class-IL wrong, task right; within task 1: 3, wrong
    [0.0, 6.0, 0.0, 0.0],  # target 1: all right
])
CRAFTED_TARGETS = torch.tensor([0, 3, 2, 1])


def test_task_incremental_task_prediction_and_class_incremental_differ_on_crafted_logits() -> None:
    counts = EvalCounts.zeros(2)
    counts.add_batch(CRAFTED_LOGITS, CRAFTED_TARGETS, CLASS_TASKS)
    assert counts.correct.tolist() == [1, 0]
    assert counts.task_predicted.tolist() == [1, 1]
    assert counts.correct_within_task.tolist() == [2, 1]
    assert counts.total.tolist() == [2, 2]
    accuracy = TaskAccuracy.from_counts(counts)
    assert accuracy.top1 == 25.0  # class-incremental: argmax over all 4 classes
    assert accuracy.task_prediction == 50.0
    assert accuracy.task_incremental == 75.0  # argmax restricted to the true task's classes


def test_counts_of_shards_sum_to_the_counts_of_the_whole_set() -> None:
    """Evaluation is sharded over processes and the (5, T) counts are all-reduced: the sum must be exact."""
    whole = EvalCounts.zeros(2)
    whole.add_batch(CRAFTED_LOGITS, CRAFTED_TARGETS, CLASS_TASKS)
    shards = []
    for rank in range(2):  # every second image, as continual.distributed.shard deals them
        part = EvalCounts.zeros(2)
        part.add_batch(CRAFTED_LOGITS[rank::2], CRAFTED_TARGETS[rank::2], CLASS_TASKS)
        shards.append(part.as_tensor())
    assert shards[0].shape == (5, 2)
    summed = EvalCounts.from_tensor(shards[0] + shards[1])
    assert torch.equal(summed.as_tensor(), whole.as_tensor())


def test_task_incremental_equals_class_incremental_with_one_task() -> None:
    counts = EvalCounts.zeros(1)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [0.0, 5.0, 1.0]])
    counts.add_batch(logits, torch.tensor([0, 1, 1]), task_of_class([3]))
    accuracy = TaskAccuracy.from_counts(counts)
    assert accuracy.top1 == accuracy.task_incremental == pytest.approx(200 / 3)
    assert accuracy.task_prediction == 100.0


# An accuracy matrix where forgetting (drop from the best) and BWT (drop from the diagonal) differ.
MATRIX = [[80.0], [90.0, 70.0], [60.0, 50.0, 75.0]]


def test_forgetting_bwt_avg_and_last_on_a_hand_built_matrix() -> None:
    # forgetting: task 0 best 90 (after task 1) -> 60: 30; task 1 best 70 -> 50: 20; mean 25
    assert forgetting(MATRIX) == pytest.approx(25.0)
    # BWT: (60 - 80) + (50 - 70) over 2 old tasks = -20
    assert backward_transfer(MATRIX) == pytest.approx(-20.0)
    assert backward_transfer(MATRIX[:2]) == pytest.approx(10.0)  # 90 - 80: positive transfer
    assert backward_transfer(MATRIX[:1]) == 0.0 and forgetting(MATRIX[:1]) == 0.0
    top1 = [80.0, 82.0, 62.0]
    assert average_incremental_accuracy(top1) == pytest.approx(224 / 3)
    summary = run_summary(hand_rows(), name="hand", options=["a.yaml"], nb_tasks=3, wall_seconds=12.5)
    assert summary["avg_acc"] == pytest.approx(224 / 3) and summary["last_acc"] == 62.0
    assert summary["forgetting"] == 25.0 and summary["backward_transfer"] == -20.0


def test_sample_std_over_orders() -> None:
    mean, std = mean_and_std([70.0, 72.0, 74.0])
    assert mean == 72.0 and std == pytest.approx(2.0)  # sample std; the population std would be 1.633
    mean, std = mean_and_std([71.5])
    assert mean == 71.5 and math.isnan(std)


def task_result(**fields: object) -> TaskResult:
    """A TaskResult with ``fields``, zeros and empties elsewhere."""
    defaults: dict[str, object] = {
        "task": 0, "classes_seen": 0, "acc1": 0.0, "acc5": 0.0, "acc_per_task": [], "acc_old": None, "acc_new": 0.0,
        "acc_task_incremental": 0.0, "acc_task_prediction": 0.0, "avg_acc": 0.0, "forgetting": 0.0,
        "backward_transfer": 0.0, "params_total": 0, "params_trainable": 0, "params_without_head_div": 0,
        "memory_size": 0, "memory_per_class": {}, "seconds": {}, "eval_images": 0, "world_size": 1,
        "memory_mode": "global", "memory_total": 0, "memory_fingerprints": [],
    }
    return TaskResult(**{**defaults, **fields})  # type: ignore[arg-type]


def hand_rows() -> list[TaskResult]:
    """Task results as the task loop logs them (NaN old accuracy read back as null), for MATRIX."""
    rows = []
    for task, (per_task, top1) in enumerate(zip(MATRIX, [80.0, 82.0, 62.0])):
        matrix = MATRIX[: task + 1]
        rows.append(task_result(**{
            "task": task, "classes_seen": 10 * (task + 1), "acc1": top1, "acc5": 95.0 - task,
            "acc_per_task": per_task, "acc_old": None if task == 0 else 55.5, "acc_new": per_task[-1],
            "acc_task_incremental": 90.0 + task, "acc_task_prediction": 85.25,
            "avg_acc": average_incremental_accuracy([80.0, 82.0, 62.0][: task + 1]),
            "forgetting": forgetting(matrix), "backward_transfer": backward_transfer(matrix),
            "params_total": 10_733_584 + task, "params_without_head_div": 10_700_000,
            "seconds": {"train": 10.0, "eval": 1.0 + task},
        }))
    return rows


def test_run_summary_repeats_the_rows_and_sums_the_phase_times() -> None:
    rows = hand_rows()
    summary = run_summary(rows, name="hand", options=["a.yaml"], nb_tasks=5, wall_seconds=12.5)
    assert summary["accuracy_matrix"] == MATRIX
    assert [t["acc_task_incremental"] for t in summary["tasks"]] == [90.0, 91.0, 92.0]
    assert summary["tasks"][0]["acc_old"] is None
    assert summary["tasks_done"] == 3 and summary["nb_tasks"] == 5
    assert summary["params_total"] == 10_733_586
    assert summary["phase_seconds"] == {"train": 30.0, "eval": 6.0}


def test_task_table_layout() -> None:
    expected = (
        "task  classes  top-1  top-5    old    new  task-IL  task-pred\n"
        "----  -------  -----  -----  -----  -----  -------  ---------\n"
        "   0       10  80.00  95.00      -  80.00    90.00      85.25\n"
        "   1       20  82.00  94.00  55.50  70.00    91.00      85.25\n"
        "   2       30  62.00  93.00  55.50  75.00    92.00      85.25"
    )
    assert task_table(hand_rows()) == expected


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


def test_orders_summary_and_report() -> None:
    outcomes = [Outcome(Path(f"/runs/x_order{i}"), [task_result(avg_acc=avg, acc1=last)], None)
                for i, (avg, last) in enumerate([(70.0, 55.0), (74.0, 59.0), (72.0, 60.0)])]
    orders = [[0, 1, 2], [2, 1, 0], [1, 0, 2]]
    aggregate = orders_summary("x", orders, outcomes)
    assert aggregate["avg_acc"]["mean"] == pytest.approx(72.0) and aggregate["avg_acc"]["std"] == pytest.approx(2.0)
    assert aggregate["last_acc"]["mean"] == pytest.approx(58.0)
    assert aggregate["last_acc"]["std"] == pytest.approx(math.sqrt((9 + 1 + 4) / 2))
    assert aggregate["orders"][1] == {"order": 1, "run_dir": "/runs/x_order1", "avg_acc": 74.0, "last_acc": 59.0,
                                      "class_order": [2, 1, 0]}
    text = orders_report(aggregate)
    assert text.endswith("over 3 class orders (mean ± sample (ddof=1) std): Avg 72.00 ± 2.00  Last 58.00 ± 2.65")


def test_an_order_config_is_a_copy_with_its_own_name(tmp_path: Path) -> None:
    options = tmp_path / "orders.yaml"
    options.write_text("class_order: [[0, 1, 2], [2, 0, 1]]\n")
    cfg = parse_config(["--options", str(options), "--name", "run"])
    orders = listed_orders(cfg)
    assert orders == [[0, 1, 2], [2, 0, 1]]
    second = config_for_order(cfg, orders[1], 1)
    assert second.class_order == [2, 0, 1] and second.name == "run_order1"
    assert cfg.class_order == [[0, 1, 2], [2, 0, 1]] and cfg.name == "run"  # the parsed config is untouched
    assert config_for_order(cfg, orders[0], None).name == "run"  # a one-order list is that order
    assert listed_orders(parse_config(["--class-order", "1", "0"])) is None


def test_orders_of_different_lengths_are_refused_at_parse_time(tmp_path: Path) -> None:
    options = tmp_path / "orders.yaml"
    options.write_text("class_order: [[0, 1, 2], [1, 0]]\n")
    with pytest.raises(ConfigError, match="class_order.*different lengths"):
        parse_config(["--options", str(options)])


@pytest.mark.parametrize("flags", [["--resume", "somewhere"], ["--eval"], ["--start-task", "2"]])
def test_one_folder_options_are_refused_with_several_orders(flags: list[str], tmp_path: Path) -> None:
    options = tmp_path / "orders.yaml"
    options.write_text("class_order: [[0, 1, 2], [2, 0, 1], [1, 2, 0]]\n")
    with pytest.raises(ConfigError, match=f"{flags[0]}.*class_order holds 3 orders.*--auto-resume"):
        parse_config(flags + ["--options", str(options)])


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_bars_only_on_the_main_process_on_a_terminal_without_no_progress() -> None:
    terminal = (FakeStream(True), FakeStream(True))
    assert bars_wanted(False, True, terminal)
    assert not bars_wanted(True, True, terminal)  # --no-progress
    assert not bars_wanted(False, False, terminal)  # not rank 0
    assert not bars_wanted(False, True, (FakeStream(False), FakeStream(True)))  # stdout to a file
    assert not bars_wanted(False, True, (FakeStream(True), FakeStream(False)))  # stderr to a file
    with epoch_bar(False, "x", 10, 1e-3) as after_step:
        assert after_step is None


def test_bar_shows_running_losses_lr_and_throughput() -> None:
    progress = EpochProgress(sums={"classification": 1.5, "kd": 0.3, "div": 0.6, "total": 2.4}, steps=3,
                             images=96, seconds=2.0)
    assert bar_postfix(progress, 3.125e-4) == {"loss": "0.8000", "kd": "0.1000", "div": "0.2000",
                                               "lr": "3.13e-04", "img/s": "48"}
    stream = FakeStream(True)
    bar = EpochBar("task 1 train 2/5", 10, 3.125e-4, file=stream)
    bar.update(progress)
    bar.bar.refresh()
    shown = stream.getvalue()
    assert "task 1 train 2/5" in shown and "3/10" in shown
    assert "loss=0.8000" in shown and "div=0.2000" in shown and "img/s=48" in shown
    bar.close()


@pytest.mark.parametrize("flags", [[], ["--no-plots", "--no-tensorboard"]])
def test_run_results_follow_the_plots_and_tensorboard_options(tmp_path: Path, flags: list[str]) -> None:
    from continual.report.results import RunResults

    cfg = parse_config(flags + ["--name", "hand"])
    assert cfg.plots is cfg.tensorboard is (not flags)  # on by default
    results = RunResults(tmp_path, settings_of(RunSettings, cfg), 3, started=0.0)
    summary = results.task_done(hand_rows(), [])
    results.close()
    assert json.loads((tmp_path / "summary.json").read_text())["last_acc"] == summary["last_acc"] == 62.0
    assert (tmp_path / "accuracy_curve.png").is_file() == (tmp_path / "accuracy_matrix.png").is_file() == (not flags)
    assert not (tmp_path / "training_curves.png").exists()  # no epoch rows, no training curves
    assert (tmp_path / "tensorboard").is_dir() == (not flags)
