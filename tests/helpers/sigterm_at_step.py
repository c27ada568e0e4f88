"""main.py that sends itself SIGTERM (or DYTOX_TEST_SIGNAL, e.g. SIGINT; to its whole process group with
DYTOX_TEST_SIGNAL_GROUP set) right after a given training step, for tests/program/test_resume.py.

The step is named by DYTOX_TEST_SIGTERM_AT, e.g. "task 1, train epoch 1, step 3",
so that the stop lands inside an epoch at a known point (a signal sent from
outside could arrive between two epochs).
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import main  # noqa: E402
from continual.train import epoch as engine  # noqa: E402

checked = engine.LossWatch.add


def add_then_signal(watch: engine.LossWatch, terms: engine.LossTerms, where: str) -> None:
    checked(watch, terms, where)
    if where == os.environ["DYTOX_TEST_SIGTERM_AT"]:
        signum = signal.Signals[os.environ.get("DYTOX_TEST_SIGNAL", "SIGTERM")]
        if os.environ.get("DYTOX_TEST_SIGNAL_GROUP"):  # as Ctrl-C does: the loader workers get it too
            os.killpg(os.getpgrp(), signum)
        else:
            os.kill(os.getpid(), signum)


engine.LossWatch.add = add_then_signal  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main.main(sys.argv[1:]))
