"""TensorBoard scalars written from task results (the whole run's curves are tested in tests/program)."""
from __future__ import annotations

from pathlib import Path

from support import task_result

from continual.report.tensorboard import ScalarLog


def test_tensorboard_shows_the_top1_of_a_method_s_other_classifiers(tmp_path: Path) -> None:
    """iCaRL's head, logged beside its nearest mean of exemplars, is a curve of its own."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = ScalarLog(tmp_path)
    log.replay([task_result(task=0, acc1=90.0, acc1_other={"head": 80.0}),
                task_result(task=1, acc1=60.0, acc1_other={"head": 35.5})], [])
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("accuracy/top1_head")] == [(0, 80.0), (1, 35.5)]
    assert [s.value for s in events.Scalars("accuracy/top1")] == [90.0, 60.0]
