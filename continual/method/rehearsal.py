"""Exemplar selection and the rehearsal memory.

Selection functions are pure numpy functions of features, so they can be
checked against the reference's herding indices without a model. The memory is
a plain container of numpy arrays whose order is meaningful: classes ascending,
each class in selection order (best exemplar first). Trimming keeps the first
exemplars of each class, and the unshuffled finetuning loader reads the memory
in that order, as published.

Fixed defect of the published code: random selection draws *without*
replacement (it used to put duplicates in memory), and an unknown selection
name raises instead of silently running iCaRL.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "FEATURE_KIND",
    "Memory",
    "closest_to_mean",
    "extract_features",
    "feature_kind",
    "furthest_from_mean",
    "icarl_selection",
    "per_class_quota",
    "random_selection",
    "select_exemplars",
]

_UNPICKED_RANK = 10000  # rank the published herding gives to samples never picked
_MAX_HERDING_ITERATIONS = 1000


# --------------------------------------------------------------------------
# Per-class selection functions: features of one class -> local indices
# --------------------------------------------------------------------------


def icarl_selection(features: np.ndarray, nb_exemplars: int) -> np.ndarray:
    """iCaRL herding: greedily pick samples whose running mean tracks the class mean.

    Reproduces the published loop exactly (same float dtype as the input):
    features are L2-normalised (norm + 1e-8); w starts at the mean mu; each
    iteration picks argmax(w . x_i) and sets w <- w + mu - x_pick. Re-picking an
    already chosen sample only updates w. Stops after min(n, N) distinct picks
    or 1000 iterations; samples never picked rank last.

    features: (N, D) -> indices (min(n, N),) into features, in selection order.
    """
    directions = features.T  # (D, N)
    directions = directions / (np.linalg.norm(directions, axis=0) + 1e-8)
    mu = np.mean(directions, axis=1)  # (D,)
    ranks = np.zeros((features.shape[0],))  # 0 = not picked yet, else 1-based pick order
    target = min(nb_exemplars, features.shape[0])
    w_t = mu
    nb_picked, iterations = 0, 0
    while np.sum(ranks != 0) != target and iterations < _MAX_HERDING_ITERATIONS:
        pick = int(np.argmax(np.dot(w_t, directions)))
        iterations += 1
        if ranks[pick] == 0:
            nb_picked += 1
            ranks[pick] = nb_picked
        w_t = w_t + mu - directions[:, pick]
    ranks[ranks == 0] = _UNPICKED_RANK
    # Stable sort: ties only occur among unpicked samples, which then keep index order.
    return np.argsort(ranks, kind="stable")[:nb_exemplars]


def _squared_distances_to_mean(features: np.ndarray) -> np.ndarray:
    """(N, D) -> (N,) squared Euclidean distance of each raw feature to the mean."""
    mean = np.mean(features, axis=0, keepdims=True)  # (1, D)
    return np.power(features - mean, 2).sum(-1)


def closest_to_mean(features: np.ndarray, nb_exemplars: int) -> np.ndarray:
    """The nb_exemplars samples nearest to the class mean, nearest first. (N, D) -> (n,)."""
    order = np.argsort(_squared_distances_to_mean(features), kind="stable")
    return order[:nb_exemplars]


def furthest_from_mean(features: np.ndarray, nb_exemplars: int) -> np.ndarray:
    """The nb_exemplars samples farthest from the class mean, farthest first. (N, D) -> (n,).

    The reversed ascending order, as published (ties come out in reverse index order).
    """
    order = np.argsort(_squared_distances_to_mean(features), kind="stable")[::-1]
    return order[:nb_exemplars]


def random_selection(n_samples: int, nb_exemplars: int, rng: np.random.Generator) -> np.ndarray:
    """min(n, n_samples) distinct indices in [0, n_samples), in random order.

    Without replacement: the published code sampled with replacement and so
    stored duplicate exemplars.
    """
    return rng.choice(n_samples, size=min(nb_exemplars, n_samples), replace=False)


# --------------------------------------------------------------------------
# Selection over a whole task
# --------------------------------------------------------------------------

_Selector = Callable[[np.ndarray | None, int, int, np.random.Generator], np.ndarray]


def _needs(features: np.ndarray | None, method: str) -> np.ndarray:
    if features is None:
        raise ValueError(f"rehearsal method {method!r} needs features, got None")
    return features


def _select_random(features: np.ndarray | None, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return random_selection(n, k, rng)


def _select_closest(features: np.ndarray | None, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return closest_to_mean(_needs(features, "closest"), k)


def _select_furthest(features: np.ndarray | None, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return furthest_from_mean(_needs(features, "furthest"), k)


def _select_icarl(features: np.ndarray | None, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return icarl_selection(_needs(features, "icarl"), k)


# name -> (selection function, features the caller must extract: None, "all" or "token")
_METHODS: dict[str, tuple[_Selector, str | None]] = {
    "random": (_select_random, None),
    "closest_all": (_select_closest, "all"),
    "closest_token": (_select_closest, "token"),
    "furthest_all": (_select_furthest, "all"),
    "furthest_token": (_select_furthest, "token"),
    "icarl_all": (_select_icarl, "all"),
    "icarl_token": (_select_icarl, "token"),
}

FEATURE_KIND: dict[str, str | None] = {name: kind for name, (_, kind) in _METHODS.items()}


def _lookup(method: str) -> tuple[_Selector, str | None]:
    try:
        return _METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown rehearsal method {method!r}; valid: {sorted(_METHODS)}"
        ) from None


def feature_kind(method: str) -> str | None:
    """Which features `method` needs: None (random), "all" or "token" (for `extract_features`)."""
    return _lookup(method)[1]


def select_exemplars(
    y: np.ndarray,
    features: np.ndarray | None,
    nb_per_class: int,
    method: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Global indices of the exemplars of every class in y, class by class.

    Classes in ascending order, each in its selection order (best first), so
    `Memory.trim` keeps the best ones. y: (N,) ints; features: (N, F) or None
    for "random". Returns (sum over classes of min(nb_per_class, class size),).
    """
    selector, _ = _lookup(method)
    y = np.asarray(y)
    if features is not None and len(features) != len(y):
        raise ValueError(f"{len(features)} feature rows for {len(y)} labels")
    if nb_per_class < 0:
        raise ValueError(f"nb_per_class must be >= 0, got {nb_per_class}")
    chosen = []
    for class_id in np.unique(y):
        class_indexes = np.where(y == class_id)[0]  # (N_c,) ascending
        class_features = None if features is None else features[class_indexes]
        local = selector(class_features, len(class_indexes), nb_per_class, rng)
        chosen.append(class_indexes[local])
    if not chosen:
        return np.empty(0, dtype=np.int64)
    return np.concatenate(chosen).astype(np.int64)


