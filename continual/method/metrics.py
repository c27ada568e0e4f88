"""Continual-learning metrics, from correct-prediction counts.

Evaluation accumulates counts (not accuracies) per task, so that counts from
several batches, or several processes, add up exactly before any division.
Accuracies are percentages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def task_of_class(classes_per_task: list[int], device: torch.device | str = "cpu") -> Tensor:
    """(C,) task index of each class label, labels being numbered task after task."""
    sizes = torch.tensor(classes_per_task, device=device)
    return torch.repeat_interleave(torch.arange(len(classes_per_task), device=device), sizes)


@dataclass
class EvalCounts:
    """Per-task counts over a test set: (T,) tensors of int64, indexed by the task of the true class."""

    correct: Tensor  # top-1 correct among all seen classes (class-incremental)
    correct_top5: Tensor
    total: Tensor
    task_predicted: Tensor  # the highest logit lies in the true task's classes
    correct_within_task: Tensor  # argmax over the true task's classes only (task-incremental)

    @classmethod
    def zeros(cls, nb_tasks: int, device: torch.device | str = "cpu") -> EvalCounts:
        return cls(*(torch.zeros(nb_tasks, dtype=torch.long, device=device) for _ in range(5)))

    def add_batch(self, logits: Tensor, targets: Tensor, class_tasks: Tensor) -> None:
        """Accumulate one batch: logits (B, C), targets (B,) in 0..C-1, class_tasks (C,)."""
        topk = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, k)
        hit5 = (topk == targets[:, None]).any(dim=1)
        hit1 = topk[:, 0] == targets
        tasks = class_tasks[targets]  # (B,)
        task_hit = class_tasks[topk[:, 0]] == tasks
        in_true_task = class_tasks[None, :] == tasks[:, None]  # (B, C)
        within_task_hit = logits.masked_fill(~in_true_task, float("-inf")).argmax(dim=1) == targets
        nb_tasks = len(self.total)
        self.correct += torch.bincount(tasks[hit1], minlength=nb_tasks)
        self.correct_top5 += torch.bincount(tasks[hit5], minlength=nb_tasks)
        self.total += torch.bincount(tasks, minlength=nb_tasks)
        self.task_predicted += torch.bincount(tasks[task_hit], minlength=nb_tasks)
        self.correct_within_task += torch.bincount(tasks[within_task_hit], minlength=nb_tasks)

    def as_tensor(self) -> Tensor:
        """(5, T) stack, for summing across processes: counts add up exactly, accuracies would not."""
        return torch.stack((self.correct, self.correct_top5, self.total, self.task_predicted,
                            self.correct_within_task))

    @classmethod
    def from_tensor(cls, stacked: Tensor) -> EvalCounts:
        return cls(*stacked.clone())


def percent(numerator: Tensor | int, denominator: Tensor | int) -> float:
    denominator = int(denominator)
    return 100.0 * int(numerator) / denominator if denominator else float("nan")


@dataclass(frozen=True)
class TaskAccuracy:
    """Accuracies after learning a task, on all classes seen so far."""

    top1: float
    top5: float
    per_task: list[float]  # accuracy on each task's classes: a row of the accuracy matrix
    old: float  # on the classes of earlier tasks (nan after the first task)
    new: float  # on the classes of the last task
    task_incremental: float  # argmax within the true task's classes (the task id given at test time)
    task_prediction: float  # how often the highest logit falls in the true task's classes

    @classmethod
    def from_counts(cls, counts: EvalCounts) -> TaskAccuracy:
        per_task = [percent(c, n) for c, n in zip(counts.correct, counts.total, strict=True)]
        return cls(
            top1=percent(counts.correct.sum(), counts.total.sum()),
            top5=percent(counts.correct_top5.sum(), counts.total.sum()),
            per_task=per_task,
            old=percent(counts.correct[:-1].sum(), counts.total[:-1].sum()),
            new=per_task[-1],
            task_incremental=percent(counts.correct_within_task.sum(), counts.total.sum()),
            task_prediction=percent(counts.task_predicted.sum(), counts.total.sum()),
        )


def average_incremental_accuracy(top1_per_task: list[float]) -> float:
    """Mean of the accuracies after each task ("Avg" in the paper)."""
    return sum(top1_per_task) / len(top1_per_task)


def forgetting(accuracy_matrix: list[list[float]]) -> float:
    """Mean over old tasks of (best earlier accuracy on the task - current accuracy on it).

    ``accuracy_matrix[i][j]`` is the accuracy on task j's classes after task i
    (row i has i + 1 entries). 0 after the first task.
    """
    current = accuracy_matrix[-1]
    old_tasks = range(len(current) - 1)
    if not old_tasks:
        return 0.0
    drops = [max(row[j] for row in accuracy_matrix[j:-1]) - current[j] for j in old_tasks]
    return sum(drops) / len(drops)


def backward_transfer(accuracy_matrix: list[list[float]]) -> float:
    """Mean over old tasks j of (current accuracy on j - accuracy on j right after learning it).

    BWT of Lopez-Paz & Ranzato (2017): a[T-1][j] - a[j][j] averaged over
    j < T-1; negative when learning new tasks lowers the old ones. 0 after the
    first task, like :func:`forgetting`.
    """
    current = accuracy_matrix[-1]
    old_tasks = range(len(current) - 1)
    if not old_tasks:
        return 0.0
    return sum(current[j] - accuracy_matrix[j][j] for j in old_tasks) / len(old_tasks)


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (ddof=1) of results over class orders or seeds.

    The sample std is the usual "mean ± std over 3 runs" of papers (and of
    scripts/bench_fashion.py); it is nan for a single value.
    """
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
