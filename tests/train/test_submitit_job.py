"""The submitit job of a run: what a requeued attempt gives main.py, and which run folder it continues."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from continual.config import parse_config
from continual.train.submitit_job import RunPlace, SubmititJob

OPTIONS = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"),
           str(REPO_ROOT / "options/model/demo_tiny.yaml"), "--name", "job"]


def not_run(argv: list[str]) -> int:
    raise AssertionError("the job is not run here")


def job_in(job_dir: Path, argv: list[str], evaluate: bool = False) -> SubmititJob:
    return SubmititJob(tuple(argv), str(job_dir), RunPlace(str(job_dir), "digits", "demo", "job"), not_run,
                       evaluate=evaluate)


def test_a_requeued_attempt_continues_the_run_folder_from_its_run_state(tmp_path: Path) -> None:
    first = job_in(tmp_path, [*OPTIONS, "--output-basedir", str(tmp_path), "--auto-resume"])
    assert first.command() == list(first.argv)
    later = dataclasses.replace(first, attempt=2, resume_from="/runs/x")
    cfg = parse_config(later.command())
    assert (cfg.resume, cfg.start_task, cfg.auto_resume) == ("/runs/x", 0, False)
    restarted = job_in(tmp_path, [*OPTIONS, "--resume", "/runs/x", "--start-task", "3"])  # the first attempt's way
    assert parse_config(dataclasses.replace(restarted, resume_from="/runs/x").command()).start_task == 0
    evaluation = job_in(tmp_path, [*OPTIONS, "--eval", "--resume", "/runs/x", "--start-task", "3"], evaluate=True)
    assert parse_config(dataclasses.replace(evaluation, resume_from="/runs/x").command()).start_task == 3


def test_checkpoint_requeues_the_same_job_pointing_at_the_run_folder_once_it_holds_a_state(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = job_in(tmp_path, OPTIONS)
    nothing_saved = job.checkpoint().function  # stopped before the first save: the next attempt starts again
    assert (nothing_saved.attempt, nothing_saved.resume_from) == (1, "")
    older, newer = tmp_path / "digits/demo/2026-12-05_10-00-00_job", tmp_path / "digits/demo/2026-12-05_11-00-00_job"
    for folder in (older, newer):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints/state_000004_rank0.pth").write_bytes(b"")
    requeued = nothing_saved.checkpoint()
    assert (requeued.function.attempt, requeued.function.resume_from) == (2, str(newer))
    assert requeued.args == () and requeued.kwargs == {}
    assert f"requeued: attempt 2 continues {newer}" in capsys.readouterr().out
    given = dataclasses.replace(job, place=dataclasses.replace(job.place, resume=str(older)))  # --resume given
    assert given.checkpoint().function.resume_from == str(older)
