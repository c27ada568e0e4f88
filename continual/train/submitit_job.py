"""One run of main.py as a submitit job (SLURM, or submitit's local executor), requeued until it ends.

run_with_submitit.py checks the options and submits a ``SubmititJob``; submitit unpickles it in each task
(one per GPU, or per CPU process) and calls it. Every task is one process of the run, placed by the
scheduler (continual.runtime.cluster). On a stop signal (the time limit's warning, pre-emption) the run
saves its state at the next step and main.py returns 143; rank 0 then asks submitit to requeue the job,
and submitit calls ``checkpoint``: the next attempt is the same job with ``--resume`` of the run folder,
which continues from the step where the run stopped.
"""
from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import submitit

from continual.runtime.cluster import SignalBridge, StoppedOutsideTraining, process_group_variables
from continual.state.saved_runs import find_run_to_resume

STOPPED = 143  # main.py's status after a SIGTERM (or the time-limit signal) stopped the run with its state saved


class JobFailed(Exception):
    """main.py ended the job with an error (its error line is in the job's log)."""


@dataclass(frozen=True)
class RunPlace:
    """Where a job's run folder is: the ``--resume`` folder given, else the newest run of this name under the
    job folder (the run's ``--output-basedir``: only this job writes there)."""

    job_dir: str
    data_set: str
    log_category: str
    name: str
    resume: str = ""

    def saved_run(self) -> Path | None:
        """The run folder, once it holds a run state to continue."""
        if self.resume:
            return Path(self.resume)
        return find_run_to_resume(Path(self.job_dir), self.data_set, self.log_category, self.name)


@dataclass(frozen=True)
class SubmititJob:
    """main.py with ``argv`` (checked at submission) in the folder it was submitted from; ``entry`` is main.py's
    ``main``. ``attempt`` counts the requeues; a requeued attempt continues ``resume_from``."""

    argv: tuple[str, ...]
    workdir: str
    place: RunPlace
    entry: Callable[[list[str]], int]
    evaluate: bool = False  # --eval: a requeue evaluates the same checkpoint again
    attempt: int = 0
    resume_from: str = ""

    def command(self) -> list[str]:
        """main.py's options for this attempt: a requeued one continues the run folder from its run state
        (not from a task checkpoint: ``--start-task`` goes back to 0), whatever the first one asked."""
        if not self.resume_from:
            return list(self.argv)
        again = [] if self.evaluate else ["--start-task", "0", "--no-auto-resume"]
        return [*self.argv, "--resume", self.resume_from, *again]

    def __call__(self) -> str:
        environment = submitit.JobEnvironment()
        os.chdir(self.workdir)  # the options' relative paths (option files, --data-path) are the submitter's
        os.environ.update(process_group_variables(environment, self.attempt))
        time_limit = signal.Signals[f"SIG{environment.USR_SIG}"]
        bridge = SignalBridge((time_limit, signal.SIGTERM)).install()
        try:
            status = self.entry(self.command())
        except StoppedOutsideTraining:
            status = STOPPED
        finally:
            bridge.uninstall()
        if status == 0:
            return f"run finished: {self.place.saved_run() or self.place.job_dir}"
        if status != STOPPED:
            raise JobFailed(f"main.py ended with status {status}: {last_error_line(environment.paths.stderr)}")
        if environment.global_rank != 0:
            return "stopped with its run state saved; rank 0 requeues the job"
        requeue = bridge.previous(time_limit)  # submitit's: it calls checkpoint, then requeues the job
        if not callable(requeue):
            raise JobFailed(f"stopped by {bridge.received or 'SIGTERM'} with its run state saved, but "
                            f"submitit's handler is missing: resume with --resume")
        signal.signal(time_limit, signal.SIG_IGN)  # one requeue, even if the signal comes again
        requeue(time_limit, None)  # exits the process (SLURM requeues, the local executor restarts the tasks)
        raise JobFailed("submitit did not requeue the job")  # not reached: submitit exits or raises why not

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """The next attempt (submitit's checkpointing, on rank 0 only): the same job, continuing the run
        folder if it holds a run state (else starting it as the first attempt did)."""
        saved = self.place.saved_run()
        resume_from = str(saved) if saved is not None else self.resume_from
        print(f"requeued: attempt {self.attempt + 1} continues {resume_from or 'from the start'}", flush=True)
        return submitit.helpers.DelayedSubmission(
            dataclasses.replace(self, attempt=self.attempt + 1, resume_from=resume_from))


def last_error_line(log: Path) -> str:
    """The last ``error:`` line main.py wrote to the job's error log (it says why the run stopped)."""
    if not log.exists():
        return f"see {log}"
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error:")]
    return lines[-1] if lines else f"see {log}"
