"""A submitit job of main.py whose first attempt sends itself the time-limit signal right after a given
training step, for tests/program/test_submitit.py.

The step and the signal are sigterm_at_step.py's variables (DYTOX_TEST_SIGTERM_AT, DYTOX_TEST_SIGNAL, e.g.
"task 1, train epoch 0, step 2" and SIGUSR2, what SLURM sends before the time limit), so that the stop lands
inside a task's training at a known point. Importable from the job's tasks: the test puts this folder on
PYTHONPATH.
"""
from __future__ import annotations

from continual.train.submitit_job import SubmititJob


class InterruptedOnce(SubmititJob):
    """The first attempt signals itself at the step; the requeued ones run as a plain job."""

    def __call__(self) -> str:
        if self.attempt == 0:
            import sigterm_at_step  # noqa: F401  # patches the training step to send the signal
        return super().__call__()
