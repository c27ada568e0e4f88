"""Seeded per-class test splits, for datasets without an official one (digits, ImageNet-R)."""
from __future__ import annotations

import numpy as np


def stratified_test_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask choosing round(fraction * n_c) test samples of every class c.

    One seeded generator visits the classes in sorted order, so the split is
    the same for the train and the test call and they never overlap.
    """
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=round(fraction * len(members)), replace=False)
        mask[chosen] = True
    return mask
