"""Progress bars as a person sees them: main.py on a pseudo-terminal shows one bar per epoch; --no-progress,
or output to a file or a pipe, shows none (the per-epoch lines remain). The two-process case is in
test_multi_process.py (only rank 0 draws)."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from support import run_in_terminal

from conftest import REPO_ROOT

DEMO = [sys.executable, str(REPO_ROOT / "main.py"), "--options", str(REPO_ROOT / "options/data/digits_demo.yaml"),
        str(REPO_ROOT / "options/model/demo_tiny.yaml"), "--max-task", "1", "--no-plots", "--no-tensorboard"]
# tqdm's bar: the description, the percentage and the bar's left edge, e.g. "task 0 train 2/3:  50%|#####"
BAR = re.compile(r"task 0 train (\d)/2: +\d+%\|")


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}


def test_a_terminal_shows_a_bar_per_epoch_with_the_running_loss(tmp_path: Path) -> None:
    argv = [*DEMO, "--base-epochs", "2", "--output-basedir", str(tmp_path), "--log-dir", str(tmp_path / "logs")]
    status, shown = run_in_terminal(argv, environment(), timeout=300)
    assert status == 0, shown[-2000:]
    assert {match.group(1) for match in BAR.finditer(shown)} == {"1", "2"}, shown[-2000:]
    assert re.search(r"loss=\d+\.\d{4}", shown) and "img/s=" in shown and "lr=" in shown
    assert "task 0 train epoch 2/2:" in shown  # the per-epoch line stays when the bar is cleared


def test_no_bar_with_no_progress_or_when_the_output_goes_to_a_file(tmp_path: Path) -> None:
    quick = [*DEMO, "--debug", "--max-task", "1", "--output-basedir", str(tmp_path),
             "--log-dir", str(tmp_path / "logs")]
    status, shown = run_in_terminal([*quick, "--no-progress"], environment(), timeout=300)
    assert status == 0, shown[-2000:]
    assert "task 0 train epoch 1/1:" in shown and "%|" not in shown
    out = tmp_path / "out.txt"  # stdout to a file, stderr still on the terminal: no bar either
    redirected = ["bash", "-c", 'out=$1; shift; exec "$@" > "$out"', "bash", str(out), *quick]
    status, shown = run_in_terminal(redirected, environment(), timeout=300)
    assert status == 0, shown[-2000:]
    assert "task 0 train epoch 1/1:" in out.read_text() and "%|" not in out.read_text() + shown
