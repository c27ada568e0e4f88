"""Atomic file writes (continual/runtime/files.py).

Not test_files.py: pytest imports test files by their basename, and tests/config/test_files.py has it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from continual.runtime.files import atomic_write


def test_atomic_write_keeps_the_previous_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("previous")

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_text() == "previous" and list(tmp_path.iterdir()) == [target]


def test_atomic_write_gives_the_file_the_usual_permissions(tmp_path: Path) -> None:
    """mkstemp creates owner-only files: results on a shared cluster must stay readable like any other file."""
    (tmp_path / "plain.txt").write_text("x")
    atomic_write(tmp_path / "atomic.txt", lambda tmp: tmp.write_text("x"))
    plain, atomic = ((tmp_path / name).stat().st_mode & 0o777 for name in ("plain.txt", "atomic.txt"))
    assert atomic == plain  # 0o644 under the usual umask 022, where mkstemp alone gives 0o600
