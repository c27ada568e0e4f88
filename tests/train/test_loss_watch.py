"""The loss terms of an epoch, summed on the device and checked for NaN/inf without waiting for it."""
from __future__ import annotations

import pytest
import torch

from continual.method.losses import LossTerms
from continual.train.loss_watch import LossWatch, PendingCheck


def terms(classification: float, kd: float | None = None) -> LossTerms:
    return LossTerms(classification=torch.tensor(classification),
                     kd=None if kd is None else torch.tensor(kd))


def test_sums_equal_the_python_sums_of_the_float32_terms_from_a_resumed_epoch() -> None:
    values = [(0.1, 0.7), (1e-8, 3.3), (2.5, 1e-3)]
    watch = LossWatch(torch.device("cpu"), {"classification": 10.0, "kd": 1.0, "total": 11.0})
    expected = {"classification": 10.0, "kd": 1.0, "total": 11.0}
    for classification, kd in values:
        watch.add(terms(classification, kd), "step")
        as_float32 = torch.tensor([classification, kd], dtype=torch.float32)
        expected["classification"] += float(as_float32[0])
        expected["kd"] += float(as_float32[1])
        expected["total"] += float(as_float32.sum())
    assert watch.read() == expected  # exactly: float64 on the device, like Python floats


def test_a_term_that_appears_later_is_summed_from_then_on() -> None:
    watch = LossWatch(torch.device("cpu"))
    watch.add(terms(1.0), "step 0")
    watch.add(terms(2.0, 0.5), "step 1")
    assert watch.read() == {"classification": 3.0, "total": 3.5, "kd": 0.5}


def test_a_non_finite_term_stops_at_its_step_on_the_cpu_with_its_name_and_value() -> None:
    watch = LossWatch(torch.device("cpu"))
    watch.add(terms(0.5, 0.1), "task 1, epoch 2, step 3")
    with pytest.raises(FloatingPointError, match=r"^non-finite kd loss \(nan\) at task 1, epoch 2, step 4$"):
        watch.add(terms(0.5, float("nan")), "task 1, epoch 2, step 4")
    with pytest.raises(FloatingPointError, match=r"classification loss \(inf\) at SAM"):
        LossWatch(torch.device("cpu")).check(terms(float("inf")), "SAM")


class NotLanded:
    """A CUDA event whose copy has not reached the host yet (the host is ahead of the device)."""

    def __init__(self) -> None:
        self.waited = False

    def query(self) -> bool:
        return False

    def synchronize(self) -> None:
        self.waited = True


def test_with_copies_in_flight_a_bad_step_stops_the_run_at_most_lag_steps_later(monkeypatch) -> None:
    events: list[NotLanded] = []

    def queue_in_flight(self: LossWatch, names: tuple[str, ...], values: torch.Tensor, where: str) -> None:
        events.append(NotLanded())
        self._pending.append(PendingCheck(where, names, values, events[-1]))  # type: ignore[arg-type]
        self._settle(everything=False)

    monkeypatch.setattr(LossWatch, "_queue", queue_in_flight)
    watch = LossWatch(torch.device("cpu"), lag=2)
    watch.add(terms(float("nan")), "step 0")
    watch.add(terms(1.0), "step 1")  # two steps in flight: nobody waits yet
    assert not any(event.waited for event in events)
    with pytest.raises(FloatingPointError, match="at step 0"):
        watch.add(terms(1.0), "step 2")  # a third: the host waits for the oldest copy, two steps late
    assert events[0].waited and not events[1].waited

    reading = LossWatch(torch.device("cpu"), lag=2)
    reading.add(terms(float("inf")), "step 0")
    with pytest.raises(FloatingPointError, match="at step 0"):
        reading.read()  # an epoch's end (or a save) reads the sums only after every check
