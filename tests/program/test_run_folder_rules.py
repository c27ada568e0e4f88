"""Every way back into a run folder (``--resume``, ``--resume --start-task K``, ``--eval --resume``) follows one
rule, and a damaged folder says which file and what to do: a one-line error, exit 2, nothing written."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import main
from conftest import REPO_ROOT

QUICK = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"), str(REPO_ROOT / "options/model/demo_tiny.yaml"),
         "--debug", "--max-task", "2", "--no-progress", "--no-plots", "--no-tensorboard", "--name", "rules"]
REVERSED = ["--class-order", *[str(c) for c in range(9, -1, -1)]]
OTHER_EXPERIMENT = [*REVERSED, "--memory-size", "50", "--embed-dim", "128", "--lr", "0.5"]
DIFFERENCES = ["class_order (saved None, now [9, 8, 7, 6, 5, 4, 3, 2, 1, 0])", "embed_dim (saved 64, now 128)",
               "lr (saved 0.02, now 0.5)", "memory_size (saved 200, now 50)"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-task run: task checkpoints, memories and run states."""
    base = tmp_path_factory.mktemp("rules")
    assert main.main([*QUICK, "--output-basedir", str(base), "--log-dir", str(base / "logs")]) == 0
    return next(base.glob("digits/demo/*_rules"))


@pytest.fixture
def run_dir(saved_run: Path, tmp_path: Path) -> Path:
    """A copy of the saved run, free to damage."""
    return Path(shutil.copytree(saved_run, tmp_path / saved_run.name))


def files_of(*folders: Path) -> dict[Path, tuple[int, int]]:
    return {path: (path.stat().st_mtime_ns, path.stat().st_size) for folder in folders for path in folder.rglob("*")}


