"""The device of a process and what is chosen for it."""
from __future__ import annotations

import dataclasses

import torch
from support import TINY

from continual.model.dytox import DyTox
from continual.runtime.device import attention_kernel_for, pin_memory_wanted, resolve_device


def test_the_gpsa_kernel_is_chosen_for_the_device_when_the_model_is_built() -> None:
    assert attention_kernel_for(torch.device("cuda", 0)) == "sdpa"
    assert attention_kernel_for(torch.device("cpu")) == "mixed"
    model = DyTox(dataclasses.replace(TINY, gpsa_kernel=attention_kernel_for(torch.device("cuda"))), 2)
    assert {block.attn.content_kernel for block in model.sabs} == {"sdpa"}  # a CPU model can use it too


def test_pinned_memory_only_for_a_gpu() -> None:
    assert pin_memory_wanted(True, torch.device("cuda", 0)) and not pin_memory_wanted(True, torch.device("cpu"))
    assert not pin_memory_wanted(False, torch.device("cuda", 0))
    assert resolve_device("cpu", 0) == torch.device("cpu")
