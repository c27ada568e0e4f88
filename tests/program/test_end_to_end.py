"""A real 3-task DyTox run on the offline digits data, resume from its checkpoints, early errors, and
runs of the DyTox+ / DyTox++ option files."""
from __future__ import annotations

import contextlib
import io
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

import main
from conftest import REPO_ROOT
from continual.config import parse_config
from continual.method.metrics import backward_transfer, forgetting
from continual.report.summary import TASK_KEYS
from continual.state import checkpoints as checkpoint

OPTIONS = REPO_ROOT / "options"
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
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_main(argv) == 0
    (base / "stdout.txt").write_text(printed.getvalue())
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
    for row in rows:  # knowing the task can only help: task-IL and task prediction bound class-IL from above
        assert row["acc1"] <= row["acc_task_incremental"] <= 100 and row["acc1"] <= row["acc_task_prediction"] <= 100
        matrix = [r["acc_per_task"] for r in rows[: row["task"] + 1]]
        assert row["backward_transfer"] == pytest.approx(backward_transfer(matrix))
    assert rows[0]["acc_task_prediction"] == 100.0 and rows[0]["acc_task_incremental"] == rows[0]["acc1"]
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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("name", "shape"), [
    ("accuracy_curve.png", (400, 600, 4)), ("accuracy_matrix.png", (500, 600, 4)),
    ("training_curves.png", (600, 800, 4)),
])
def test_plots_are_valid_pngs(demo_run: Path, name: str, shape: tuple[int, int, int]) -> None:
    import matplotlib.image

    path = run_folder(demo_run / "out") / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5000  # axes, a curve, labels: not an empty canvas
    image = matplotlib.image.imread(path)
    assert image.shape == shape and image.min() < 0.5 < image.max()


def test_summary_json_equals_the_log_rows(demo_run: Path) -> None:
    folder = run_folder(demo_run / "out")
    rows = rows_of(folder / "log.jsonl")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["tasks"] == [{key: row[key] for key in TASK_KEYS} for row in rows]
    matrix = [row["acc_per_task"] for row in rows]
    assert summary["accuracy_matrix"] == matrix
    assert summary["avg_acc"] == rows[-1]["avg_acc"] == pytest.approx(np.mean([r["acc1"] for r in rows]))
    assert summary["last_acc"] == rows[-1]["acc1"]
    assert summary["forgetting"] == pytest.approx(forgetting(matrix))
    assert summary["backward_transfer"] == pytest.approx(backward_transfer(matrix))
    assert summary["params_total"] == rows[-1]["params_total"] and summary["tasks_done"] == summary["nb_tasks"] == 3
    assert summary["name"] == "e2e" and summary["wall_seconds"] > 0
    assert summary["phase_seconds"]["train"] == pytest.approx(sum(r["seconds"]["train"] for r in rows))
    assert not list(folder.rglob("*.tmp"))


def test_end_of_run_table_is_printed(demo_run: Path) -> None:
    printed = (demo_run / "stdout.txt").read_text()
    summary = json.loads((run_folder(demo_run / "out") / "summary.json").read_text())
    lines = [line.split() for line in printed.splitlines()]
    header = lines.index(["task", "classes", "top-1", "top-5", "old", "new", "task-IL", "task-pred"])
    for task, row in enumerate(summary["tasks"]):  # one table line per task, after the rule
        assert lines[header + 2 + task][:3] == [str(task), str(row["classes_seen"]), f"{row['acc1']:.2f}"]
    assert f"Avg {summary['avg_acc']:.2f}  Last {summary['last_acc']:.2f}" in printed
    assert f"backward transfer {summary['backward_transfer']:.2f}" in printed and "wall time" in printed


def test_resume_continues_from_a_task_checkpoint(demo_run: Path) -> None:
    folder = run_folder(demo_run / "out")
    saved_rows, saved_epochs = rows_of(folder / "log.jsonl"), rows_of(folder / "epochs.jsonl")
    argv = DEMO + SHORT + ["--name", "e2e", "--resume", str(folder), "--start-task", "2",
                           "--log-dir", str(demo_run / "logs_resumed")]
    assert run_main(argv) == 0
    rows = rows_of(folder / "log.jsonl")
    for got, saved in zip(rows[:2], saved_rows[:2], strict=True):
        assert got == saved, {k: (got.get(k), saved.get(k)) for k in set(got) | set(saved)
                              if got.get(k) != saved.get(k)}
    assert [r["task"] for r in rows] == [0, 1, 2]
    assert rows[2]["memory_per_class"] == saved_rows[2]["memory_per_class"]
    assert len(list(folder.glob("config_resume_*.yaml"))) == 1
    epochs = rows_of(folder / "epochs.jsonl")  # the redone task's epochs replace the earlier ones
    assert [e for e in epochs if e["task"] < 2] == [e for e in saved_epochs if e["task"] < 2]
    assert [(e["phase"], e["epoch"]) for e in epochs if e["task"] == 2] == \
        [(e["phase"], e["epoch"]) for e in saved_epochs if e["task"] == 2]


