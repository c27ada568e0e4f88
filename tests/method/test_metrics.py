"""Continual-learning metrics, on hand-built inputs with hand-computed values.

The run summary, the end-of-run report and the progress bars are in tests/report; the end-to-end
checks of the files a run writes are in tests/program/test_end_to_end.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from support import MATRIX, hand_rows

from continual.method.metrics import (
    EvalCounts,
    TaskAccuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    mean_and_std,
    task_of_class,
)
from continual.report.summary import run_summary

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


def test_eval_counts_per_task_top1_top5_old_new() -> None:
    classes_per_task = [2, 3]
    logits = torch.tensor([
        [5.0, 1, 0, 0, 0],  # target 0: right
        [5.0, 1, 0, 0, 0],  # target 1: wrong top-1, right top-5
        [0, 0, 0, 9.0, 0],  # target 3: right
        [0, 0, 9.0, 0, 0],  # target 4: wrong
    ])
    targets = torch.tensor([0, 1, 3, 4])
    counts = EvalCounts.zeros(2)
    counts.add_batch(logits, targets, task_of_class(classes_per_task))
    accuracy = TaskAccuracy.from_counts(counts)
    assert accuracy.top1 == 50.0 and accuracy.top5 == 100.0
    assert accuracy.per_task == [50.0, 50.0] and accuracy.old == 50.0 and accuracy.new == 50.0


def test_forgetting_and_average_incremental_accuracy_on_a_hand_built_matrix() -> None:
    matrix = [[90.0], [70.0, 80.0], [60.0, 85.0, 75.0]]
    # task 0: best 90 -> 60 (30); task 1: best 80 (row 1) -> 85 now (-5); mean 12.5
    assert forgetting(matrix) == pytest.approx(12.5)
    assert forgetting(matrix[:1]) == 0.0
    assert average_incremental_accuracy([90.0, 75.0, 73.0]) == pytest.approx(238 / 3)


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
