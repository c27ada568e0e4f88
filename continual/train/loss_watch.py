"""An epoch's loss terms, summed on the device and checked for NaN/inf without making the host wait.

Reading a loss as a Python number (``float(loss)``, ``.item()``) makes the host wait until the GPU has
finished everything queued so far: once per step, that wait leaves the GPU idle while the host prepares the
next step. Here each step's terms are added to running sums that stay on the device (float64, so the sums
equal the Python sums of the float32 values) and copied, without blocking, to a host buffer that the check
reads once the copy has landed. On the CPU the copy is immediate and a bad step stops the run before its
backward pass, as the published loop does; on CUDA the check runs at most ``lag`` steps after the bad step.
The sums are read once per epoch, before a run state is saved, and when a progress bar asks.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from continual.method.losses import LossTerms


@dataclass
class PendingCheck:
    """A step's terms on their way to the host."""

    where: str
    names: tuple[str, ...]
    values: Tensor  # host buffer (pinned on CUDA)
    ready: torch.cuda.Event | None  # None: the copy was synchronous

    def landed(self) -> bool:
        return self.ready is None or self.ready.query()

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()

    def check(self) -> None:
        """Stop with the term, its value and the step, on the first non-finite term."""
        for name, value in zip(self.names, self.values.numpy().tolist(), strict=True):  # host memory: no device read
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite {name} loss ({value}) at {self.where}")


def step_values(terms: LossTerms) -> tuple[tuple[str, ...], Tensor]:
    """The names and the float32 values (a 1-D device tensor) of the present terms, then the total."""
    named = terms.named()
    named["total"] = terms.total
    return tuple(named), torch.stack([value.detach().reshape(()).float() for value in named.values()])


class LossWatch:
    """Running sums of an epoch's loss terms (one ``add`` per optimiser step) and the non-finite check of every
    pass (``check`` for a pass that is not summed, such as SAM's second one)."""

    def __init__(self, device: torch.device, sums: dict[str, float] | None = None, lag: int = 2) -> None:
        self.device = device
        self.lag = lag
        self._host_sums = dict(sums or {})  # sums of the steps before a resume, and of terms no longer present
        self._names: tuple[str, ...] = ()
        self._sums: Tensor | None = None  # float64 on the device, one per name of ``_names``
        self._pending: deque[PendingCheck] = deque()

    def add(self, terms: LossTerms, where: str) -> None:
        """Add a step's terms to the sums and queue their check."""
        names, values = step_values(terms)
        if names != self._names:  # the terms present changed (rare): continue from exact host sums
            self._host_sums = self.read()
            self._names = names
            self._sums = torch.tensor([self._host_sums.get(name, 0.0) for name in names], dtype=torch.float64,
                                      device=values.device)
        assert self._sums is not None
        self._sums += values
        self._queue(names, values, where)

    def check(self, terms: LossTerms, where: str) -> None:
        """Queue the check of a pass whose terms are not summed."""
        self._queue(*step_values(terms), where)

    def read(self) -> dict[str, float]:
        """The exact sums so far, after every queued check has passed (the one wait of an epoch)."""
        self._settle(everything=True)
        sums = dict(self._host_sums)
        if self._sums is not None:
            sums.update(zip(self._names, self._sums.tolist(), strict=True))
        return sums

    def _queue(self, names: tuple[str, ...], values: Tensor, where: str) -> None:
        if values.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            ready: torch.cuda.Event | None = torch.cuda.Event()
            ready.record()  # type: ignore[union-attr]
        else:
            host, ready = values, None  # already in host memory
        self._pending.append(PendingCheck(where, names, host, ready))
        self._settle(everything=False)

    def _settle(self, everything: bool) -> None:
        """Check the steps whose values have reached the host; wait for the oldest beyond ``lag`` (or all)."""
        while self._pending:
            oldest = self._pending[0]
            if not (everything or len(self._pending) > self.lag or oldest.landed()):
                return
            oldest.wait()
            self._pending.popleft()
            oldest.check()
