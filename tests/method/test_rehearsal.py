"""Tests of exemplar selection, feature extraction and the rehearsal memory."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import shared_path
from continual.method.rehearsal import (
    FEATURE_KIND,
    Memory,
    closest_to_mean,
    extract_features,
    feature_kind,
    furthest_from_mean,
    icarl_selection,
    per_class_quota,
    random_selection,
    select_exemplars,
)

METHODS = [
    "random", "closest_all", "closest_token", "furthest_all",
    "furthest_token", "icarl_all", "icarl_token",
]

# Mean (1, 0.1); squared distances: p0 1.01, p1 9.01, p2 1.81, p3 0.01, p4 1.36.
POINTS = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, -0.5]])


# ----------------------------------------------------- per-class selection


def test_closest_to_mean_order() -> None:
    assert closest_to_mean(POINTS, 3).tolist() == [3, 0, 4]
    assert closest_to_mean(POINTS, 10).tolist() == [3, 0, 4, 2, 1]


def test_furthest_from_mean_order() -> None:
    assert furthest_from_mean(POINTS, 3).tolist() == [1, 2, 4]


def test_icarl_hand_computed_case_with_repeated_picks() -> None:
    """Normalised: x0 (1,0), x1 (0,1), x2 (.8,.6), x3 (.7071,.7071); mu = (.6268, .5768).

    w.x per iteration (w <- w + mu - x_pick), argmax in brackets:
      1: .627 .577 .847 [.851] -> x3       2: .546 .446 [.705] .702 -> x2
      3: .373 .423 .553 [.563] -> x3 again 4: .293 .293 .410 [.414] -> x3 again
      5: .213 .163 [.268] .265 -> x2 again 6: .039 [.139] .115 .126 -> x1
    """
    features = np.array([[2.0, 0.0], [0.0, 3.0], [4.0, 3.0], [1.0, 1.0]])
    assert icarl_selection(features, 3).tolist() == [3, 2, 1]
    assert icarl_selection(features, 1).tolist() == [3]
    assert sorted(icarl_selection(features, 10).tolist()) == [0, 1, 2, 3]


def test_icarl_stops_after_1000_iterations_and_ranks_unpicked_last() -> None:
    # Identical samples: argmax always returns sample 0, so only one distinct pick.
    features = np.ones((5, 3))
    assert icarl_selection(features, 3).tolist() == [0, 1, 2]


def test_random_selection_without_duplicates_and_seeded() -> None:
    picks = random_selection(20, 15, np.random.default_rng(3))
    assert len(set(picks.tolist())) == 15 and picks.min() >= 0 and picks.max() < 20
    again = random_selection(20, 15, np.random.default_rng(3))
    assert picks.tolist() == again.tolist()
    assert sorted(random_selection(4, 10, np.random.default_rng(0)).tolist()) == [0, 1, 2, 3]


# ------------------------------------------------------ select_exemplars


def test_select_exemplars_class_by_class_global_indices() -> None:
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    # class 0 at 1,3,5,7,9 and class 1 at 0,2,4,6,8, both with POINTS as features
    features = np.zeros((10, 2))
    features[1::2] = POINTS
    features[0::2] = POINTS
    chosen = select_exemplars(y, features, 2, "closest_all", np.random.default_rng(0))
    # local [3, 0] -> class 0 global [7, 1], class 1 global [6, 0]
    assert chosen.tolist() == [7, 1, 6, 0]


def test_select_exemplars_random_balanced_and_distinct() -> None:
    y = np.repeat(np.arange(3), 8)
    chosen = select_exemplars(y, None, 5, "random", np.random.default_rng(1))
    assert len(set(chosen.tolist())) == 15
    assert np.bincount(y[chosen]).tolist() == [5, 5, 5]
    assert y[chosen].tolist() == sorted(y[chosen].tolist())


def test_select_exemplars_unknown_method_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="icarl_all"):
        select_exemplars(np.zeros(3, dtype=int), np.zeros((3, 2)), 1, "icarl", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown"):
        feature_kind("herding")


def test_select_exemplars_feature_methods_require_features() -> None:
    with pytest.raises(ValueError, match="needs features"):
        select_exemplars(np.zeros(3, dtype=int), None, 1, "icarl_all", np.random.default_rng(0))


def test_feature_kind_table() -> None:
    assert sorted(FEATURE_KIND) == sorted(METHODS)
    assert feature_kind("random") is None
    assert feature_kind("icarl_all") == "all"
    assert feature_kind("closest_token") == "token"


# ----------------------------------------------------- reference fixture


@pytest.fixture(scope="module")
def herding_case() -> dict:
    return torch.load(shared_path("fixtures/reference_dytox/herding_case.pt"), weights_only=True)


@pytest.mark.parametrize(
    ("function", "key"),
    [(icarl_selection, "icarl"), (closest_to_mean, "closest"), (furthest_from_mean, "furthest")],
)
def test_reference_herding_per_class(herding_case: dict, function, key: str) -> None:
    features = herding_case["features"].numpy()
    n = herding_case["nb_exemplars"]
    for row, class_indexes in enumerate(herding_case["class_indexes"].numpy()):
        local = function(features[class_indexes], n)
        assert local.tolist() == herding_case[f"{key}_local"][row].tolist()
        assert class_indexes[local].tolist() == herding_case[f"{key}_global"][row].tolist()


@pytest.mark.parametrize(
    ("method", "key"),
    [
        ("icarl_all", "icarl"), ("icarl_token", "icarl"),
        ("closest_all", "closest"), ("furthest_token", "furthest"),
    ],
)
def test_reference_herding_select_exemplars(herding_case: dict, method: str, key: str) -> None:
    labels = herding_case["labels"].numpy()
    assert herding_case["class_indexes"].tolist() == [
        np.where(labels == c)[0].tolist() for c in np.unique(labels)
    ]
    chosen = select_exemplars(
        labels, herding_case["features"].numpy(), herding_case["nb_exemplars"],
        method, np.random.default_rng(0),
    )
    assert chosen.tolist() == herding_case[f"{key}_global"].reshape(-1).tolist()


# ------------------------------------------------------ feature extraction


class _FakeDyTox(nn.Module):
    """Two task embeddings per sample: e_0 = x, e_1 = 10 x (T=2, B, D=3)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.seen_modes: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        self.seen_modes.append((self.training, torch.is_inference_mode_enabled()))
        embeddings = torch.stack([x * self.scale, 10 * x * self.scale])  # (2, B, 3)
        return SimpleNamespace(task_embeddings=embeddings, logits=x)


