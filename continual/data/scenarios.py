"""Class-incremental scenarios (continuum `ClassIncremental`) and rehearsal task sets.

`build_scenarios(settings)` gives a train and a test scenario with the same class
order and increments. continuum remaps labels through `class_order`: the task
sets yield labels 0..C-1 in *class-order* position (class_order[0] -> 0), and
`scenario.get_original_targets(y)` maps them back. Memory samples must carry
these remapped labels, as the task sets give them. Task ids `t` come out of
continuum as float64; they are task indices all the same.

Continuum calls the task loop should use (all public, checked with continuum
1.2.7 under numpy 2 in tests/data/test_scenarios.py):

(a) train TaskSet of task t: `train_scenario[t]` (or `for t, taskset in
    enumerate(train_scenario)`); `taskset.get_classes()` lists its labels,
    `taskset.get_raw_samples()` returns its untransformed `(x, y, t)` arrays
    (for herding: select indices, then `taskset.get_raw_samples(indices)`).
(b) add memory `(x, y, t)` to it: `taskset_with_memory(taskset, x, y, t)`,
    a new TaskSet built with `TaskSet(...)` + `add_samples(x, y, t)`, leaving
    the scenario's task set untouched.
(c) test set of all classes seen up to t: `test_scenario[: t + 1]` (one
    TaskSet over tasks 0..t; `continuum.tasks.concat([...])` also concatenates
    task sets, keeping the first one's transform).
(d) TaskSet of the memory alone, with the train transform (balanced
    finetuning): `memory_taskset(train_scenario, x, y, t)`.

TaskSets are torch Datasets: `taskset[i]` is `(image (3, H, W) float tensor,
label, task id)`, ready for a `DataLoader`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from continuum import ClassIncremental
from continuum.datasets import InMemoryDataset
from continuum.tasks import BaseTaskSet, split_train_val

from continual.config.errors import ConfigError
from continual.config.settings import DataSettings
from continual.data.datasets import build_dataset
from continual.data.images import decoding, image_taskset
from continual.data.transforms import build_transform


def task_increments(num_classes: int, initial_increment: int, increment: int) -> list[int]:
    """Classes per task, with continuum's semantics (initial_increment 0 = all equal).

    Raises a ConfigError naming the options when they do not split the classes
    exactly (continuum would raise a bare Exception, or build a shorter run).
    """
    if isinstance(increment, bool) or not isinstance(increment, int) or increment <= 0:
        raise ConfigError(f"increment must be a positive integer, got {increment!r}")
    if isinstance(initial_increment, bool) or not isinstance(initial_increment, int) \
            or not 0 <= initial_increment <= num_classes:
        raise ConfigError(f"initial_increment must be an integer in [0, {num_classes}] "
                         f"(0 = same as increment), got {initial_increment!r}")
    remaining = num_classes - initial_increment
    if remaining % increment:
        raise ConfigError(
            f"initial_increment={initial_increment} and increment={increment} do not split "
            f"the {num_classes} classes into whole tasks ({remaining} classes after the "
            f"first task are not a multiple of {increment})")
    first = [initial_increment] if initial_increment else []
    return first + [increment] * (remaining // increment)


def _dataset_classes(dataset: InMemoryDataset) -> np.ndarray:
    """Sorted class ids of a dataset, which must be exactly 0..C-1.

    continuum indexes `argsort(class_order)` by label, so gaps in the ids
    would mislabel samples instead of failing.
    """
    _, y, _ = dataset.get_data()
    classes = np.unique(y)
    if not np.array_equal(classes, np.arange(len(classes))):
        raise ValueError("dataset labels must be 0..C-1 without gaps, "
                         f"found {classes.tolist()[:20]}")
    return classes


def validate_class_order(class_order: Sequence[int] | None, num_classes: int) -> list[int]:
    """`class_order` as a list; None is the identity order.

    The configuration already checked that it is a permutation (continual.config.validate); here
    only the dataset can tell whether it lists each of its classes.
    """
    if class_order is None:
        return list(range(num_classes))
    if any(isinstance(c, (list, tuple, np.ndarray)) for c in class_order):
        raise ConfigError("class_order must be one order (a list of class ids), got a list of "
                          "orders: select the order of this run first")
    order = [int(c) for c in class_order]
    expected = set(range(num_classes))
    duplicates = sorted(c for c, count in Counter(order).items() if count > 1)
    missing = sorted(expected - set(order))
    unknown = sorted(set(order) - expected)
    if duplicates or missing or unknown:
        raise ConfigError(
            f"option 'class_order' must be a permutation of the dataset's {num_classes} classes "
            f"0..{num_classes - 1}: duplicated {duplicates[:10]}, missing {missing[:10]}, "
            f"unknown {unknown[:10]} (length {len(order)})")
    return order


class DecodingClassIncremental(ClassIncremental):
    """continuum's class-incremental scenario whose task sets of image paths read each file with
    ``continual.data.images.read_rgb`` (any image mode as RGB, an error naming a file that cannot be decoded)."""

    def __getitem__(self, task_index: int | slice) -> BaseTaskSet:
        return decoding(super().__getitem__(task_index))


def build_scenario(
    dataset: InMemoryDataset,
    *,
    initial_increment: int,
    increment: int,
    class_order: Sequence[int] | None,
    transform: Callable,
) -> ClassIncremental:
    """Class-incremental scenario over `dataset`, validated before continuum sees it."""
    classes = _dataset_classes(dataset)
    order = validate_class_order(class_order, len(classes))
    task_increments(len(classes), initial_increment, increment)
    return DecodingClassIncremental(
        dataset,
        increment=increment,
        initial_increment=initial_increment,
        transformations=[transform],
        class_order=order,
    )


@dataclass(frozen=True)
class Scenarios:
    """The train and test scenarios of a run: the same class order and increments.

    With ``validation`` > 0 (``--validation``, as published) each task trains on a
    fixed split of its training images (continuum's ``split_train_val``, seeded) and
    the evaluation after task t is on the held-out images of tasks 0..t, with the
    training transform as published (``validation_test_transform``: the test one).
    The memory still draws from all of a task's training images, as published.
    """

    train: ClassIncremental
    test: ClassIncremental
    validation: float = 0.0
    validation_test_transform: bool = False

    def training_set(self, task_id: int) -> BaseTaskSet:
        if not self.validation:
            return self.train[task_id]
        return decoding(split_train_val(self.train[task_id], self.validation)[0])

    def evaluation_set(self, task_id: int) -> BaseTaskSet:
        """The images of the classes seen after ``task_id``: test images, or the held-out ones."""
        if not self.validation:
            return self.test[: task_id + 1]
        parts = [split_train_val(self.train[i], self.validation)[1].get_raw_samples() for i in range(task_id + 1)]
        x, y, t = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
        transform = self.test[0].trsf if self.validation_test_transform else self.train[0].trsf
        return image_taskset(x, y, t, trsf=transform, data_type=self.train[0].data_type)

    @property
    def classes_per_task(self) -> list[int]:
        return [int(n) for n in self.train.increments]

    def classes_seen(self, task_id: int) -> int:
        """Number of classes of tasks 0..task_id."""
        return sum(self.classes_per_task[: task_id + 1])


def build_scenarios(settings: DataSettings) -> tuple[ClassIncremental, ClassIncremental]:
    """Train and test scenarios of `settings.data_set`, same class order and increments."""
    scenarios = []
    for train in (True, False):
        dataset = build_dataset(settings.data_set, settings.data_path, train,
                                train_per_class=settings.train_per_class if train else 0,
                                input_size=settings.input_size)
        transform = build_transform(
            settings.data_set, settings.input_size, train, color_jitter=settings.color_jitter, aa=settings.aa,
            interpolation=settings.train_interpolation, reprob=settings.reprob, remode=settings.remode,
            recount=settings.recount, mean=settings.mean, std=settings.std)
        scenarios.append(build_scenario(
            dataset, initial_increment=settings.initial_increment, increment=settings.increment,
            class_order=settings.class_order, transform=transform))
    return scenarios[0], scenarios[1]


def load_scenarios(settings: DataSettings) -> Scenarios:
    return Scenarios(*build_scenarios(settings), settings.validation, settings.validation_test_transform)


def _check_memory(x: np.ndarray, y: np.ndarray, t: np.ndarray, like: np.ndarray) -> None:
    """Memory arrays must be aligned and hold samples of the same kind as `like`."""
    if not len(x) == len(y) == len(t):
        raise ValueError(f"memory x, y, t have different lengths: {len(x)}, {len(y)}, {len(t)}")
    if x.shape[1:] != like.shape[1:]:
        raise ValueError(f"memory samples have shape {x.shape[1:]}, the task set's "
                         f"{like.shape[1:]}")


def taskset_with_memory(taskset: BaseTaskSet, x: np.ndarray, y: np.ndarray,
                        t: np.ndarray) -> BaseTaskSet:
    """New TaskSet = `taskset`'s samples + memory `(x, y, t)`, with `taskset`'s transform.

    `add_samples` mutates in place; working on a copy keeps `scenario[t]`
    and the caller's task set reusable (e.g. for herding on new data only).
    """
    x_task, y_task, t_task = taskset.get_raw_samples()
    _check_memory(x, y, t, x_task)
    combined = image_taskset(x_task, y_task, t_task, trsf=taskset.trsf, data_type=taskset.data_type)
    combined.add_samples(x, y, t)
    return combined


def memory_taskset(train_scenario: ClassIncremental, x: np.ndarray, y: np.ndarray,
                   t: np.ndarray) -> BaseTaskSet:
    """TaskSet of the memory alone, with the train scenario's transform (finetuning)."""
    if len(x) == 0:
        raise ValueError("memory_taskset needs a non-empty memory")
    _check_memory(x, y, t, train_scenario.cl_dataset.get_data()[0])
    return image_taskset(np.asarray(x), np.asarray(y), np.asarray(t), trsf=train_scenario.trsf,
                         data_type=train_scenario.cl_dataset.data_type)
