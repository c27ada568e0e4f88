"""main.py with a failure injected on rank 1 at the memory phase, for tests/program/test_multi_process.py."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import main  # noqa: E402
from continual.train.loop import TaskLoop  # noqa: E402

original_memory_phase = TaskLoop.memory_phase


def memory_phase_failing_on_rank1(self: TaskLoop, task_id: int, *args: object) -> None:
    if self.ctx.rank == 1:
        raise RuntimeError("injected failure on rank 1")
    original_memory_phase(self, task_id, *args)  # type: ignore[arg-type]


TaskLoop.memory_phase = memory_phase_failing_on_rank1  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main.main(sys.argv[1:]))
