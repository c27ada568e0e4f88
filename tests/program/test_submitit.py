"""run_with_submitit.py with submitit's local executor (real processes, the offline demo): a job that completes
trains the run of main.py run directly; a job stopped by the time-limit signal inside a task's training is
requeued by submitit and ends with the weights, memory and log rows of the uninterrupted run. Also: main.py's
option errors before anything is written, the script's own refusals, and the sbatch file of a SLURM job."""
from __future__ import annotations

import contextlib
import io
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest
import torch
from program.test_methods import DEMO_FILES, SHORT
from program.test_resume import assert_same_run, outputs
from submitit.core.utils import DelayedSubmission
from test_docs import shell_blocks

import main
from conftest import HELPERS, REPO_ROOT
from continual.train.submitit_job import SubmititJob
from run_with_submitit import cli

HELPERS_ON_PATH = str(HELPERS)
sys.path.insert(0, HELPERS_ON_PATH)
from submitit_interrupted import InterruptedOnce  # noqa: E402

FLAGS = ["--options", *DEMO_FILES, *SHORT, "--max-task", "2", "--deterministic", "--name", "job"]
LOCAL = ["--cluster", "local", "--ngpus", "0", "--timeout", "10", "--wait"]
STOP_AT = "task 1, train epoch 0, step 2"  # task 1 trains 128 images (64 new, 64 from memory): steps 0 to 3
# One torch thread in every run, the direct one and the jobs' (the same reductions, so the same bits): the tiny
# model gains nothing from a second thread, which only spins on a busy machine.
THREADS = "1"


def run_folder(base: Path) -> Path:
    folders = list(base.glob("digits/demo/*_job"))
    assert len(folders) == 1, folders
    return folders[0]


