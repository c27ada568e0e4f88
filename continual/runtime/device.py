"""The device of this process and what depends on it: kernels, determinism."""
from __future__ import annotations

import os

import torch


def resolve_device(option: str, local_rank: int) -> torch.device:
    """``auto`` picks this process's GPU when CUDA is available, else the CPU."""
    if option == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(option)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {option}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def attention_kernel_for(device: torch.device) -> str:
    """The fast form of GPSA's attention for ``device`` (the model never looks at the device):
    SDPA on CUDA; on the CPU one mixed map times V, about 17 % faster there (docs/benchmarks.md)."""
    return "sdpa" if device.type == "cuda" else "mixed"


def pin_memory_wanted(pin_mem: bool, device: torch.device) -> bool:
    """Pinned host memory only helps copies to a GPU."""
    return pin_mem and device.type == "cuda"


def set_deterministic(device: torch.device) -> None:
    """Deterministic kernels, so that a resumed run equals an uninterrupted one (``--deterministic``)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