def test_tensorboard_scalars_equal_the_logs_after_a_resume(demo_run: Path) -> None:
    """Runs after the resume above: the event files are rebuilt from the logs, so task 2 appears once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run_folder(demo_run / "out")
    rows, epochs = rows_of(folder / "log.jsonl"), rows_of(folder / "epochs.jsonl")
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    for tag, key in (("accuracy/top1", "acc1"), ("accuracy/task_incremental", "acc_task_incremental"),
                     ("backward_transfer", "backward_transfer")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [0, 1, 2], tag
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], abs=1e-4), tag  # float32
    assert [s.value for s in events.Scalars("accuracy_matrix/task_0")] == pytest.approx(
        [r["acc_per_task"][0] for r in rows], abs=1e-4)
    train_losses = events.Scalars("train/total")
    assert [s.step for s in train_losses] == [i for i, e in enumerate(epochs) if e["phase"] == "train"]
    assert [s.value for s in train_losses] == pytest.approx([e["total"] for e in epochs if e["phase"] == "train"])


def test_eval_reports_the_accuracy_of_a_saved_checkpoint(demo_run: Path, capsys: pytest.CaptureFixture) -> None:
    folder = run_folder(demo_run / "out")
    saved = rows_of(folder / "log.jsonl")
    files_before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    argv = DEMO + SHORT + ["--eval", "--resume", str(folder), "--start-task", "2"]
    capsys.readouterr()
    assert run_main(argv) == 0
    printed = capsys.readouterr().out
    assert "checkpoint of task 1 (4 classes" in printed and "task-IL  task-pred" in printed
    from continual.config import parse_config, settings_from
    from continual.runtime.distributed import setup
    from continual.train.session import run
    rows = [record.to_row() for record in run(settings_from(parse_config(argv)), setup("cpu"))]
    for key in ("acc1", "acc5", "acc_old", "acc_new", "acc_task_incremental", "acc_task_prediction"):
        assert rows[0][key] == pytest.approx(saved[1][key]), key
    assert rows[0]["acc_per_task"] == pytest.approx(saved[1]["acc_per_task"])
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == files_before  # evaluated, nothing trained or written


@pytest.mark.parametrize(("flags", "message"), [
    (["--start-task", "1"], "--start-task needs --resume"),
    (["--no-class-attention"], "class_attention must be true"),
    (["--dist-url", "tcp://10.0.0.1:23456"], "processes join through torchrun"),
    (["--world-size", "4"], "disagrees"),
    (["--eval"], "--eval needs --resume"),
    (["--no-dytox"], "are not parts of the convit baseline"),
    (["--model", "vit"], "DyTox's encoder is the ConViT"),
    (["--no-dytox", "--resnet", "--freeze-task", "--freeze-ft"], "'resnet' is DyTox's encoder"),
    (["--pod", "1", "--pod-scales", "1", "2"], "gives NaN at scales > 1"),
    (["--batch-size", "0"], "option 'batch_size' must be >= 1, got 0"),
    (["--drop-path", "1.5"], "option 'drop_path' must be [0, 1], got 1.5"),
])
def test_unsupported_or_inconsistent_options_fail_before_any_work(tmp_path: Path, flags: list, message: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(DEMO + flags + ["--output-basedir", str(tmp_path)]) == 2
    printed = capsys.readouterr().err
    errors = [line for line in printed.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in printed  # one clean line
    assert list(tmp_path.iterdir()) == []


def test_missing_data_names_the_path_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--options", str(OPTIONS / "data/imagenet100_10-10.yaml"), str(OPTIONS / "model/imagenet_dytox.yaml"),
            "--data-path", str(tmp_path / "nowhere"), "--output-basedir", str(tmp_path / "out")]
    assert run_main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: ImageNet folder {tmp_path / 'nowhere' / 'train'} not found: expected the layout "
                      f"{tmp_path / 'nowhere'}/train/WNID/*.JPEG and val/WNID/*.JPEG"]
    assert not (tmp_path / "out").exists()


def test_bad_option_file_exits_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    assert run_main(["--options", str(bad)]) == 2
    assert "learning_rate" in capsys.readouterr().err
    bad.write_text("memory_size: -2000\n")  # out of bounds: the file and the option named, on one line
    assert run_main(["--options", str(bad), "--output-basedir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {bad}: option 'memory_size': invalid value -2000: must be >= 0\n"
    assert not (tmp_path / "out").exists()


ORDERS = [[3, 1, 0, 2, 4, 5, 6, 7, 8, 9], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
TINY = ["--max-task", "2", "--base-epochs", "1", "--epochs", "1", "--finetuning-epochs", "1",
        "--train-per-class", "16", "--num-workers", "0", "--seed", "0"]


@pytest.fixture(scope="module")
def orders_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("orders")
    orders_file = base / "two_orders.yaml"
    orders_file.write_text(f"class_order: {ORDERS}\n")
    argv = DEMO + [str(orders_file)] + TINY + ["--name", "multi", "--output-basedir", str(base / "out"),
                                               "--log-dir", str(base / "logs")]
    assert run_main(argv) == 0
    return base / "out" / "digits" / "demo"


def test_each_class_order_runs_in_its_own_folder(orders_run: Path) -> None:
    folders = sorted(orders_run.glob("*_multi_order?"))
    assert [f.name.rsplit("_", 1)[1] for f in folders] == ["order0", "order1"]
    for folder, order in zip(folders, ORDERS, strict=True):
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["class_order"] == order and config["name"] == folder.name.split("_", 2)[2]
        assert [r["task"] for r in rows_of(folder / "log.jsonl")] == [0, 1]
        assert (folder / "summary.json").is_file() and (folder / "accuracy_curve.png").is_file()
    first_task_images = [checkpoint.load_memory(checkpoint.memory_path(f, 0)).get()[0] for f in folders]
    assert not np.array_equal(first_task_images[0], first_task_images[1])  # other classes first: nothing shared


def test_orders_aggregate_has_the_mean_and_sample_std(orders_run: Path) -> None:
    aggregates = list(orders_run.glob("*_multi_orders_summary.json"))
    assert len(aggregates) == 1
    aggregate = json.loads(aggregates[0].read_text())
    summaries = [json.loads((f / "summary.json").read_text()) for f in sorted(orders_run.glob("*_multi_order?"))]
    for key in ("avg_acc", "last_acc"):
        values = [s[key] for s in summaries]
        assert [o[key] for o in aggregate["orders"]] == values
        assert aggregate[key]["mean"] == pytest.approx(statistics.mean(values))
        assert aggregate[key]["std"] == pytest.approx(statistics.stdev(values))  # sample std (ddof=1)
    assert aggregate["std"] == "sample (ddof=1)" and [o["class_order"] for o in aggregate["orders"]] == ORDERS


def test_resume_with_several_orders_is_refused_before_any_work(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    orders_file = tmp_path / "two_orders.yaml"
    orders_file.write_text(f"class_order: {ORDERS}\n")
    argv = DEMO + [str(orders_file), "--resume", str(tmp_path), "--output-basedir", str(tmp_path / "out")]
    assert run_main(argv) == 2
    assert re.search("--resume.*class_order holds 2 orders", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_auto_resume_with_several_orders_does_not_rerun_finished_orders(orders_run: Path) -> None:
    folders = sorted(orders_run.glob("*_multi_order?"))
    epochs_before = [(f / "epochs.jsonl").read_text() for f in folders]
    base = orders_run.parents[2]
    argv = DEMO + [str(base / "two_orders.yaml")] + TINY + ["--name", "multi", "--auto-resume",
                                                            "--output-basedir", str(base / "out"),
                                                            "--log-dir", str(base / "logs")]
    assert run_main(argv) == 0
    assert sorted(orders_run.glob("*_multi_order?")) == folders  # no new folder
    assert [(f / "epochs.jsonl").read_text() for f in folders] == epochs_before  # nothing trained again
    assert len(list(orders_run.glob("*_multi_orders_summary.json"))) == 2  # a new aggregate, same values


def test_fast_and_plain_paths_train_the_same_run(tmp_path: Path) -> None:
    """A whole run (two tasks: teacher, frozen old parts, divergence head, finetuning, stochastic depth
    0.1 as published) in the default fast mode and in the published arithmetic: every epoch's loss
    terms and the final weights agree to float32 rounding. Random exemplars keep the memory
    identical (iCaRL herding can reorder near-tied exemplars on rounding-level feature differences)."""
    common = DEMO + ["--max-task", "2", "--base-epochs", "2", "--epochs", "2", "--finetuning-epochs", "1",
                     "--train-per-class", "24", "--num-workers", "0", "--seed", "3", "--rehearsal", "random",
                     "--no-plots", "--no-tensorboard", "--log-dir", str(tmp_path / "logs")]
    runs = {}
    for mode, flags in (("fast", []), ("plain", ["--no-fused-attention", "--no-joint-tokens"])):
        with contextlib.redirect_stdout(io.StringIO()):
            assert run_main(common + flags + ["--name", mode, "--output-basedir", str(tmp_path / mode)]) == 0
        folder = next((tmp_path / mode).glob(f"digits/demo/*_{mode}"))
        runs[mode] = (rows_of(folder / "epochs.jsonl"), checkpoint.load_task_checkpoint(
            checkpoint.checkpoint_path(folder, 1))[0].state_dict())
    (fast_epochs, fast_weights), (plain_epochs, plain_weights) = runs["fast"], runs["plain"]
    assert [(e["task"], e["phase"]) for e in fast_epochs] == [(e["task"], e["phase"]) for e in plain_epochs]
    assert {e["phase"] for e in fast_epochs} == {"train", "finetune"} and any("kd" in e for e in fast_epochs)
    for fast, plain in zip(fast_epochs, plain_epochs, strict=True):
        for term in ("classification", "kd", "div", "total"):
            if term in plain:
                assert fast[term] == pytest.approx(plain[term], rel=1e-5, abs=1e-7), (fast["task"], fast["epoch"], term)
    for key, value in plain_weights.items():
        assert (fast_weights[key] - value).abs().max() <= 1e-4 * (1 + value.abs().max()), key


# ---------------------------------------------------------------------------
# The published DyTox+ and DyTox++ model files (mixup, SAM), two tasks each
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("model_file", ["cifar_dytox_plus", "cifar_dytox_plusplus", "imagenet_dytox_plus"])
def test_published_dytox_plus_option_files_run_two_tasks(tmp_path: Path, model_file: str) -> None:
    """The published model options on the offline digits, shortened by flags (few images, one epoch, tokens 48
    wide instead of 384 or 768: the same blocks, heads and options with a sixty-fourth of the arithmetic)."""
    argv = [
        "--options", str(OPTIONS / "data/digits_demo.yaml"), str(OPTIONS / f"model/{model_file}.yaml"),
        "--max-task", "2", "--base-epochs", "1", "--epochs", "1", "--finetuning-epochs", "1", "--embed-dim", "48",
        "--train-per-class", "16", "--memory-size", "20", "--input-size", "32", "--num-workers", "0",
        "--name", "plus", "--output-basedir", str(tmp_path), "--log-dir", str(tmp_path / "logs"),
        "--no-amp",  # the ImageNet files' mixed precision would be emulated bfloat16 on this CPU
    ]
    cfg = parse_config(argv)
    assert cfg.mixup == 0.8 and cfg.sam_rho == (3.0 if model_file.endswith("plusplus") else 0.0)
    assert main.main(argv) == 0
    log = next(tmp_path.glob("digits/demo/*_plus/log.jsonl"))
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["task"] for r in rows] == [0, 1] and rows[1]["classes_seen"] == 4
    epochs = [json.loads(line) for line in log.with_name("epochs.jsonl").read_text().splitlines()]
    assert {e["phase"] for e in epochs} == {"train", "finetune"}


def test_debug_runs_one_batch_per_epoch_and_a_never_read_option_says_so(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = DEMO + ["--debug", "--max-task", "2", "--freeze-eval", "--name", "e2e", "--output-basedir", str(tmp_path),
                   "--log-dir", str(tmp_path / "logs"), "--no-progress"]
    assert run_main(argv) == 0
    assert "note: --freeze-eval True: no effect" in capsys.readouterr().err
    epochs = rows_of(run_folder(tmp_path) / "epochs.jsonl")
    assert [(e["task"], e["phase"]) for e in epochs] == [(0, "train"), (1, "train")] + [(1, "finetune")] * 10
    assert all(e["images_per_s"] * e["seconds"] == pytest.approx(32, rel=1e-6) for e in epochs)  # one batch of 32


def test_validation_evaluates_on_the_held_out_images(tmp_path: Path) -> None:
    argv = DEMO + ["--debug", "--max-task", "2", "--validation", "0.2", "--name", "e2e", "--output-basedir",
                   str(tmp_path), "--log-dir", str(tmp_path / "logs"), "--no-progress", "--finetuning-epochs", "1"]
    assert run_main(argv) == 0
    rows = rows_of(run_folder(tmp_path) / "log.jsonl")
    assert [r["eval_images"] for r in rows] == [57, 114]  # int(0.2 * 288) held-out images of each task
