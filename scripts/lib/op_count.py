"""The aten operations a step dispatches, and those that make the host wait for the device (``--count-ops`` of
bench_model.py).

Counted under a ``TorchDispatchMode``, so forward, backward and the optimiser all count, on any device. View
operations (``is_view``: they launch no kernel) are counted apart. A *host synchronisation* is an operation
that, on CUDA, makes the host wait for the GPU's queue to drain:

- ``_local_scalar_dense``: what ``.item()``, ``.tolist()``, ``float()`` / ``bool()`` of a tensor and
  ``if tensor:`` dispatch to;
- an operation whose output shape depends on the data (``nonzero``, ``masked_select``, ``unique``...);
- a copy from a CUDA tensor to a CPU one (``.cpu()``, ``.to("cpu")``, ``.numpy()``).

On the CPU nothing waits, but the same operations are dispatched, so the count made here is the count a GPU
would pay (a copy to the host is only seen on CUDA, where it is one). Tensors that live in host memory even on
a CUDA run (the step counters of torch's non-fused optimisers) are named to the counter: reading them is a
*host read*, counted apart, not a synchronisation. A non-blocking copy to pinned host memory does not wait
either.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SCALAR_READS = ("_local_scalar_dense",)
DATA_DEPENDENT_SHAPES = ("nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive",
                         "unique_dim")
COPIES = ("_to_copy", "copy_")


def _devices(values: Any) -> set[str]:
    """The device types of the tensors in ``values`` (nested lists and tuples included)."""
    if isinstance(values, torch.Tensor):
        return {values.device.type}
    if isinstance(values, (list, tuple)):
        return set().union(*(_devices(value) for value in values)) if values else set()
    return set()


def _non_blocking_to_pinned(args: tuple, kwargs: dict, out: Any) -> bool:
    non_blocking = kwargs.get("non_blocking", False) or (len(args) > 2 and args[2] is True)
    target = args[0] if isinstance(out, torch.Tensor) and out is args[0] else out  # copy_ writes into args[0]
    return bool(non_blocking) and isinstance(target, torch.Tensor) and target.is_pinned()


class OpCounter(TorchDispatchMode):
    """Counts, by name, the operations dispatched while it is active: ``ops`` (no views), ``views``, ``syncs``,
    and ``host_reads`` (scalar reads of the tensors of ``host_resident``)."""

    def __init__(self, host_resident: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.host_reads: Counter[str] = Counter()
        self.host_storages = {tensor.untyped_storage().data_ptr() for tensor in host_resident}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        (self.views if getattr(func, "is_view", False) else self.ops)[name] += 1
        if name in SCALAR_READS and args[0].untyped_storage().data_ptr() in self.host_storages:
            self.host_reads[name] += 1
        elif name in SCALAR_READS or name in DATA_DEPENDENT_SHAPES:
            self.syncs[name] += 1
        elif name in COPIES and "cuda" in _devices((args, kwargs)) and _devices(out) == {"cpu"} \
                and not _non_blocking_to_pinned(args, kwargs, out):
            self.syncs[f"{name} to the host"] += 1
        return out

    def summary(self) -> dict[str, Any]:
        """Totals and the counts by name (most frequent first)."""
        return {"ops": sum(self.ops.values()), "views": sum(self.views.values()),
                "host_syncs": sum(self.syncs.values()), "host_reads": sum(self.host_reads.values()),
                "syncs_by_op": dict(self.syncs.most_common()), "ops_by_name": dict(self.ops.most_common())}


def count_ops(step: Callable[[], object], host_resident: Iterable[torch.Tensor] = ()) -> dict[str, Any]:
    """Run ``step`` once under an ``OpCounter``: its ``summary``."""
    with OpCounter(host_resident) as counter:
        step()
    return counter.summary()


class CountedBatches:
    """``batches``, with ``counter`` active from the moment batch ``counted`` is handed out until the next is
    asked for: exactly what a training loop does with that batch (its step), nothing of the epoch around it."""

    def __init__(self, batches: list[Any], counted: int, counter: OpCounter) -> None:
        self.batches, self.counted, self.counter = batches, counted, counter

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        for index, batch in enumerate(self.batches):
            if index != self.counted:
                yield batch
                continue
            self.counter.__enter__()
            try:
                yield batch
            finally:
                self.counter.__exit__(None, None, None)
