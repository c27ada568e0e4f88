"""Every benchmark script in scripts/ starts (its --help): a script nothing imports cannot break unseen."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

SCRIPTS = sorted(p for p in (REPO_ROOT / "scripts").glob("*.py") if "__main__" in p.read_text())


def test_the_scripts_are_found() -> None:
    assert {p.name for p in SCRIPTS} >= {"bench_fashion.py", "bench_fidelity.py", "bench_model.py",
                                         "compare_runs.py", "code_shape.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_script_starts(script: Path) -> None:
    result = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