def submit(job_dir: Path, job_type: type = InterruptedOnce, environment: dict[str, str] | None = None,
           extra: list[str] = ()) -> int:  # type: ignore[assignment]
    """run_with_submitit.py --cluster local --wait, the helpers importable in the job's tasks."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"PYTHONPATH": HELPERS_ON_PATH, "OMP_NUM_THREADS": THREADS,
                            **(environment or {})}.items():
            patch.setenv(name, value)
        return cli([*LOCAL, "--job-dir", str(job_dir), *FLAGS, "--log-dir", str(job_dir / "logs"), *extra], job_type)


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """main.py run directly (in this process), with the same options."""
    base = tmp_path_factory.mktemp("direct")
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.set_num_threads(int(THREADS))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main.main([*FLAGS, "--output-basedir", str(base), "--log-dir", str(base / "logs")]) == 0
    finally:  # --deterministic and the thread count must not reach the other tests
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    return outputs(run_folder(base), last_task=1)


def test_a_job_that_completes_trains_the_run_of_main_py(tmp_path: Path, direct: dict,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert submit(tmp_path / "job", job_type=SubmititJob) == 0
    folder = run_folder(tmp_path / "job")
    assert f"run finished: {folder}" in capsys.readouterr().out
    got = outputs(folder, last_task=1)
    assert [row["task"] for row in got["log"]] == [0, 1]
    assert_same_run(got, direct)
    logs = list((tmp_path / "job" / "submitit").glob("*_0_log.out"))  # SLURM's naming: <job id>_<task>_log.out
    assert len(logs) == 1 and logs[0].read_text().count("Starting with JobEnvironment") == 1


def test_a_job_stopped_by_the_time_limit_signal_is_requeued_and_ends_as_the_uninterrupted_run(
        tmp_path: Path, direct: dict) -> None:
    job_dir = tmp_path / "job"
    assert submit(job_dir, environment={"DYTOX_TEST_SIGTERM_AT": STOP_AT, "DYTOX_TEST_SIGNAL": "SIGUSR2"}) == 0
    folder = run_folder(job_dir)  # one run folder: the requeued attempt continued it
    log = next((job_dir / "submitit").glob("*_0_log.out")).read_text()  # both attempts, appended
    assert log.count("Starting with JobEnvironment") == 2
    first, second = log.split(f"requeued: attempt 1 continues {folder}")
    assert "stopped by SIGUSR2 in task 1, train epoch 0, step 3" in first  # inside the epoch, state saved
    assert "running from task 1 (train)" in second and "task 1: top-1" in second and "task 0: top-1" not in second
    pickled = next((job_dir / "submitit").glob("*_submitted.pkl"))  # what submitit would requeue again
    requeued = DelayedSubmission.load(pickled).function
    assert (requeued.attempt, requeued.resume_from) == (1, str(folder))
    assert requeued.command()[-5:] == ["--resume", str(folder), "--start-task", "0", "--no-auto-resume"]
    assert_same_run(outputs(folder, last_task=1), direct)


def test_a_job_that_fails_ends_wait_with_status_1_and_main_py_s_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run refused once started (a run folder without any run state to continue): main.py's error line."""
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert submit(tmp_path / "job", job_type=SubmititJob, extra=["--resume", str(empty)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: job ") and "failed: main.py ended with status 2: error: --resume " \
        f"{empty}: no saved run state" in error and "_0_log.err" in error


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")  # main.main's torchrun wrapper, under capsys
def test_a_bad_main_py_option_is_main_py_s_error_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for wrong in (["--epochs", "-1"], ["--bogus"]):
        with contextlib.suppress(SystemExit):  # argparse exits on an unknown flag, as main.py does
            assert main.main([*FLAGS, *wrong]) == 2
        expected = capsys.readouterr().err
        with contextlib.suppress(SystemExit):
            assert cli([*LOCAL, "--job-dir", str(tmp_path / "job"), *FLAGS, *wrong]) == 2
        assert capsys.readouterr().err == expected and expected.strip().splitlines()[-1].count("error") == 1
        assert not (tmp_path / "job").exists()
    with pytest.raises(SystemExit):
        cli([*LOCAL, "--nodes", "2", "--job-dir", str(tmp_path / "job"), *FLAGS])
    assert "run_with_submitit.py: error: --cluster local runs on this machine, one node: --nodes 2" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli([*LOCAL, "--job-dir", str(tmp_path / "job"), *FLAGS, "--resume", str(tmp_path / "gone")])
    assert f"run_with_submitit.py: error: --resume {tmp_path / 'gone'}: no such run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["--help"])
    shown = capsys.readouterr().out
    assert "--ngpus G" in shown and "--wait" in shown and "Every other option is main.py's" in shown
    assert not (tmp_path / "job").exists()


def documented_command() -> list[str]:
    """The submitit command of docs/running.md's SLURM section, as its words after the script."""
    text = (REPO_ROOT / "docs" / "running.md").read_text(encoding="utf-8")
    lines = [line for block in shell_blocks(text) for line in block.replace("\\\n", " ").splitlines()
             if line.startswith("python run_with_submitit.py") and "--partition" in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])[2:]


def test_the_documented_slurm_job_asks_sbatch_for_one_task_per_gpu_and_the_time_limit_signal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """sbatch replaced by a stub that answers as SLURM does (and srun, which submitit looks for): the sbatch file
    that submitit writes in the job folder for the command of docs/running.md."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("sbatch", "echo 'Submitted batch job 4242'"), ("srun", "exit 1")):
        (stubs / name).write_text(f"#!/bin/sh\n{text}\n")
        (stubs / name).chmod((stubs / name).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", "")  # the script sets it for the job's tasks: undone after the test
    job_dir = tmp_path / "job"
    given = documented_command()
    assert cli([*given, "--slurm-option", "account=lab", "--job-dir", str(job_dir)]) == 0
    assert "submitted job 4242 (slurm, 1 node(s) x 2 GPU process(es))" in capsys.readouterr().out
    script = (job_dir / "submitit" / "4242_submission.sh").read_text()
    for line in ("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2", "--time=1440", "--partition=gpu",
                 "--signal=USR2@120", "--open-mode=append", "--account=lab", "--job-name=dytox",
                 f"--output={job_dir / 'submitit'}/%j_0_log.out"):
        assert f"#SBATCH {line}\n" in script, line
    job = DelayedSubmission.load(job_dir / "submitit" / "4242_submitted.pkl").function
    main_options = given[given.index("--options"):]
    assert job.command() == [*main_options, "--output-basedir", str(job_dir.resolve()), "--auto-resume"]
