"""Task checkpoints and memory files: round trips, and a truncated checkpoint named in its error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support import TINY

from continual.method.rehearsal import Memory
from continual.model.dytox import DyTox
from continual.state import checkpoints as checkpoint


def test_task_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    model = DyTox(TINY, 3)
    model.expand(2)
    path = checkpoint.save_task_checkpoint(tmp_path, 1, model, {"lr": 0.1, "freeze_ft": ["sab"]})
    assert set(torch.load(path, weights_only=True)) >= {"model", "model_config", "nb_classes_per_task", "config"}
    loaded, state = checkpoint.load_task_checkpoint(path)
    assert loaded.nb_classes_per_task == [3, 2] and state["config"]["freeze_ft"] == ["sab"]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert list(tmp_path.rglob("*.tmp")) == []


def test_truncated_checkpoint_is_reported_with_its_path(tmp_path: Path) -> None:
    path = checkpoint.save_task_checkpoint(tmp_path, 0, DyTox(TINY, 3), {})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="checkpoint_0.pth"):
        checkpoint.load_task_checkpoint(path)


def test_memory_file_round_trip(tmp_path: Path) -> None:
    memory = Memory()
    x = np.arange(6 * 4, dtype=np.uint8).reshape(6, 2, 2)
    memory.add(x, np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 0, 0, 1, 1]), np.array([1, 2, 5]))
    path = checkpoint.save_memory(tmp_path, 3, memory)
    loaded = checkpoint.load_memory(path)
    for a, b in zip(memory.get(), loaded.get(), strict=True):
        assert np.array_equal(a, b)
