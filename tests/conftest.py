"""Shared test helpers: locating ../shared and keeping tests fast and deterministic."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


def shared_path(relative: str) -> Path:
    """Path of a file under ../shared; skip if absent, fail when running in CI.

    A user's clone without ../shared skips these tests with a reason; CI always
    has it, so there a missing file is a real failure.
    """
    return required_path(SHARED_DIR / relative, "expected ../shared beside the repo")


def required_path(path: Path, hint: str) -> Path:
    """``path`` if it exists; otherwise skip with ``hint``, or fail when running in CI (``CI`` set)."""
    if not path.exists():
        message = f"{path} not found ({hint})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Same seed and thread count for every test, restored afterwards."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
