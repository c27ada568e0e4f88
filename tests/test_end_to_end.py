"""A real 3-task DyTox run on the offline digits data, resume from its checkpoints, and early errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import main
from continual import checkpoint
from continual.datasets import DatasetError

OPTIONS = Path(__file__).resolve().parents[1] / "options"
DEMO = ["--options", str(OPTIONS / "data/digits_demo.yaml"), str(OPTIONS / "model/demo_tiny.yaml")]
SHORT = ["--max-task", "3", "--base-epochs", "8", "--epochs", "4", "--finetuning-epochs", "2", "--seed", "0"]


def run_main(argv: list[str]) -> int:
    return main.main(argv)


def run_folder(basedir: Path) -> Path:
    folders = sorted(basedir.glob("digits/demo/*_e2e"))
    assert len(folders) == 1, folders
    return folders[0]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("e2e")
    argv = DEMO + SHORT + ["--name", "e2e", "--output-basedir", str(base / "out"), "--log-dir", str(base / "logs")]
    assert run_main(argv) == 0
    return base


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_has_one_row_per_task_with_sane_metrics(demo_run: Path) -> None:
    rows = rows_of(run_folder(demo_run / "out") / "log.jsonl")
    assert [r["task"] for r in rows] == [0, 1, 2]
    assert [r["classes_seen"] for r in rows] == [2, 4, 6]
    for row in rows:
        assert 0 <= row["acc1"] <= row["acc5"] <= 100
        assert len(row["acc_per_task"]) == row["task"] + 1
        assert row["params_trainable"] <= row["params_total"] and row["params_without_head_div"] <= row["params_total"]
        assert set(row["seconds"]) == {"train", "memory", "finetune", "eval"}
    assert rows[0]["acc1"] > 80  # 2 classes: chance is 50
    assert rows[0]["acc_old"] is None  # no old classes after the first task (NaN is written as null)
    assert rows[2]["avg_acc"] == pytest.approx(np.mean([r["acc1"] for r in rows]))
    assert rows[1]["params_total"] > rows[0]["params_total"]  # a token, a head and the divergence head
    mirror = sorted((demo_run / "logs" / "digits" / "demo").glob("*_e2e.jsonl"))
    assert len(mirror) == 1 and rows_of(mirror[0]) == rows


def test_memory_is_balanced_and_within_budget(demo_run: Path) -> None:
    rows = rows_of(run_folder(demo_run / "out") / "log.jsonl")
    # memory_size 200: 100 per class after task 0, 50 after task 1, 33 after task 2
    assert [r["memory_per_class"] for r in rows] == [
        {"0": 100, "1": 100}, {str(c): 50 for c in range(4)}, {str(c): 33 for c in range(6)},
    ]
    assert [r["memory_size"] for r in rows] == [200, 200, 198]


def test_run_folder_holds_config_checkpoints_and_memory(demo_run: Path) -> None:
    folder = run_folder(demo_run / "out")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["max_task"] == 3 and config["embed_dim"] == 64 and config["lr"] == 0.02
    for task in range(3):
        model, state = checkpoint.load_task_checkpoint(checkpoint.checkpoint_path(folder, task))
        assert model.nb_classes_per_task == [2] * (task + 1) and state["task_id"] == task
    memory = checkpoint.load_memory(checkpoint.memory_path(folder, 2))
    assert len(memory) == 198 and memory.get()[0].shape[1:] == (16, 16, 3)
    epochs = rows_of(folder / "epochs.jsonl")
    assert len([e for e in epochs if e["phase"] == "train"]) == 8 + 4 + 4
    assert len([e for e in epochs if e["phase"] == "finetune"]) == 2 + 2


def test_resume_continues_from_a_task_checkpoint(demo_run: Path) -> None:
    folder = run_folder(demo_run / "out")
    saved_rows = rows_of(folder / "log.jsonl")
    argv = DEMO + SHORT + ["--name", "e2e", "--resume", str(folder), "--start-task", "2",
                           "--log-dir", str(demo_run / "logs_resumed")]
    assert run_main(argv) == 0
    rows = rows_of(folder / "log.jsonl")
    for got, saved in zip(rows[:2], saved_rows[:2]):
        assert got == saved, {k: (got.get(k), saved.get(k)) for k in set(got) | set(saved) if got.get(k) != saved.get(k)}
    assert [r["task"] for r in rows] == [0, 1, 2]
    assert rows[2]["memory_per_class"] == saved_rows[2]["memory_per_class"]
    assert len(list(folder.glob("config_resume_*.yaml"))) == 1


def test_eval_reports_the_accuracy_of_a_saved_checkpoint(demo_run: Path, capsys: pytest.CaptureFixture) -> None:
    folder = run_folder(demo_run / "out")
    saved = rows_of(folder / "log.jsonl")
    argv = DEMO + ["--eval", "--resume", str(folder), "--start-task", "2"]
    capsys.readouterr()
    assert run_main(argv) == 0
    assert "checkpoint of task 1 (4 classes" in capsys.readouterr().out
    from continual.config import parse_config
    from continual.distributed import setup
    from continual.task_loop import run
    rows = run(parse_config(argv), setup("cpu"))
    assert rows[0]["acc_per_task"] == pytest.approx(saved[1]["acc_per_task"])


def test_resume_needs_the_previous_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    argv = DEMO + ["--resume", str(tmp_path / "run"), "--start-task", "1", "--output-basedir", str(tmp_path)]
    with pytest.raises(FileNotFoundError, match="checkpoint_0.pth"):
        run_main(argv)


@pytest.mark.parametrize(("flags", "message"), [
    (["--start-task", "1"], "--start-task needs --resume"),
    (["--no-class-attention"], "class_attention must be true"),
    (["--sep-memory"], "--sep-memory is not implemented yet"),
    (["--world-size", "4"], "disagrees"),
    (["--eval"], "--eval needs --resume"),
    (["--no-dytox"], "only DyTox"),
])
def test_unsupported_or_inconsistent_options_fail_before_any_work(tmp_path: Path, flags: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_main(DEMO + flags + ["--output-basedir", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_missing_data_names_the_path_before_any_work(tmp_path: Path) -> None:
    argv = ["--options", str(OPTIONS / "data/imagenet100_10-10.yaml"), str(OPTIONS / "model/imagenet_dytox.yaml"),
            "--data-path", str(tmp_path / "nowhere"), "--output-basedir", str(tmp_path / "out")]
    with pytest.raises(DatasetError, match="nowhere"):
        run_main(argv)
    assert not (tmp_path / "out").exists()


def test_bad_option_file_exits_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    assert run_main(["--options", str(bad)]) == 2
    assert "learning_rate" in capsys.readouterr().err