# --------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------


def _all_embeddings(task_embeddings: torch.Tensor) -> torch.Tensor:
    """(T, B, D) -> (B, T*D): every task embedding of a sample, in task order."""
    nb_tasks, batch, dim = task_embeddings.shape
    return task_embeddings.permute(1, 0, 2).reshape(batch, nb_tasks * dim)


def _last_embedding(task_embeddings: torch.Tensor) -> torch.Tensor:
    """(T, B, D) -> (B, D): the newest task's embedding."""
    return task_embeddings[-1]


_FEATURE_EXTRACTORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "all": _all_embeddings,
    "token": _last_embedding,
}


def _task_embeddings(output: Any) -> torch.Tensor:
    embeddings = getattr(output, "task_embeddings", None)
    if embeddings is None:
        raise TypeError(
            f"model output {type(output).__name__} has no 'task_embeddings' attribute"
        )
    if embeddings.dim() != 3:
        raise ValueError(f"task_embeddings must be (T, B, D), got {tuple(embeddings.shape)}")
    return embeddings


def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    kind: str,
    device: torch.device | str,
) -> tuple[np.ndarray, np.ndarray]:
    """Features for herding: (N, F) float32 and targets (N,), in loader order.

    The model runs in eval mode (as published: it is evaluated just before
    selection) and its previous mode is restored. Batches are (x, y, ...).
    kind "all": F = T*D (all task embeddings); "token": F = D (the last one).
    """
    if kind not in _FEATURE_EXTRACTORS:
        raise ValueError(f"unknown feature kind {kind!r}; valid: {sorted(_FEATURE_EXTRACTORS)}")
    extract = _FEATURE_EXTRACTORS[kind]
    was_training = model.training
    model.eval()
    features, targets = [], []
    try:
        with torch.inference_mode():
            for batch in loader:
                x, y = batch[0], batch[1]
                embeddings = _task_embeddings(model(x.to(device)))  # (T, B, D)
                features.append(extract(embeddings).float().cpu().numpy())
                targets.append(np.asarray(y.cpu() if torch.is_tensor(y) else y))
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("extract_features got an empty loader")
    return np.concatenate(features), np.concatenate(targets)


# --------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------


def per_class_quota(
    memory_size: int, nb_seen_classes: int, nb_total_classes: int, fixed: bool
) -> int:
    """Exemplars per class for a total budget of memory_size.

    Not fixed (default): the budget is shared by the classes seen so far, so
    old classes shrink as new ones arrive. Fixed: memory_size // total classes
    from the start, so the memory fills up over time.
    """
    divisor = nb_total_classes if fixed else nb_seen_classes
    if divisor <= 0:
        raise ValueError(
            f"need a positive number of classes, got seen={nb_seen_classes}, "
            f"total={nb_total_classes}"
        )
    return memory_size // divisor


