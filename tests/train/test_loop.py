"""The task loop's own parts (the loop as a whole runs in tests/program)."""
from __future__ import annotations

import time

from continual.train.loop import PhaseClock


def test_the_phase_clock_counts_the_running_phase_in_a_snapshot() -> None:
    """A run state saved inside a phase keeps the seconds spent so far, the earlier phases' too."""
    clock = PhaseClock({"train": 10.0})  # resumed: train had run 10 s before the stop
    with clock.timing("train"):
        time.sleep(0.02)
        inside = clock.snapshot()
        assert 10.02 <= inside["train"] < 11.0
    with clock.timing("memory"):
        pass
    done = clock.snapshot()
    assert set(done) == {"train", "memory"} and done["train"] >= inside["train"]
    assert clock.snapshot() == done  # nothing runs: a snapshot is stable
