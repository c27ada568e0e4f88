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
