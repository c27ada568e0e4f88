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

from continual.runtime.distributed import all_reduce_sum


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
        """Whether any process got a signal (a collective: every rank must call it at the same point)."""
        flag = torch.tensor([1.0 if self.signal_name else 0.0], device=device)
        if all_reduce_sum(flag).item() > 0:
            self.signal_name = self.signal_name or "SIGTERM"  # another rank was signalled
            return True
        return False
