"""Stop cleanly on SIGTERM / SIGINT (cluster pre-emption, Ctrl-C).

The first signal only raises a flag; the training loop checks it at step and
phase boundaries, saves a checkpoint and stops with :class:`Preempted`. A
second Ctrl-C interrupts at once. With several processes the flag is agreed
on by all of them (an all-reduce), so every rank stops at the same step.
"""
from __future__ import annotations

import signal
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from continual.runtime.distributed import all_reduce_sum, distributed_run


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint."""

    def __init__(self, signal_name: str, where: str) -> None:
        super().__init__(f"stopped by {signal_name} {where}")
        self.signal_name = signal_name


class StopRequest:
    """A flag set by SIGTERM or SIGINT, with the handlers installed for the duration of a run."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._in_flight: _StepAgreement | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal_name = signal.Signals(signum).name

    def install(self) -> StopRequest:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def requested(self, device: torch.device) -> bool:
        """Whether any process got a signal, agreed now (a collective: every rank must call it at the same point;
        it waits for the device). Used between epochs and phases."""
        self._agreed_after_step()  # an agreement still in flight is consumed first, the same on every rank
        if not distributed_run():
            return self.signal_name is not None
        flag = torch.tensor([1.0 if self.signal_name else 0.0], device=device)
        return self._agreed(all_reduce_sum(flag).item() > 0)

    def requested_after_step(self, device: torch.device) -> bool:
        """The same after an optimiser step, without making the host wait for the device: in a single process,
        the flag itself; with several, the agreement started after the previous step (every rank launches one
        per step), so every rank stops at the same step, one step after a signal is first agreed on."""
        if not distributed_run():
            return self.signal_name is not None
        previous = self._agreed_after_step()
        self._in_flight = _StepAgreement(1.0 if self.signal_name else 0.0, device)
        return previous

    def _agreed_after_step(self) -> bool:
        in_flight, self._in_flight = self._in_flight, None
        return in_flight is not None and self._agreed(in_flight.result() > 0)

    def _agreed(self, any_signalled: bool) -> bool:
        if any_signalled:
            self.signal_name = self.signal_name or "SIGTERM"  # another rank was signalled
        return any_signalled


class _StepAgreement:
    """An all-reduce of the stop flag launched after a step and read after the next one: on CUDA its result
    is copied to pinned host memory behind the step's work, so reading it waits only for that copy."""

    def __init__(self, flag: float, device: torch.device) -> None:
        self.flag = torch.tensor([flag], device=device)
        self.work = dist.all_reduce(self.flag, op=dist.ReduceOp.SUM, async_op=True)
        self.host: torch.Tensor | None = None
        self.copied: torch.cuda.Event | None = None
        if device.type == "cuda":
            self.work.wait()  # orders the copy after the all-reduce on the device; the host does not wait
            self.host = torch.empty(1, pin_memory=True)
            self.host.copy_(self.flag, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record()

    def result(self) -> float:
        if self.host is None:  # gloo: the all-reduce runs on the host
            self.work.wait()
            return float(self.flag.numpy()[0])
        assert self.copied is not None
        self.copied.synchronize()
        return float(self.host.numpy()[0])
