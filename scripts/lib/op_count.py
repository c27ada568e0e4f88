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
would pay (a copy to the host is only seen on CUDA, where it is one).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
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


class OpCounter(TorchDispatchMode):
    """Counts, by name, the operations dispatched while it is active: ``ops`` (no views), ``views``, ``syncs``."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        (self.views if getattr(func, "is_view", False) else self.ops)[name] += 1
        if name in SCALAR_READS or name in DATA_DEPENDENT_SHAPES:
            self.syncs[name] += 1
        elif name in COPIES and "cuda" in _devices((args, kwargs)) and _devices(out) == {"cpu"}:
            self.syncs[f"{name} to the host"] += 1
        return out


def count_ops(step: Callable[[], object]) -> dict[str, Any]:
    """Run ``step`` once under an ``OpCounter``: totals and the counts by name (most frequent first)."""
    with OpCounter() as counter:
        step()
    return {"ops": sum(counter.ops.values()), "views": sum(counter.views.values()),
            "host_syncs": sum(counter.syncs.values()), "syncs_by_op": dict(counter.syncs.most_common()),
            "ops_by_name": dict(counter.ops.most_common())}
