"""Shared test helpers: locating ../shared, keeping tests fast and deterministic, the dataset folders
that several test files of tests/data use, and the two-process run that several files of tests/program compare with.

No other conftest.py: test files import these names with ``from conftest import ...``, and pytest
imports every conftest.py outside a package under the same module name.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
HELPERS = REPO_ROOT / "tests" / "helpers"  # scripts that tests run as subprocesses


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


TEST_DEVICE_VARIABLE = "DYTOX_TEST_DEVICE"  # scripts/gpu_check.sh sets it to cuda


@pytest.fixture
def device() -> torch.device:
    """The device of the tests that can run on an accelerator: the CPU unless ``DYTOX_TEST_DEVICE`` names
    another (``cuda``); asking for CUDA where there is none fails, so a GPU check cannot pass on the CPU."""
    device = torch.device(os.environ.get(TEST_DEVICE_VARIABLE, "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"{TEST_DEVICE_VARIABLE}={device} but torch.cuda.is_available() is False")
    return device


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Same seed and thread count for every test, restored afterwards."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def two_processes_published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bash train.sh cpu 2`` on the demo with support.KILLABLE (the published defaults, --deterministic): run
    once for the tests that compare with it (a killed and resumed run, two nodes on one machine)."""
    from support import KILLABLE, train_sh  # here: collecting the other tests needs no package import

    base = tmp_path_factory.mktemp("published")
    result = train_sh(KILLABLE, base)
    assert result.returncode == 0, result.stderr[-3000:]
    (base / "stderr.txt").write_text(result.stderr)
    return base


# ---------------------------------------------------------------------------
# Dataset folders: synthetic CIFAR-100, real Fashion-MNIST (tests/data)
# ---------------------------------------------------------------------------

CIFAR_TRAIN_PER_CLASS, CIFAR_TEST_PER_CLASS = 3, 2


def _write_cifar_split(path: Path, per_class: int, rng: np.random.Generator) -> None:
    labels = np.repeat(np.arange(100), per_class)
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    # First image: constant planes R=10, G=20, B=30 to check the channel layout.
    data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 10, 20, 30
    with path.open("wb") as handle:
        pickle.dump({"data": data, "fine_labels": labels.tolist()}, handle)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write_cifar_split(folder / "train", CIFAR_TRAIN_PER_CLASS, rng)
    _write_cifar_split(folder / "test", CIFAR_TEST_PER_CLASS, rng)
    with (folder / "meta").open("wb") as handle:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, handle)
    return tmp_path


@pytest.fixture(scope="module")
def fashion_root() -> Path:
    return shared_path("data/fashion-mnist")


@pytest.fixture(scope="module")
def fashion_train(fashion_root: Path):
    from continual.data.datasets import build_dataset  # here: collecting the other tests needs no package import

    return build_dataset("fashion_mnist", fashion_root, True, train_per_class=1000, input_size=32)
