"""The files written after each task (summary, plots, tensorboard), following the plots and tensorboard options."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import hand_rows

from continual.config import parse_config
from continual.config.settings import RunSettings, settings_of


@pytest.mark.parametrize("flags", [[], ["--no-plots", "--no-tensorboard"]])
def test_run_results_follow_the_plots_and_tensorboard_options(tmp_path: Path, flags: list[str]) -> None:
    from continual.report.results import RunResults

    cfg = parse_config(flags + ["--name", "hand"])
    assert cfg.plots is cfg.tensorboard is (not flags)  # on by default
    results = RunResults(tmp_path, settings_of(RunSettings, cfg), 3, started=0.0)
    summary = results.task_done(hand_rows(), [])
    results.close()
    assert json.loads((tmp_path / "summary.json").read_text())["last_acc"] == summary["last_acc"] == 62.0
    assert (tmp_path / "accuracy_curve.png").is_file() == (tmp_path / "accuracy_matrix.png").is_file() == (not flags)
    assert not (tmp_path / "training_curves.png").exists()  # no epoch rows, no training curves
    assert (tmp_path / "tensorboard").is_dir() == (not flags)
