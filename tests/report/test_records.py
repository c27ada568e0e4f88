"""Typed records: the JSON layout of log.jsonl and epochs.jsonl, and every reader naming real fields."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from support import task_result

from continual.report.records import EpochProgress, EpochRecord, EvalRecord, TaskResult
from continual.report.run_log import JsonLinesLog
from continual.report.summary import TASK_KEYS
from continual.report.table import TASK_COLUMNS
from continual.report.tensorboard import TASK_SCALARS

# The layout of a log.jsonl row before the records existed (the task loop wrote these keys in this order).
LOG_ROW_KEYS = [
    "task", "classes_seen", "acc1", "acc5", "acc_per_task", "acc_old", "acc_new", "acc_task_incremental",
    "acc_task_prediction", "avg_acc", "forgetting", "backward_transfer", "params_total", "params_trainable",
    "params_without_head_div", "memory_size", "memory_per_class", "seconds", "eval_images", "world_size",
    "memory_mode", "memory_total", "memory_fingerprints", "acc1_other",
]


def test_a_task_result_writes_the_log_row_layout_and_reads_it_back(tmp_path: Path) -> None:
    result = task_result(task=0, acc_old=math.nan, acc1=100.0, memory_per_class={0: 20, 1: 20},
                         seconds={"train": 1.5, "eval": 0.5}, memory_fingerprints=["ab"])
    assert list(result.to_row()) == LOG_ROW_KEYS
    log = JsonLinesLog(tmp_path / "log.jsonl")
    log.append(result.to_row())
    line = json.loads((tmp_path / "log.jsonl").read_text())
    assert list(line) == LOG_ROW_KEYS and line["acc_old"] is None  # NaN is written as null
    back = TaskResult.from_row(line)
    assert back.memory_per_class == {"0": 20, "1": 20} and back.seconds == {"train": 1.5, "eval": 0.5}
    assert list(back.to_row()) == LOG_ROW_KEYS


def test_a_row_of_an_older_run_without_the_other_classifiers_reads_back_with_none() -> None:
    row = task_result(acc1_other={"head": 40.5}).to_row()
    assert TaskResult.from_row(row).acc1_other == {"head": 40.5}
    del row["acc1_other"]
    assert TaskResult.from_row(row).acc1_other == {}
    del row["memory_fingerprints"]  # a field every row has is still required
    try:
        TaskResult.from_row(row)
    except KeyError as error:
        assert error.args == ("memory_fingerprints",)
    else:
        raise AssertionError("a row without memory_fingerprints was read")


def test_an_epoch_record_writes_its_losses_inline() -> None:
    record = EpochRecord(2, "finetune", 4, 1e-4, {"classification": 0.5, "total": 0.5}, 100.0, 2.0, 0.5)
    row = record.to_row()
    assert list(row) == ["task", "phase", "epoch", "lr", "classification", "total", "images_per_s", "seconds",
                         "data_seconds", "data_wait_fraction"]
    assert row["data_wait_fraction"] == 0.25
    assert EpochRecord.from_row(json.loads(json.dumps(row))) == record


def test_an_eval_record_is_the_accuracy_part_of_a_task_row() -> None:
    fields = [f.name for f in dataclasses.fields(EvalRecord)]
    assert fields == LOG_ROW_KEYS[:9] + ["eval_images"]


def test_every_reader_names_fields_of_the_task_result() -> None:
    names = {f.name for f in dataclasses.fields(TaskResult)}
    assert set(TASK_KEYS) <= names
    assert {key for _, key, _ in TASK_COLUMNS} <= names
    assert set(TASK_SCALARS) <= names


def test_epoch_progress_sums_the_loss_terms_of_each_step() -> None:
    progress = EpochProgress()
    progress.add({"total": 1.0, "kd": 0.25}, images=8)
    progress.add({"total": 3.0}, images=4)
    assert progress.sums == {"total": 4.0, "kd": 0.25} and progress.steps == 2 and progress.images == 12