def _loader() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    x = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    y = torch.tensor([4, 3, 4, 3, 2])
    t = torch.zeros(5, dtype=torch.long)
    return [(x[:3], y[:3], t[:3]), (x[3:], y[3:], t[3:])]


def test_extract_features_all_concatenates_tasks_in_order() -> None:
    model = _FakeDyTox().train()
    features, targets = extract_features(model, _loader(), "all", "cpu")
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    assert features.shape == (5, 6) and features.dtype == np.float32
    np.testing.assert_array_equal(features, np.concatenate([x, 10 * x], axis=1))
    assert targets.tolist() == [4, 3, 4, 3, 2]
    assert model.seen_modes == [(False, True), (False, True)]
    assert model.training


def test_extract_features_token_is_last_task_and_eval_mode_restored() -> None:
    model = _FakeDyTox().eval()
    features, _ = extract_features(model, _loader(), "token", "cpu")
    assert features.shape == (5, 3)
    np.testing.assert_array_equal(features, 10 * np.arange(15, dtype=np.float32).reshape(5, 3))
    assert not model.training


def test_extract_features_unknown_kind() -> None:
    with pytest.raises(ValueError, match="token"):
        extract_features(_FakeDyTox(), _loader(), "last", "cpu")


# ------------------------------------------------------------------ memory


def test_per_class_quota_fixed_and_not_fixed() -> None:
    assert per_class_quota(2000, 10, 100, fixed=False) == 200
    assert per_class_quota(2000, 30, 100, fixed=False) == 66
    assert per_class_quota(2000, 10, 100, fixed=True) == 20
    assert per_class_quota(2000, 50, 100, fixed=True) == 20
    with pytest.raises(ValueError):
        per_class_quota(2000, 0, 100, fixed=False)


