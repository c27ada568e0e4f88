"""``--compile``: torch.compile of the module a phase trains, compiled again after each growth.

A task adds a token and a head, so the graphs of the previous task no longer fit. Dynamo would recompile on its
own, but only up to its recompilation limit (8 per function); past it, it runs the function eagerly with a
warning, which a 50-task run reaches at task 9 without anyone noticing. So each phase starts from empty caches
(``torch._dynamo.reset``): every phase compiles once for its own shapes, and hitting the limit inside a phase is
an error instead of a silent fall-back. Random draws (stochastic depth, dropout) are made as in eager mode
(inductor's ``fallback_random``), so a seed gives the same masks with and without ``--compile``.
"""
from __future__ import annotations

from typing import cast

from torch import nn


def compiled_for_phase(module: nn.Module, enabled: bool, backend: str = "inductor") -> nn.Module:
    """``module`` compiled for a new phase (the module itself when ``enabled`` is false). The compiled module
    shares the parameters, buffers and train/eval mode of ``module``: the optimiser and the checkpoints keep
    using ``module``."""
    if not enabled:
        return module
    import torch._dynamo  # noqa: PLC0415  # only runs that compile pay for the import
    import torch._inductor.config as inductor_config  # noqa: PLC0415

    torch._dynamo.reset()
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    inductor_config.fallback_random = True
    return cast(nn.Module, torch.compile(module, backend=backend))
