"""TensorBoard scalars of a run, under ``<run folder>/tensorboard/`` (main process only).

Per task (step = task index): the accuracies of the task row, Avg, forgetting,
backward transfer, each entry of the accuracy-matrix row, and the top-1 of a
method's other classifiers (``accuracy/top1_head`` for iCaRL's head). Per epoch (step =
epoch index over the whole run, as in ``epochs.jsonl``): the loss terms, the
learning rate and the throughput, under ``train/`` or ``finetune/``.

The logs are the source of truth: when a run resumes, the event files are
rebuilt from the restored rows, so TensorBoard never shows the work that the
resume redoes twice.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from continual.report.records import EpochRecord, TaskResult

TENSORBOARD_DIR = "tensorboard"

# TaskResult field -> TensorBoard tag.
TASK_SCALARS = {
    "acc1": "accuracy/top1",
    "acc5": "accuracy/top5",
    "acc_old": "accuracy/old_classes",
    "acc_new": "accuracy/new_classes",
    "acc_task_incremental": "accuracy/task_incremental",
    "acc_task_prediction": "accuracy/task_prediction",
    "avg_acc": "accuracy/average_incremental",
    "forgetting": "forgetting",
    "backward_transfer": "backward_transfer",
    "params_total": "parameters",
}
EPOCH_SCALARS = ("total", "classification", "kd", "div", "lr", "images_per_s")


def _finite(value: object) -> bool:
    """TensorBoard cannot plot nulls (NaN in JSON): old-class accuracy after the first task is skipped."""
    return isinstance(value, (int, float)) and math.isfinite(value)


class ScalarLog:
    """A ``SummaryWriter`` on the run folder, fed with task results and epoch records."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported only when TensorBoard is wanted

        folder = run_dir / TENSORBOARD_DIR
        shutil.rmtree(folder, ignore_errors=True)  # rebuilt from the logs (see the module docstring)
        self.writer = SummaryWriter(log_dir=str(folder))

    def replay(self, results: list[TaskResult], epochs: list[EpochRecord]) -> None:
        """Write the records a resumed run starts with."""
        for index, record in enumerate(epochs):
            self.epoch(index, record)
        for result in results:
            self.task(result)

    def epoch(self, index: int, record: EpochRecord) -> None:
        values = {**record.losses, "lr": record.lr, "images_per_s": record.images_per_s}
        for name in EPOCH_SCALARS:
            if _finite(values.get(name)):
                self.writer.add_scalar(f"{record.phase}/{name}", values[name], index)

    def task(self, result: TaskResult) -> None:
        step = result.task
        for key, tag in TASK_SCALARS.items():
            value = getattr(result, key)
            if _finite(value):
                self.writer.add_scalar(tag, value, step)
        for j, value in enumerate(result.acc_per_task):
            if _finite(value):
                self.writer.add_scalar(f"accuracy_matrix/task_{j}", value, step)
        for name, value in result.acc1_other.items():  # a method's other classifiers (iCaRL's head)
            if _finite(value):
                self.writer.add_scalar(f"accuracy/top1_{name}", value, step)
        self.writer.flush()  # a task is rare and valuable: on disk now, not at the next flush interval

    def close(self) -> None:
        self.writer.close()