def _task(task_id: int, classes: list[int], per_class: int) -> tuple[np.ndarray, ...]:
    """Task data whose x encodes (class, sample) so memory contents are checkable."""
    y = np.repeat(np.array(classes), per_class)
    x = y * 100 + np.tile(np.arange(per_class), len(classes))
    t = np.full_like(y, task_id)
    return x, y, t


def _update(memory: Memory, task: tuple[np.ndarray, ...], seen: int, size: int) -> np.ndarray:
    """The task loop's memory phase: quota, selection, trim old, add new."""
    x, y, t = task
    quota = per_class_quota(size, seen, 100, fixed=False)
    features = np.stack([x, x % 7], axis=1).astype(np.float32)
    chosen = select_exemplars(y, features, quota, "icarl_all", np.random.default_rng(0))
    memory.trim(quota)
    memory.add(x, y, t, chosen)
    return chosen


def test_memory_stays_balanced_and_within_budget() -> None:
    memory, size = Memory(), 12
    first = _update(memory, _task(0, [0, 1], 10), seen=2, size=size)
    assert memory.counts_per_class() == {0: 6, 1: 6}
    best_class0 = _task(0, [0, 1], 10)[0][first[:6]]
    for task_id, seen in ((1, 4), (2, 6)):
        _update(memory, _task(task_id, [2 * task_id, 2 * task_id + 1], 10), seen=seen, size=size)
        counts = memory.counts_per_class()
        assert len(memory) <= size
        assert set(counts.values()) == {size // seen}
        assert memory.classes() == list(range(seen))
    x, y, t = memory.get()
    assert y.tolist() == sorted(y.tolist())
    assert x[y == 0].tolist() == best_class0[:2].tolist()  # trimming keeps herding order
    assert t.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_memory_orders_classes_ascending() -> None:
    memory = Memory()
    x, y, t = _task(1, [5, 6], 3)
    memory.add(x, y, t, np.array([5, 0, 1]))  # class 6 then class 5
    x, y, t = _task(0, [2], 3)
    memory.add(x, y, t, np.array([2, 0]))
    x_mem, y_mem, _ = memory.get()
    assert y_mem.tolist() == [2, 2, 5, 5, 6]
    assert x_mem.tolist() == [202, 200, 500, 501, 602]


def test_memory_rejects_classes_already_present() -> None:
    memory = Memory()
    x, y, t = _task(0, [0, 1], 4)
    memory.add(x, y, t, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"\[0\]"):
        memory.add(x, y, t, np.array([2]))


def test_memory_holds_file_paths() -> None:
    memory = Memory()
    paths = np.array([f"img_{i}.jpg" for i in range(4)])
    memory.add(paths, np.array([0, 0, 1, 1]), np.zeros(4, dtype=int), np.array([1, 3]))
    assert memory.get()[0].tolist() == ["img_1.jpg", "img_3.jpg"]


def test_empty_memory() -> None:
    memory = Memory()
    memory.trim(3)
    x, y, t = memory.get()
    assert len(memory) == 0 and len(x) == len(y) == len(t) == 0
    assert memory.counts_per_class() == {}


def test_memory_state_dict_round_trip() -> None:
    memory = Memory()
    images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    memory.add(images, np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 0, 0, 1, 1]), np.array([1, 2, 5]))
    restored = Memory()
    restored.load_state_dict(memory.state_dict())
    for ours, theirs in zip(memory.get(), restored.get(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # the documented checkpoint path: np.savez, loaded without pickle
    buffer = io.BytesIO()
    np.savez(buffer, **memory.state_dict())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as archive:
        from_disk = Memory()
        from_disk.load_state_dict(dict(archive))
    np.testing.assert_array_equal(from_disk.get()[0], images[[1, 2, 5]])
    assert from_disk.counts_per_class() == {0: 1, 1: 1, 2: 1}