class Memory:
    """Rehearsal memory of (x, y, t) numpy arrays, classes ascending, best exemplar first.

    x holds images (any shape/dtype) or file paths; y class labels; t task ids.
    After each update (`trim(q)` then `add(...)` of exemplars selected with the
    same quota q), every class holds min(q, its size) exemplars: the memory is
    class-balanced whenever classes have at least q samples, which is what the
    balanced finetuning relies on.
    """

    def __init__(self) -> None:
        self._x: np.ndarray | None = None
        self._y = np.empty(0, dtype=np.int64)
        self._t = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._y)

    def classes(self) -> list[int]:
        """The classes present, ascending."""
        return [int(c) for c in np.unique(self._y)]

    def counts_per_class(self) -> dict[int, int]:
        """Number of exemplars of each class present."""
        values, counts = np.unique(self._y, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}

    def add(self, x: np.ndarray, y: np.ndarray, t: np.ndarray, indices: np.ndarray) -> None:
        """Store x[indices], y[indices], t[indices], exemplars of classes not yet in memory.

        indices come from `select_exemplars`; their order within a class is kept.
        """
        indices = np.asarray(indices, dtype=np.int64)
        new_x, new_y, new_t = np.asarray(x)[indices], np.asarray(y)[indices], np.asarray(t)[indices]
        already = sorted(set(np.unique(new_y).tolist()) & set(self.classes()))
        if already:
            raise ValueError(f"classes {already} are already in memory; trim or add new classes")
        all_x = new_x if self._x is None else np.concatenate([self._x, new_x])
        all_y = np.concatenate([self._y, new_y.astype(np.int64)])
        all_t = np.concatenate([self._t, new_t.astype(np.int64)])
        order = np.argsort(all_y, kind="stable")  # class ascending, selection order kept
        self._x, self._y, self._t = all_x[order], all_y[order], all_t[order]

    def trim(self, nb_per_class: int, modes: int = 1) -> None:
        """Keep the first nb_per_class exemplars of each class (the best ones). ``modes`` 2: a class holds two
        selections one after the other, and the first nb_per_class // 2 of each half are kept, as published."""
        if nb_per_class < 0:
            raise ValueError(f"nb_per_class must be >= 0, got {nb_per_class}")
        if modes not in (1, 2):
            raise ValueError(f"modes must be 1 or 2, got {modes}")
        if self._x is None:
            return
        keep = np.concatenate(
            [self._kept_of_class(np.where(self._y == c)[0], nb_per_class, modes) for c in self.classes()]
            or [np.empty(0, dtype=np.int64)]
        )
        self._x, self._y, self._t = self._x[keep], self._y[keep], self._t[keep]

    @staticmethod
    def _kept_of_class(indices: np.ndarray, nb_per_class: int, modes: int) -> np.ndarray:
        if modes == 1:
            return indices[:nb_per_class]
        half = len(indices) // 2
        return np.concatenate([indices[:half][: nb_per_class // 2], indices[half:][: nb_per_class // 2]])

    def fingerprint(self) -> str:
        """A short digest of the contents, to compare memories across processes or runs."""
        digest = hashlib.sha1()
        for array in self.get():
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]

    def get(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, t) in memory order; an empty memory gives three empty arrays."""
        x = np.empty(0) if self._x is None else self._x
        return x, self._y, self._t

    @classmethod
    def union(cls, memories: list[Memory]) -> Memory:
        """Every exemplar of ``memories`` (the processes' own memories of a run): classes ascending, within a
        class the memories' order."""
        held = [memory.get() for memory in memories if len(memory)]
        union = cls()
        if held:
            x, y, t = (np.concatenate(parts) for parts in zip(*held, strict=True))
            order = np.argsort(y, kind="stable")
            union.load_state_dict({"x": x[order], "y": y[order], "t": t[order]})
        return union

    def state_dict(self) -> dict[str, np.ndarray | None]:
        """Plain numpy arrays (x is None before the first add).

        Note: torch.load(weights_only=True) rejects numpy arrays; save this with
        np.savez (numeric or fixed-width string x load with allow_pickle=False)
        or convert to tensors in the checkpoint code.
        """
        return {"x": self._x, "y": self._y.copy(), "t": self._t.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict` output."""
        x = None if state["x"] is None else np.asarray(state["x"])
        y = np.asarray(state["y"], dtype=np.int64)
        t = np.asarray(state["t"], dtype=np.int64)
        if len(t) != len(y) or (x is not None and len(x) != len(y)):
            raise ValueError("memory state has arrays of different lengths")
        if x is None and len(y):
            raise ValueError("memory state has labels but no x")
        self._x, self._y, self._t = x, y, t
