"""Progress bars: when they are shown and what they show."""
from __future__ import annotations

import io

from continual.report.progress import EpochBar, bar_postfix, bars_wanted, epoch_bar
from continual.report.records import EpochProgress


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_bars_only_on_the_main_process_on_a_terminal_without_no_progress() -> None:
    terminal = (FakeStream(True), FakeStream(True))
    assert bars_wanted(True, True, terminal)
    assert not bars_wanted(False, True, terminal)  # --no-progress
    assert not bars_wanted(True, False, terminal)  # not rank 0
    assert not bars_wanted(True, True, (FakeStream(False), FakeStream(True)))  # stdout to a file
    assert not bars_wanted(True, True, (FakeStream(True), FakeStream(False)))  # stderr to a file
    with epoch_bar(False, "x", 10, 1e-3) as after_step:
        assert after_step is None


def test_bar_shows_running_losses_lr_and_throughput() -> None:
    progress = EpochProgress(sums={"classification": 1.5, "kd": 0.3, "div": 0.6, "total": 2.4}, steps=3,
                             images=96, seconds=2.0)
    assert bar_postfix(progress, 3.125e-4) == {"loss": "0.8000", "kd": "0.1000", "div": "0.2000",
                                               "lr": "3.13e-04", "img/s": "48"}
    stream = FakeStream(True)
    bar = EpochBar("task 1 train 2/5", 10, 3.125e-4, file=stream)
    bar.update(progress, lambda: progress.sums)
    bar.bar.refresh()
    shown = stream.getvalue()
    assert "task 1 train 2/5" in shown and "3/10" in shown
    assert "loss=0.8000" in shown and "div=0.2000" in shown and "img/s=48" in shown
    bar.close()


def test_bar_reads_the_losses_at_most_once_a_second_and_at_the_last_step(monkeypatch) -> None:
    """Each read of the sums waits for the device: the bar reads them on its first update, then once a second."""
    clock = [100.0]
    monkeypatch.setattr("continual.report.progress.time.monotonic", lambda: clock[0])
    reads = []

    def read_sums() -> dict[str, float]:
        reads.append(clock[0])
        return {"total": 1.0}

    bar = EpochBar("task 0 train 1/1", 4, 1e-3, file=FakeStream(True))
    for step, now in enumerate((100.0, 100.5, 101.2, 101.3), start=1):
        clock[0] = now
        bar.update(EpochProgress(steps=step, images=8 * step, seconds=float(step)), read_sums)
    assert reads == [100.0, 101.2, 101.3]  # first, a second later, the last step
    bar.close()
