"""Helpers shared by the test files of several modules (the tests of ``continual/X.py`` are in ``tests/X``).

Plain functions and constants; a test file imports what it uses (``from support import ...``). tests/ is
on ``sys.path`` because pytest imports tests/conftest.py from there (its default import mode). Fixtures
that several test files use are in tests/conftest.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from conftest import REPO_ROOT
from continual.config import parse_config, settings_from
from continual.data.scenarios import load_scenarios
from continual.method.learner import Learner, LearnerParts
from continual.method.metrics import average_incremental_accuracy, backward_transfer, forgetting
from continual.method.registry import build_learner
from continual.method.rehearsal import Memory
from continual.model.base import ContinualModel
from continual.model.build import new_model
from continual.model.config import ModelConfig
from continual.report.records import TaskResult
from continual.runtime.distributed import DistContext
from continual.runtime.seeding import capture_rng
from continual.state.run_state import FitState
from continual.state.saved_runs import Position
from continual.train.fit import Phase
from continual.train.loaders import Loaders

# ---------------------------------------------- methods (tests/method)

def method_on(argv: list[str]) -> tuple[Learner, ContinualModel]:
    """The ``--method`` of the options ``argv``, built by the registry as a run builds it (one CPU process,
    generator seeded 0, empty memory), and a new model of the options for the first task."""
    settings = settings_from(parse_config(argv))
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    scenarios = load_scenarios(settings.data)
    loaders = Loaders(settings.loader, settings.recipe, ctx)
    parts = LearnerParts(settings, scenarios, ctx, loaders.features, np.random.default_rng(0), Memory())
    return build_learner(settings.learner.method, parts), new_model(settings.model, scenarios.classes_per_task[0])


# ---------------------------------------------- configurations (tests/config)

def write_yaml(path: Path, text: str) -> str:
    """Write an option file and return its path as a command-line word."""
    path.write_text(text, encoding="utf-8")
    return str(path)


def with_values(**changes: object) -> argparse.Namespace:
    """A valid default configuration with some values replaced."""
    return argparse.Namespace(**{**vars(parse_config([])), **changes})


# ----------------------- small models (tests/model, tests/state, tests/train)

SMALL = ModelConfig(
    embed_dim=48, depth=3, num_heads=4, patch_size=4, input_size=16, local_up_to_layer=2, head_div=True,
    head_div_mode=("tr",),
)


TINY = ModelConfig(embed_dim=32, depth=2, num_heads=4, patch_size=4, input_size=8, local_up_to_layer=1,
                   head_div=True, head_div_mode=("tr",))


def schedule_cfg(**overrides) -> argparse.Namespace:
    argv = ["--sched", "cosine", "--warmup-epochs", "1", "--warmup-lr", "1e-6", "--min-lr", "1e-5"]
    cfg = parse_config(argv)
    return argparse.Namespace(**{**vars(cfg), **overrides})


# --------------------- task results (tests/method, tests/report, tests/train)

# An accuracy matrix where forgetting (drop from the best) and BWT (drop from the diagonal) differ.
MATRIX = [[80.0], [90.0, 70.0], [60.0, 50.0, 75.0]]


def task_result(**fields: object) -> TaskResult:
    """A TaskResult with ``fields``, zeros and empties elsewhere."""
    defaults: dict[str, object] = {
        "task": 0, "classes_seen": 0, "acc1": 0.0, "acc5": 0.0, "acc_per_task": [], "acc_old": None, "acc_new": 0.0,
        "acc_task_incremental": 0.0, "acc_task_prediction": 0.0, "avg_acc": 0.0, "forgetting": 0.0,
        "backward_transfer": 0.0, "params_total": 0, "params_trainable": 0, "params_without_head_div": 0,
        "memory_size": 0, "memory_per_class": {}, "seconds": {}, "eval_images": 0, "world_size": 1,
        "memory_mode": "global", "memory_total": 0, "memory_fingerprints": [],
    }
    return TaskResult(**{**defaults, **fields})  # type: ignore[arg-type]


def hand_rows() -> list[TaskResult]:
    """Task results as the task loop logs them (NaN old accuracy read back as null), for MATRIX."""
    rows = []
    for task, (per_task, top1) in enumerate(zip(MATRIX, [80.0, 82.0, 62.0], strict=True)):
        matrix = MATRIX[: task + 1]
        rows.append(task_result(**{
            "task": task, "classes_seen": 10 * (task + 1), "acc1": top1, "acc5": 95.0 - task,
            "acc_per_task": per_task, "acc_old": None if task == 0 else 55.5, "acc_new": per_task[-1],
            "acc_task_incremental": 90.0 + task, "acc_task_prediction": 85.25,
            "avg_acc": average_incremental_accuracy([80.0, 82.0, 62.0][: task + 1]),
            "forgetting": forgetting(matrix), "backward_transfer": backward_transfer(matrix),
            "params_total": 10_733_584 + task, "params_without_head_div": 10_700_000,
            "seconds": {"train": 10.0, "eval": 1.0 + task},
        }))
    return rows


# ---------------------------------- image files in class folders (tests/data, tests/state, tests/program)

# One image per entry: (file name, PIL mode, size, fill). The modes and formats a folder of user images may hold,
# each of another size; the fill is the grey level (0..255) every mode reads back as, after the RGB conversion.
FOLDER_IMAGES = (
    ("rgb.jpg", "RGB", (40, 30), 200),
    ("grey.PNG", "L", (8, 8), 30),
    ("alpha.png", "RGBA", (12, 20), 90),
    ("palette.gif", "P", (16, 9), 160),
    ("cmyk.jpeg", "CMYK", (10, 10), 60),
    ("sixteen.png", "I;16", (24, 16), 120),
    ("bitmap.bmp", "RGB", (9, 33), 70),
)


def write_image(path: Path, mode: str, size: tuple[int, int], grey: int) -> Path:
    """An image file of ``mode`` and ``size`` whose pixels read back as RGB ``(grey, grey, grey)`` (JPEG: about)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        image = Image.fromarray(np.full(size[::-1], grey * 257, dtype=np.uint16))  # 16-bit: 257 levels per 8-bit one
    elif mode == "P":  # a one-colour palette whose colour is transparent (GIF keeps the transparency index)
        image = Image.new("P", size, 0)
        image.putpalette([grey] * 3 + [0] * 765)
        image.info["transparency"] = 0
    elif mode == "CMYK":
        image = Image.new("CMYK", size, (0, 0, 0, 255 - grey))  # PIL: R = 255 - C - K
    elif mode == "RGBA":
        image = Image.new("RGBA", size, (grey, grey, grey, 128))
    else:
        image = Image.new(mode, size, grey if mode == "L" else (grey,) * 3)
    image.save(path)
    return path


