"""Every random state a process draws from: seeding, and capturing / restoring it for an exact resume."""
from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """timm's RandAugment draws from numpy and random: seed both from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def seed_streams(seed: int) -> None:
    """Seed the three streams the augmentations draw from: Python's, NumPy's and torch's CPU generator
    (not ``torch.manual_seed``, which would reseed the CUDA generators too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)


@contextmanager
def streams_kept(keep: bool = True) -> Iterator[None]:
    """Put Python's, NumPy's and torch's CPU streams back as they were afterwards (``keep``), so that draws
    made inside do not disturb the caller's."""
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if keep else None
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


# ------------------------------------------------------------------------ RNG
def capture_rng(generator: np.random.Generator) -> dict[str, Any]:
    """Every random state the run draws from, as plain data and tensors."""
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
        "generator": generator.bit_generator.state,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: np.random.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    torch.set_rng_state(state["torch"])
    generator.bit_generator.state = state["generator"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
