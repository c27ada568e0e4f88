"""Scenarios: class orders and increments, a run's task sets, memory task sets (offline, synthetic CIFAR-100)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from continuum.tasks import concat
from torchvision import transforms as T

from conftest import CIFAR_TEST_PER_CLASS, REPO_ROOT
from continual.config import parse_config, settings_from
from continual.data.scenarios import (
    Scenarios,
    build_scenario,
    build_scenarios,
    load_scenarios,
    memory_taskset,
    task_increments,
    taskset_with_memory,
)


def _cfg(data_set: str, data_path: Path | str, **overrides) -> SimpleNamespace:
    values = dict(data_set=data_set, data_path=str(data_path), train_per_class=0, input_size=32,
                  initial_increment=0, increment=10, class_order=None, color_jitter=0.4,
                  aa="rand-m9-mstd0.5-inc1", train_interpolation="bicubic", reprob=0.0,
                  remode="pixel", recount=1, mean=None, std=None)
    values.update(overrides)
    return SimpleNamespace(**values)


# ---------------------------------------------------------------------------
# CIFAR-100
# ---------------------------------------------------------------------------

def test_cifar_scenario_10_steps(cifar_root: Path) -> None:
    order = np.random.default_rng(1).permutation(100).tolist()
    train, test = build_scenarios(_cfg("cifar", cifar_root, class_order=order))
    assert len(train) == len(test) == 10
    task0 = train[0]
    assert task0.get_classes().tolist() == list(range(10))  # labels remapped by class order
    original = train.get_original_targets(task0.get_raw_samples()[1])
    assert sorted(set(original.tolist())) == sorted(order[:10])
    image, label, task = task0[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= int(label) < 10 and int(task) == 0
    seen = [len(test[: t + 1]) for t in range(len(test))]
    assert seen == [CIFAR_TEST_PER_CLASS * 10 * (t + 1) for t in range(10)]
    assert test[:3].get_classes().tolist() == list(range(30))
    assert len(concat([test[0], test[1]])) == seen[1]


# ---------------------------------------------------------------------------
# Scenario validation
# ---------------------------------------------------------------------------

def _toy_dataset(num_classes: int = 100, per_class: int = 1):
    from continuum.datasets import InMemoryDataset

    y = np.repeat(np.arange(num_classes), per_class)
    return InMemoryDataset(np.zeros((len(y), 4, 4, 3), np.uint8), y)


def test_increments_must_split_classes() -> None:
    assert task_increments(100, 0, 10) == [10] * 10
    assert task_increments(100, 50, 10) == [50] + [10] * 5
    with pytest.raises(ValueError, match="increment=30"):
        build_scenario(_toy_dataset(), initial_increment=0, increment=30, class_order=None,
                       transform=T.ToTensor())
    with pytest.raises(ValueError, match="initial_increment"):
        task_increments(100, 120, 10)
    with pytest.raises(ValueError, match="increment must be a positive"):
        task_increments(100, 0, 0)


@pytest.mark.parametrize("order", [list(range(99)), list(range(99)) + [5], list(range(1, 101)),
                                   [list(range(100)), list(range(100))]])
def test_class_order_must_be_a_permutation(order: list[int]) -> None:
    with pytest.raises(ValueError, match="class_order"):
        build_scenario(_toy_dataset(), initial_increment=0, increment=10, class_order=order,
                       transform=T.ToTensor())


def test_scenario_with_initial_increment() -> None:
    scenario = build_scenario(_toy_dataset(10, 2), initial_increment=4, increment=2,
                              class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0], transform=T.ToTensor())
    assert len(scenario) == 4 and scenario[0].get_classes().tolist() == [0, 1, 2, 3]
    assert scenario.get_original_targets(np.array([0, 9])).tolist() == [9, 0]


# ---------------------------------------------------------------------------
# Memory task sets
# ---------------------------------------------------------------------------

def test_memory_helpers(cifar_root: Path) -> None:
    train, _ = build_scenarios(_cfg("cifar", cifar_root, aa="none"))
    x_old, y_old, t_old = train[0].get_raw_samples(np.arange(0, 30, 3))  # 10 exemplars
    task1 = train[1]
    combined = taskset_with_memory(task1, x_old, y_old, t_old)
    assert len(combined) == len(task1) + 10 and len(task1) == 30  # input not mutated
    assert combined.get_classes().tolist() == list(range(20))
    image, label, _ = combined[len(combined) - 1]
    assert image.shape == (3, 32, 32) and int(label) == int(y_old[-1])

    memory = memory_taskset(train, x_old, y_old, t_old)
    assert len(memory) == 10 and memory.trsf is train.trsf
    assert np.array_equal(memory.get_raw_samples()[0], x_old)
    assert memory[0][0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="shape"):
        taskset_with_memory(task1, x_old[:, :16], y_old, t_old)
    with pytest.raises(ValueError, match="lengths"):
        memory_taskset(train, x_old, y_old[:3], t_old)


def demo_scenarios(*flags: str) -> Scenarios:
    options = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"),
               str(REPO_ROOT / "options/model/demo_tiny.yaml")]
    return load_scenarios(settings_from(parse_config(options + list(flags))).data)


def test_validation_holds_out_a_fixed_split_of_each_task_and_evaluates_on_it() -> None:
    plain, held = demo_scenarios(), demo_scenarios("--validation", "0.2")
    assert plain.training_set(1) is not None and len(plain.evaluation_set(1)) == len(plain.test[:2])
    for task in (0, 1):
        full = plain.train[task].get_raw_samples()
        train = held.training_set(task).get_raw_samples()
        assert len(train[0]) == len(full[0]) - int(0.2 * len(full[0]))
    evaluation = held.evaluation_set(1)
    x, y, _ = evaluation.get_raw_samples()
    expected = sum(int(0.2 * len(plain.train[task].get_raw_samples()[0])) for task in (0, 1))
    assert len(x) == expected and set(np.unique(y)) == {0, 1, 2, 3}
    trained = {image.tobytes() for task in (0, 1) for image in held.training_set(task).get_raw_samples()[0]}
    assert not any(image.tobytes() in trained for image in x)  # held out: never trained on
    np.testing.assert_array_equal(x, demo_scenarios("--validation", "0.2").evaluation_set(1).get_raw_samples()[0])
    assert evaluation.trsf is held.train[0].trsf  # the training augmentation, as published
    fixed = demo_scenarios("--validation", "0.2", "--validation-test-transform").evaluation_set(1)
    assert fixed.trsf is not held.train[0].trsf
