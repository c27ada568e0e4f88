"""Imported at start-up by every Python whose PYTHONPATH starts with this folder (a test's ``train.sh`` run):
in each torchrun worker, when DYTOX_TEST_KILL_AT names a training step (e.g. "task 1, train epoch 0,
step 2"), the process kills itself with SIGKILL right after that step's forward pass, as on a lost node:
no handler runs, nothing is saved. Every rank reaches that step, so the whole run dies there."""
from __future__ import annotations

import os

if os.environ.get("DYTOX_TEST_KILL_AT") and "RANK" in os.environ:  # the workers, not torchrun's launcher
    import signal

    from continual.train import epoch as engine

    checked = engine.LossWatch.add

    def add_then_die(watch: engine.LossWatch, terms: engine.LossTerms, where: str) -> None:
        checked(watch, terms, where)
        if where == os.environ["DYTOX_TEST_KILL_AT"]:
            os.kill(os.getpid(), signal.SIGKILL)

    engine.LossWatch.add = add_then_die  # type: ignore[method-assign]
