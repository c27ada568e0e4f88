"""Runs killed (SIGKILL) or stopped (SIGTERM) and resumed finish exactly like an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import main
from conftest import HELPERS, REPO_ROOT

ARGS = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"), str(REPO_ROOT / "options/model/demo_tiny.yaml"),
        "--max-task", "3", "--base-epochs", "3", "--epochs", "2", "--finetuning-epochs", "2",
        "--save-every-epoch", "1", "--deterministic", "--num-workers", "0", "--train-per-class", "48",
        "--finetuning-resetclf",  # the heads drawn again when finetuning starts: not when it resumes
        "--name", "resume"]
TIMINGS = {"seconds", "data_seconds", "images_per_s", "data_wait_fraction"}
TIMEOUT = 300


def launch(extra: list[str], script: Path = REPO_ROOT / "main.py", env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.Popen([sys.executable, str(script), *ARGS, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT,
                            start_new_session=True)  # its own process group, which a test may signal


def run_until(extra: list[str], pattern: str | None, sig: int = signal.SIGKILL, **launch_args) -> tuple[int, str]:
    """Run main.py; when a line contains ``pattern``, send ``sig``. Returns (exit code, output)."""
    process = launch(extra, **launch_args)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if pattern is not None and pattern in line:
            process.send_signal(sig)
            pattern = None
    return process.wait(timeout=TIMEOUT), "".join(lines)


def folder_of(base: Path) -> Path:
    folders = list(base.glob("digits/demo/*_resume"))
    assert len(folders) == 1
    return folders[0]


def outputs(folder: Path, last_task: int = 2) -> dict:
    def rows(name: str) -> list[dict]:
        """Rows without timings; a task row keeps which phases it timed (all of them, also after a resume)."""
        out = []
        for line in (folder / name).read_text().splitlines():
            row = json.loads(line)
            if isinstance(row["seconds"], dict):
                assert all(seconds > 0 for seconds in row["seconds"].values()), row["seconds"]
                row["phases"] = sorted(row["seconds"])
            out.append({k: v for k, v in row.items() if k not in TIMINGS})
        return out

    check_phase_seconds(folder)
    state = torch.load(folder / f"checkpoints/checkpoint_{last_task}.pth", weights_only=True)["model"]
    with np.load(folder / f"memory/memory_{last_task}.npz") as memory:
        arrays = {key: memory[key] for key in ("x", "y", "t")}
    return {"model": state, "memory": arrays, "log": rows("log.jsonl"), "epochs": rows("epochs.jsonl")}


def check_phase_seconds(folder: Path) -> None:
    """A phase lasts at least as long as its epochs, also when it was resumed: the seconds spent before
    a stop are kept in the run state, not lost."""
    epochs = [json.loads(line) for line in (folder / "epochs.jsonl").read_text().splitlines()]
    for line in (folder / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        for phase in ("train", "finetune"):
            spent = sum(e["seconds"] for e in epochs if e["task"] == row["task"] and e["phase"] == phase)
            assert row["seconds"].get(phase, 0.0) >= spent, (row["task"], phase, row["seconds"], spent)


def assert_same_run(got: dict, expected: dict) -> None:
    for name in ("log", "epochs"):
        assert len(got[name]) == len(expected[name]), name
        for row, expected_row in zip(got[name], expected[name], strict=True):
            assert row == expected_row, {k: (row.get(k), expected_row.get(k)) for k in row
                                         if row.get(k) != expected_row.get(k)}
    for key in ("x", "y", "t"):
        assert np.array_equal(got["memory"][key], expected["memory"][key])
    assert got["model"].keys() == expected["model"].keys()
    for name, value in expected["model"].items():  # weights, and the baseline's frozen parts (_extra_state)
        ours = got["model"][name]
        assert torch.equal(ours, value) if isinstance(value, torch.Tensor) else ours == value, name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("straight")
    code, output = run_until(["--output-basedir", str(base), "--log-dir", str(base / "logs")], None)
    assert code == 0, output[-3000:]
    return outputs(folder_of(base))


def test_killed_twice_and_resumed_equals_uninterrupted(tmp_path: Path, uninterrupted: dict) -> None:
    where = ["--output-basedir", str(tmp_path), "--log-dir", str(tmp_path / "logs")]
    kill_points = [  # inside training: the rivals' and the baseline's tests; inside finetuning: the SIGTERM test
        "task 1: memory update",  # during the memory update
        "task 1: top-1",  # between tasks
    ]
    code, output = run_until(where, kill_points[0])
    assert code == -signal.SIGKILL
    folder = folder_of(tmp_path)
    for point in kill_points[1:] + [None]:
        code, output = run_until(where + ["--resume", str(folder)], point)
        assert code == (0 if point is None else -signal.SIGKILL), output[-3000:]
    assert_same_run(outputs(folder), uninterrupted)


@pytest.mark.parametrize(("name", "code", "to_group", "workers", "phase"), [
    # pre-emption, to the main process, inside finetuning: a resumed finetuning does not draw the heads again
    # (--finetuning-resetclf draws them when finetuning starts)
    ("SIGTERM", 143, False, "0", "finetune"),
    # Ctrl-C reaches the whole process group, loader workers included; with two workers each image is
    # augmented from the same seed as without, so the run ends as the one without workers.
    ("SIGINT", 130, True, "2", "train"),
])
def test_a_signal_saves_inside_the_epoch_and_the_run_finishes_identically(
        tmp_path: Path, uninterrupted: dict, name: str, code: int, to_group: bool, workers: str, phase: str) -> None:
    where = ["--output-basedir", str(tmp_path), "--log-dir", str(tmp_path / "logs"), "--num-workers", workers]
    env = {"DYTOX_TEST_SIGTERM_AT": f"task 1, {phase} epoch 1, step 3", "DYTOX_TEST_SIGNAL": name,
           **({"DYTOX_TEST_SIGNAL_GROUP": "1"} if to_group else {})}
    exit_code, output = run_until(where, None, script=HELPERS / "sigterm_at_step.py", env=env)
    assert exit_code == code, output[-3000:]
    folder = folder_of(tmp_path)
    assert f"stopped by {name} in task 1, {phase} epoch 1, step 4" in output  # inside the epoch
    assert f"--resume {folder}" in output
    code, output = run_until(where + ["--resume", str(folder)], None)
    assert code == 0, output[-3000:]
    assert_same_run(outputs(folder), uninterrupted)


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, uninterrupted: dict) -> None:
    where = ["--output-basedir", str(tmp_path), "--log-dir", str(tmp_path / "logs")]
    code, _ = run_until(where, "task 1 finetune epoch 1/2")
    assert code == -signal.SIGKILL
    folder = folder_of(tmp_path)
    newest = sorted((folder / "checkpoints").glob("state_*_rank0.pth"))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a half-written file
    code, output = run_until(where + ["--resume", str(folder)], None)
    assert code == 0, output[-3000:]
    assert f"checkpoint {newest} cannot be read" in output and "using the previous checkpoint" in output
    assert_same_run(outputs(folder), uninterrupted)


def test_resuming_with_different_options_is_refused_naming_them(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--output-basedir", str(tmp_path), "--log-dir", str(tmp_path / "logs")]
    code, _ = run_until(where, "task 0 train epoch 2/3")
    assert code == -signal.SIGKILL
    folder = folder_of(tmp_path)
    refused = [*ARGS, *where, "--resume", str(folder), "--epochs", "5", "--memory-size", "100", "--eval-every", "7"]
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        assert main.main(refused) != 0  # in this process (ARGS' --deterministic is undone): refused before it runs
    finally:
        torch.use_deterministic_algorithms(deterministic)
    output = capsys.readouterr().err
    assert f"--resume {folder}: refused, these options differ from the saved run: epochs (saved 2, now 5); " \
           f"memory_size (saved 200, now 100); give the options" in output and "eval_every" not in output


def test_auto_resume_continues_the_newest_run_of_that_name(tmp_path: Path, uninterrupted: dict) -> None:
    where = ["--output-basedir", str(tmp_path), "--log-dir", str(tmp_path / "logs")]
    code, _ = run_until(where, "task 2 train epoch 1/2")
    assert code == -signal.SIGKILL
    code, output = run_until(where + ["--auto-resume"], None)
    assert code == 0, output[-3000:]
    assert "running from task 2 (" in output
    assert_same_run(outputs(folder_of(tmp_path)), uninterrupted)


BASELINE = ["--no-dytox", "--head-div", "0", "--freeze-task", "--freeze-ft", "sab",  # options/model/baseline.yaml
            "--train-per-class", "24"]


def test_the_baseline_killed_and_resumed_equals_uninterrupted_frozen_parts_included(tmp_path: Path) -> None:
    """The baseline keeps what task 1's finetuning froze for task 2 (published freezing): the frozen parts are
    saved with the weights, so a run killed in task 2 ends identically."""
    straight = ["--output-basedir", str(tmp_path / "straight"), "--log-dir", str(tmp_path / "logs"), *BASELINE]
    code, output = run_until(straight, None)
    assert code == 0, output[-3000:]
    expected = outputs(folder_of(tmp_path / "straight"))
    where = ["--output-basedir", str(tmp_path / "killed"), "--log-dir", str(tmp_path / "logs"), *BASELINE]
    code, _ = run_until(where, "task 2 train epoch 1/2")
    assert code == -signal.SIGKILL
    folder = folder_of(tmp_path / "killed")
    code, output = run_until(where + ["--resume", str(folder)], None)
    assert code == 0, output[-3000:]
    got = outputs(folder)
    assert_same_run(got, expected)
    assert [row["params_trainable"] < row["params_total"] for row in got["log"]] == [False, False, True]


RIVALS = {  # each method's own flags, on the baseline's network (options/model/baseline.yaml); WA, whose only
    # state beyond the weights is its teacher (as DER's and iCaRL's), is left out to keep the suite's time
    "der": ["--method", "der"],
    "icarl": ["--method", "icarl"],
}


@pytest.mark.parametrize("method", sorted(RIVALS))
def test_a_rival_killed_inside_a_task_and_resumed_equals_uninterrupted(tmp_path: Path, method: str) -> None:
    """Each rival of the paper killed (SIGKILL, nothing saved at that moment) inside task 1's training, with its
    teacher, its step constraint, its class means or its frozen extractors, resumes to the uninterrupted run's
    weights, memory and logs. DER: nothing says which extractors are frozen but the model's structure."""
    flags = [*BASELINE, *RIVALS[method], "--max-task", "2", "--base-epochs", "1", "--finetuning-epochs", "1",
             "--train-per-class", "16"]
    straight = ["--output-basedir", str(tmp_path / "straight"), "--log-dir", str(tmp_path / "logs"), *flags]
    code, output = run_until(straight, None)
    assert code == 0, output[-3000:]
    expected = outputs(folder_of(tmp_path / "straight"), last_task=1)
    where = ["--output-basedir", str(tmp_path / "killed"), "--log-dir", str(tmp_path / "logs"), *flags]
    env = {"DYTOX_TEST_SIGTERM_AT": "task 1, train epoch 1, step 1", "DYTOX_TEST_SIGNAL": "SIGKILL"}
    code, output = run_until(where, None, script=HELPERS / "sigterm_at_step.py", env=env)
    assert code == -signal.SIGKILL, output[-3000:]
    folder = folder_of(tmp_path / "killed")
    code, output = run_until(where + ["--resume", str(folder)], None)
    assert code == 0, output[-3000:]
    assert "running from task 1 (train)" in output  # the run state saved after task 1's first epoch
    got = outputs(folder, last_task=1)
    assert_same_run(got, expected)
    if method == "der":  # extractor 0, frozen during task 1, is task 0's
        first = torch.load(folder / "checkpoints/checkpoint_0.pth", weights_only=True)["model"]
        old = {name: value for name, value in first.items() if name.startswith("extractors.0.")}
        assert old and all(torch.equal(got["model"][name], value) for name, value in old.items())
