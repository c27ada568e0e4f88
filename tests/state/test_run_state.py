"""The typed run state: what a process saves at a phase boundary or inside an epoch, read back whole."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from support import TINY, task_result

from continual.method.rehearsal import Memory
from continual.model.dytox import DyTox
from continual.report.records import EpochProgress, EpochRecord
from continual.state.run_state import FitState, RunState
from continual.state.saved_runs import Position, read_state, save_state


def test_a_run_state_reads_back_as_it_was_saved(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DyTox(TINY, 3)
    model.expand(2)
    teacher = DyTox(TINY, 3)  # the model before the expansion
    teacher.freeze(["all"])
    memory = Memory()
    memory.add(np.arange(5 * 3 * 8 * 8, dtype=np.uint8).reshape(5, 8, 8, 3), np.array([0, 0, 1, 2, 2]),
               np.zeros(5), np.array([0, 1, 4]))
    fit = FitState({"state": {}, "param_groups": []}, None, None, None, {"torch": torch.get_rng_state()},
                   EpochProgress({"total": 2.5}, steps=3, images=24, seconds=1.5, data_seconds=0.25))
    state = RunState(Position(1, "train", 2, 7), model, teacher, memory, {"generator": {"seed": 3}},
                     [task_result(task=0, acc1=90.0, memory_per_class={0: 1})],
                     [EpochRecord(0, "train", 0, 1e-3, {"total": 1.0}, 10.0, 2.0, 0.5)],
                     {"train": 12.5}, fit)
    save_state(tmp_path, 4, 0, state.state_dict(sequence=4, world_size=1, config={"lr": 0.1}))
    saved = read_state(tmp_path / "checkpoints" / "state_000004_rank0.pth")
    assert saved["sequence"] == 4 and saved["config"] == {"lr": 0.1} and saved["world_size"] == 1
    back = RunState.from_state_dict(saved, torch.device("cpu"), "mixed")
    assert back.position == Position(1, "train", 2, 7) and back.timings == {"train": 12.5}
    assert back.model.nb_classes_per_task == [3, 2]
    assert all(torch.equal(a, b) for a, b in zip(back.model.state_dict().values(), model.state_dict().values(),
                                                 strict=True))
    assert back.teacher is not None and not any(p.requires_grad for p in back.teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(back.teacher.state_dict().values(),
                                                 teacher.state_dict().values(), strict=True))
    for ours, theirs in zip(back.memory.get(), memory.get(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert back.results == state.results and back.epochs == state.epochs
    assert back.fit is not None and back.fit.progress == fit.progress
    assert torch.equal(back.fit.epoch_rng["torch"], fit.epoch_rng["torch"])  # type: ignore[index]
