"""Continual-learning metrics, from correct-prediction counts.

Evaluation accumulates counts (not accuracies) per task, so that counts from
several batches, or several processes, add up exactly before any division.
Accuracies are percentages.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def task_of_class(classes_per_task: list[int], device: torch.device | str = "cpu") -> Tensor:
    """(C,) task index of each class label, labels being numbered task after task."""
    sizes = torch.tensor(classes_per_task, device=device)
    return torch.repeat_interleave(torch.arange(len(classes_per_task), device=device), sizes)


@dataclass
class EvalCounts:
    """Per-task counts over a test set: (T,) tensors of int64."""

    correct: Tensor  # top-1 correct, by the task of the true class
    correct_top5: Tensor
    total: Tensor

    @classmethod
    def zeros(cls, nb_tasks: int, device: torch.device | str = "cpu") -> EvalCounts:
        return cls(*(torch.zeros(nb_tasks, dtype=torch.long, device=device) for _ in range(3)))

    def add_batch(self, logits: Tensor, targets: Tensor, class_tasks: Tensor) -> None:
        """Accumulate one batch: logits (B, C), targets (B,) in 0..C-1."""
        topk = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, k)
        hit5 = (topk == targets[:, None]).any(dim=1)
        hit1 = topk[:, 0] == targets
        tasks = class_tasks[targets]
        nb_tasks = len(self.total)
        self.correct += torch.bincount(tasks[hit1], minlength=nb_tasks)
        self.correct_top5 += torch.bincount(tasks[hit5], minlength=nb_tasks)
        self.total += torch.bincount(tasks, minlength=nb_tasks)

    def as_tensor(self) -> Tensor:
        """(3, T) stack, for summing across processes."""
        return torch.stack((self.correct, self.correct_top5, self.total))

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

    @classmethod
    def from_counts(cls, counts: EvalCounts) -> TaskAccuracy:
        per_task = [percent(c, n) for c, n in zip(counts.correct, counts.total)]
        return cls(
            top1=percent(counts.correct.sum(), counts.total.sum()),
            top5=percent(counts.correct_top5.sum(), counts.total.sum()),
            per_task=per_task,
            old=percent(counts.correct[:-1].sum(), counts.total[:-1].sum()),
            new=per_task[-1],
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