def refused(argv: list[str], folder: Path, capsys: pytest.CaptureFixture, printed: list[str] | None = None) -> str:
    """Run main.py, which must refuse with exit 2 and one line on stderr, writing nothing into ``folder``
    (nor the log copy beside it); returns that line, and adds what was printed on stdout to ``printed``."""
    logs = folder.parent / "logs"
    before = files_of(folder, logs)
    capsys.readouterr()
    assert main.main([*QUICK, *argv, "--log-dir", str(logs)]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if not line.startswith(("note:", "warning:"))]
    assert len(errors) == 1 and errors[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert files_of(folder, logs) == before
    if printed is not None:
        printed.extend(captured.out.splitlines())
    return errors[0]


# ----------------------------------------------------------------- one rule
@pytest.mark.parametrize(("way", "action"), [
    ([], "--resume {dir}: refused"),
    (["--start-task", "1"], "--resume {dir} --start-task 1: refused"),
    (["--eval"], "--eval --resume {dir}: refused"),
    (["--eval", "--start-task", "1"], "--eval --resume {dir}: refused"),
])
def test_every_way_back_into_a_run_folder_refuses_other_options_naming_each(
        saved_run: Path, capsys: pytest.CaptureFixture, way: list[str], action: str) -> None:
    line = refused(["--resume", str(saved_run), *way, *OTHER_EXPERIMENT], saved_run, capsys)
    assert action.format(dir=saved_run) in line
    assert "; ".join(DIFFERENCES) in line and f"{saved_run / 'config.yaml'}" in line


@pytest.mark.parametrize("way", [[], ["--start-task", "1"], ["--eval"]])
def test_options_that_change_no_computation_may_differ(saved_run: Path, tmp_path: Path, way: list[str]) -> None:
    argv = [*QUICK, "--resume", str(saved_run), *way, "--log-dir", str(tmp_path / "logs"), "--eval-every", "3",
            "--num-workers", "1", "--save-every-epoch", "2", "--output-basedir", str(tmp_path)]
    resumed = shutil.copytree(saved_run, tmp_path / "copy")
    argv[argv.index(str(saved_run))] = str(resumed)
    assert main.main(argv) == 0


def test_a_restart_at_a_task_with_another_number_of_processes_names_both(run_dir: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    path = run_dir / "checkpoints/checkpoint_0.pth"
    checkpoint = torch.load(path, weights_only=True)
    torch.save({**checkpoint, "world_size": 2}, path)  # as a 2-process run saves it
    line = refused(["--resume", str(run_dir), "--start-task", "1"], run_dir, capsys)
    assert line == (f"error: --resume {run_dir} --start-task 1: the run was saved by 2 process(es) and is resumed "
                    f"with 1: resume it with 2 (e.g. bash train.sh cpu 2, or 2 GPUs)")


def test_the_task_checkpoint_records_the_number_of_processes(saved_run: Path) -> None:
    assert torch.load(saved_run / "checkpoints/checkpoint_1.pth", weights_only=True)["world_size"] == 1


# --------------------------------------------------------------- corruption
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte_inside(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the images: the archive's directory at the end is intact
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "reason"), [
    (truncate, "(not a complete .npz archive)"),  # a copy cut short: the archive's directory is lost
    (lambda path: path.write_bytes(b"\x80\x04 a pickle"), "(not a complete .npz archive)"),
    (flip_a_byte_inside, "(BadZipFile: Bad CRC-32 for file 'x.npy')"),
])
def test_a_damaged_memory_file_names_the_file_and_what_to_do(run_dir: Path, capsys: pytest.CaptureFixture,
                                                             damage, reason: str) -> None:
    memory = run_dir / "memory/memory_1.npz"
    damage(memory)
    line = refused(["--resume", str(run_dir), "--start-task", "2"], run_dir, capsys)
    assert f"rehearsal memory {memory} cannot be read {reason}" in line
    assert "continue from an earlier task (--start-task K with a readable memory_<K-1>.npz)" in line


def test_an_empty_memory_file_is_refused_not_used(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    memory = run_dir / "memory/memory_0.npz"
    empty = np.zeros(0, dtype=np.int64)
    np.savez(memory, x=np.zeros((0, 16, 16), dtype=np.uint8), y=empty, t=empty)
    line = refused(["--resume", str(run_dir), "--start-task", "1"], run_dir, capsys)
    assert f"the rehearsal memory {memory} holds no exemplars, but --memory-size is set" in line


def test_a_memory_file_with_arrays_of_different_lengths_is_refused(run_dir: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    memory = run_dir / "memory/memory_0.npz"
    with np.load(memory) as data:
        x, y, t = data["x"], data["y"], data["t"]
    np.savez(memory, x=x, y=y[:-1], t=t)
    line = refused(["--resume", str(run_dir), "--start-task", "1"], run_dir, capsys)
    assert f"rehearsal memory {memory} is inconsistent: {len(x)} images, {len(y) - 1} labels" in line


def test_eval_reads_the_task_s_memory_and_names_it_when_damaged_or_missing(run_dir: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    memory = run_dir / "memory/memory_1.npz"
    truncate(memory)
    line = refused(["--resume", str(run_dir), "--eval"], run_dir, capsys)
    assert line == (f"error: --eval --resume {run_dir}: rehearsal memory {memory} cannot be read (not a complete "
                    f".npz archive)")
    memory.unlink()
    line = refused(["--resume", str(run_dir), "--eval"], run_dir, capsys)
    assert line == (f"error: --eval --resume {run_dir}: no rehearsal memory of task 1 in {run_dir / 'memory'} "
                    f"(memory_1.npz or memory_1_rank<R>.npz), but --memory-size is set")


def test_a_damaged_task_checkpoint_names_the_file_and_the_other_tasks(run_dir: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    checkpoint = run_dir / "checkpoints/checkpoint_1.pth"
    truncate(checkpoint)
    for way, action in ((["--start-task", "2"], f"--resume {run_dir} --start-task 2"),
                        (["--eval"], f"--eval --resume {run_dir}")):
        line = refused(["--resume", str(run_dir), *way], run_dir, capsys)
        assert line.startswith(f"error: {action}: checkpoint {checkpoint} cannot be read (")
        assert line.endswith("the folder holds the checkpoints of tasks [0] (--start-task K continues after "
                             "task K - 1)")


def test_a_missing_task_checkpoint_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    line = refused(["--resume", str(folder), "--start-task", "1"], folder, capsys)
    assert line == (f"error: --resume {folder} --start-task 1: no checkpoint at {folder}/checkpoints/checkpoint_0.pth;"
                    f" the folder holds no other task checkpoint")


def test_a_folder_whose_every_run_state_is_unreadable_says_where_to_restart(run_dir: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    states = sorted((run_dir / "checkpoints").glob("state_*_rank0.pth"))
    assert len(states) == 2  # the last two sequences are kept
    for state in states:
        truncate(state)
    printed: list[str] = []
    line = refused(["--resume", str(run_dir)], run_dir, capsys, printed)
    assert line == (f"error: --resume {run_dir}: every run state is unreadable (2 checkpoints/state_*.pth files, "
                    f"see the warnings above); restart from the end of task 1 with --resume {run_dir} --start-task 2")
    warnings = [line for line in printed if line.startswith("warning: ")]
    assert [w.split(": ")[1] for w in warnings] == [f"checkpoint {state} cannot be read" for state in states[::-1]]
    assert warnings[0].endswith("using the previous checkpoint") and warnings[1].endswith("no earlier one is left")


def test_a_folder_without_run_states_says_where_to_restart(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    for state in (run_dir / "checkpoints").glob("state_*.pth"):
        state.unlink()
    line = refused(["--resume", str(run_dir)], run_dir, capsys)
    assert line == (f"error: --resume {run_dir}: no saved run state (checkpoints/state_*_rank*.pth); restart from "
                    f"the end of task 1 with --resume {run_dir} --start-task 2")