def write_class_folder(folder: Path, per_class: int, first: int = 0) -> list[Path]:
    """``per_class`` images of ``FOLDER_IMAGES`` (cycling through them from ``first``) in ``folder``."""
    written = []
    for i in range(per_class):
        name, mode, size, grey = FOLDER_IMAGES[(first + i) % len(FOLDER_IMAGES)]
        written.append(write_image(folder / f"{i}_{name}", mode, size, grey))
    return written


def write_image_folder(root: Path, classes: tuple[str, ...], train_per_class: int, test_per_class: int,
                       test_split: str = "val") -> Path:
    """``root/train/CLASS/*`` and ``root/<test_split>/CLASS/*``, every mode of ``FOLDER_IMAGES`` represented."""
    for index, name in enumerate(classes):
        write_class_folder(root / "train" / name, train_per_class, first=index)
        write_class_folder(root / test_split / name, test_per_class, first=index + 3)
    return root


def corrupt(path: Path) -> Path:
    """Keep the file's name, replace its content by bytes no image decoder accepts."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image at all" * 3)
    return path


# ------------------------------------------------- whole programs (tests/program)

# The offline digits demo, 2 tasks, in a few seconds per process
DEMO = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"), str(REPO_ROOT / "options/model/demo_tiny.yaml"),
        "--max-task", "2", "--base-epochs", "2", "--epochs", "1", "--finetuning-epochs", "1"]
TIMEOUT = 300
# With train_sh: two processes with the published defaults (repeated augmentation, the published memory),
# resumable exactly (tests/conftest.py two_processes_published)
KILLABLE = ["--repeated-aug", "--deterministic", "--save-every-epoch", "1", "--epochs", "2", "--name", "killed"]


def environment() -> dict[str, str]:
    """The environment of train.sh in the tests: one thread per process, this Python, a port of this session."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
            "MASTER_PORT": str(29500 + os.getpid() % 1000)}


def train_sh(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``bash train.sh cpu 2`` on DEMO with ``args``, writing under ``tmp_path`` (out/, logs/)."""
    argv = ["bash", str(REPO_ROOT / "train.sh"), "cpu", "2", *DEMO, *args, "--output-basedir", str(tmp_path / "out"),
            "--log-dir", str(tmp_path / "logs")]
    return subprocess.run(argv, capture_output=True, text=True, env=environment(), timeout=TIMEOUT)


def run_in_terminal(argv: list[str], env: dict[str, str], timeout: float, columns: int = 120) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal of ``columns`` columns, as a person at a
    terminal runs it; returns the exit status and everything it wrote (stdout and stderr interleaved, as shown)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([leader], [], [], 1.0)[0]:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: every process holding the terminal has exited
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif process.poll() is not None:
                break
        else:
            process.kill()
            raise TimeoutError(f"{argv[:3]}... still running after {timeout} s")
        return process.wait(timeout=30), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)


# --------------------- a phase's run control (tests/train: fit.PhaseTrainer stopped and resumed)

class Stopped(Exception):
    pass


@dataclasses.dataclass
class PhaseControl:
    """The task loop's side of a phase (``fit.RunControl``): a stop asked at the ``stop_at``-th question (never
    when None), and what is saved, through bytes as a run state is written (tensors and plain data only)."""

    model: nn.Module
    rng: np.random.Generator
    stop_at: int | None
    asked: int = 0
    saved: dict | None = None

    def save(self, position: Position, teacher: object, fit_state: FitState | None = None) -> None:
        assert fit_state is not None
        buffer = io.BytesIO()  # through bytes, as a run state is written (tensors and plain data only)
        torch.save({"model": self.model.state_dict(), "fit": fit_state.state_dict(), "rng": capture_rng(self.rng)},
                   buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        self.saved = {"position": position, "model": state["model"], "fit": FitState.from_state_dict(state["fit"]),
                      "rng": state["rng"]}

    def stop_requested(self) -> bool:
        self.asked += 1
        return self.asked == self.stop_at

    stop_requested_after_step = stop_requested

    def preempted(self, where: str) -> None:
        raise Stopped(where)

    def epoch_done(self, phase: Phase, epoch: int, stats: object, lr: float) -> None:
        pass
