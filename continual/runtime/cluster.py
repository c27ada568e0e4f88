"""A cluster job's processes: where each one stands, and how the job's stop signals reach the run.

A SLURM job started through submitit runs one task per GPU (or per CPU process) on each of its nodes and
numbers them (global rank, rank on the node, number of tasks, the nodes' host names);
``continual.runtime.distributed.setup`` reads torchrun's variables. ``process_group_variables`` turns the
one into the other.

SLURM warns a job before its time limit with a signal (submitit asks for USR2) and pre-empts it with
SIGTERM. The run already stops cleanly on SIGTERM: ``continual.runtime.preemption.StopRequest`` installs
its handler while the tasks run, and the loop saves a run state at the next step. ``SignalBridge`` hands
the time-limit warning to whatever handler the run has installed for SIGTERM; a signal that comes while
no run loop listens (setting up, writing the summary) stops the job at once with ``StoppedOutsideTraining``,
keeping what the run last saved.
"""
from __future__ import annotations

import signal
from collections.abc import Sequence
from types import FrameType
from typing import Any, Protocol

# Rendezvous ports are drawn in [PORT_BASE, PORT_BASE + PORT_SPAN): below Linux's ephemeral range (32768-),
# where outgoing connections take their ports.
PORT_BASE, PORT_SPAN = 10_000, 20_000
PORT_STRIDE_PER_ATTEMPT = 7_919  # a prime: the attempts of one job and consecutive job ids do not meet soon


class JobPlace(Protocol):
    """What a scheduler says about a task (submitit's ``JobEnvironment`` is one)."""

    @property
    def job_id(self) -> str: ...

    @property
    def global_rank(self) -> int: ...

    @property
    def local_rank(self) -> int: ...

    @property
    def num_tasks(self) -> int: ...

    @property
    def num_nodes(self) -> int: ...

    @property
    def hostnames(self) -> Sequence[str]: ...


def master_port(job_id: str, attempt: int) -> int:
    """The rendezvous port of a job's attempt, the same on every task without any exchange: from the job id
    (SLURM keeps it when a job is requeued), and another one for each attempt, so that a requeued job never
    waits for its previous attempt's port to be released."""
    number = int("".join(c for c in job_id if c.isdigit()) or "0")  # array jobs are "<id>_<index>"
    return PORT_BASE + (number + PORT_STRIDE_PER_ATTEMPT * attempt) % PORT_SPAN


def process_group_variables(place: JobPlace, attempt: int) -> dict[str, str]:
    """torchrun's variables for this task: rank, world size, rank on the node, and the rendezvous on the
    job's first node (the loopback address when the job has one node)."""
    host = "127.0.0.1" if place.num_nodes == 1 else place.hostnames[0]
    return {"RANK": str(place.global_rank), "LOCAL_RANK": str(place.local_rank),
            "WORLD_SIZE": str(place.num_tasks), "MASTER_ADDR": host,
            "MASTER_PORT": str(master_port(place.job_id, attempt))}


class StoppedOutsideTraining(BaseException):
    """A stop signal came while no run loop was listening: the job stops at once (a BaseException, so that
    no ``except Exception`` of the run takes it for an error of its own)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"stopped by {signal_name} outside the training loop")
        self.signal_name = signal_name


class SignalBridge:
    """While installed, each of ``signals`` goes to the handler the run has installed for SIGTERM (the run's
    stop request, which saves a run state at the next step); with none installed, it raises
    ``StoppedOutsideTraining``. ``received`` names the last signal; ``previous`` gives back the handler
    the bridge replaced (submitit's, which requeues the job)."""

    def __init__(self, signals: Sequence[int]) -> None:
        self.signals = tuple(signals)
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> SignalBridge:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def previous(self, signum: int) -> Any:
        return self._previous[signum]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        run_handler = signal.getsignal(signal.SIGTERM)
        if run_handler == self._handle or not callable(run_handler):  # the run's loop is not running
            raise StoppedOutsideTraining(self.received)
        run_handler(signum, frame)  # the run says which signal stopped it
