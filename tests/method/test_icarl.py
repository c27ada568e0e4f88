"""iCaRL (--method icarl): its loss and its nearest-mean-of-exemplars classifier on hand-computed numbers, the means
of several processes' exemplars, and its hooks on the demo's data with the baseline's network."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from support import method_on

from conftest import REPO_ROOT
from continual.config import ConfigError, parse_config
from continual.config.validate import check_runnable
from continual.method.icarl import ICaRL, IcarlLoss, NearestMeans, class_feature_sums, icarl_targets
from continual.method.learner import TeacherOutput
from continual.method.rehearsal import Memory
from continual.model.base import ContinualModel
from continual.model.dytox import DyToxOutput
from continual.runtime.distributed import DistContext

FILES = [str(REPO_ROOT / f"options/{name}.yaml") for name in ("data/digits_demo", "model/demo_tiny", "model/baseline")]
SOFTPLUS_1 = math.log(1 + math.e)  # -log sigmoid(-1) = -log(1 - sigmoid(1))


def test_the_old_columns_target_the_teacher_s_sigmoid_and_the_new_ones_the_label() -> None:
    teacher = torch.tensor([[2.0], [-1.0]])  # one old class
    targets = icarl_targets(torch.tensor([2, 0]), 3, teacher)
    sigmoid_2 = 1 / (1 + math.exp(-2))
    torch.testing.assert_close(targets, torch.tensor([[sigmoid_2, 0.0, 1.0], [1 / (1 + math.e), 0.0, 0.0]]))
    # an exemplar of the old class 0 keeps the teacher's output in column 0, not its label
    torch.testing.assert_close(icarl_targets(torch.tensor([2]), 3, None), torch.tensor([[0.0, 0.0, 1.0]]))
    mixed = torch.tensor([[0.3, 0.2, 0.8]])  # MixUp's soft targets: the new columns take them
    torch.testing.assert_close(icarl_targets(mixed, 3, teacher[:1]), torch.tensor([[sigmoid_2, 0.2, 0.8]]))


def test_the_loss_is_the_mean_binary_cross_entropy_split_into_the_new_and_the_old_columns() -> None:
    out = DyToxOutput(torch.tensor([[0.0, 1.0, -1.0]]), None, torch.zeros(1, 1, 2))
    terms = IcarlLoss()(out, TeacherOutput(torch.tensor([[2.0]])), torch.tensor([2]))
    # logit 0 against sigmoid(2): -(s log 1/2 + (1 - s) log 1/2) = log 2, whatever s; logit 1 against 0 and
    # logit -1 against 1: log(1 + e) each; all divided by the 3 elements
    assert float(terms.kd) == pytest.approx(math.log(2) / 3)
    assert float(terms.classification) == pytest.approx(2 * SOFTPLUS_1 / 3)
    first_task = IcarlLoss()(out, None, torch.tensor([2]))  # no teacher: the label in every column
    assert first_task.kd is None
    assert float(first_task.total) == pytest.approx((math.log(2) + 2 * SOFTPLUS_1) / 3)


EXEMPLARS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, -3.0]])  # class 0, class 0, class 1; class 2 has none
LABELS = torch.tensor([0, 0, 1])


def test_the_nearest_mean_of_normalised_exemplars_classifies_and_a_class_without_exemplars_scores_minus_inf() -> None:
    sums, counts = class_feature_sums(EXEMPLARS, LABELS, 3)
    torch.testing.assert_close(sums, torch.tensor([[1.0, 1.0], [0.0, -1.0], [0.0, 0.0]], dtype=torch.float64))
    nearest = NearestMeans.from_sums(sums, counts)
    half = math.sqrt(0.5)  # class 0: the mean of (1, 0) and (0, 1) normalised, not of the raw (2, 0) and (0, 1)
    torch.testing.assert_close(nearest.means[:2], torch.tensor([[half, half], [0.0, -1.0]]))
    assert nearest.present.tolist() == [True, True, False]
    scores = nearest.scores(torch.tensor([[5.0, 5.0], [3.0, -4.0]]))
    # squared distance of unit vectors: 2 - 2 cos; (3, -4) / 5 has cos -0.2 half with class 0 and 0.8 with class 1
    expected = [[0.0, -math.sqrt(2 + 2 * half)], [-math.sqrt(2 + 0.4 * half), -math.sqrt(0.4)]]
    torch.testing.assert_close(scores[:, :2], torch.tensor(expected))
    assert scores[:, 2].tolist() == [-math.inf, -math.inf] and scores.argmax(dim=1).tolist() == [0, 1]
    no_memory = NearestMeans.from_sums(torch.zeros(3, 0, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert no_memory.scores(torch.ones(2, 4)).tolist() == [[-math.inf] * 3] * 2


def test_the_sums_of_several_processes_give_the_means_of_the_union_of_their_exemplars() -> None:
    union = NearestMeans.from_sums(*class_feature_sums(EXEMPLARS, LABELS, 3))
    first = class_feature_sums(EXEMPLARS[:1], LABELS[:1], 3)  # a process with one exemplar of class 0
    second = class_feature_sums(EXEMPLARS[1:], LABELS[1:], 3)
    combined = NearestMeans.from_sums(first[0] + second[0], first[1] + second[1])  # what all_reduce_sum adds
    torch.testing.assert_close(combined.means, union.means)
    assert combined.present.tolist() == union.present.tolist()
    alone = NearestMeans.from_sums(*first)
    torch.testing.assert_close(alone.means[0], torch.tensor([1.0, 0.0]))  # not the union's


def test_the_saved_memories_of_the_processes_unite_class_by_class() -> None:
    memories = [Memory(), Memory()]
    memories[0].add(np.array([10, 11, 12]), np.array([0, 1, 1]), np.zeros(3), np.arange(3))
    memories[1].add(np.array([20, 21]), np.array([0, 1]), np.zeros(2), np.arange(2))
    x, y, _ = Memory.union([*memories, Memory()]).get()
    assert x.tolist() == [10, 20, 11, 12, 21] and y.tolist() == [0, 0, 1, 1, 1]


def test_with_global_memory_a_process_adds_its_share_of_the_exemplars_and_otherwise_all_of_its_own() -> None:
    learner, _ = method_on(["--options", *FILES, "--method", "icarl", "--global-memory"])
    assert isinstance(learner, ICaRL)
    learner.memory.add(np.arange(5), np.array([0, 0, 1, 1, 1]), np.zeros(5), np.arange(5))
    second = dataclasses.replace(learner, ctx=DistContext(1, 2, 1, torch.device("cpu")))  # rank 1 of 2
    assert second.memory_mode == "global" and second._own_exemplars()[0].tolist() == [1, 3]
    memory = dataclasses.replace(learner.settings.memory, global_memory=False, distributed_memory=True)
    own = dataclasses.replace(second, settings=dataclasses.replace(learner.settings, memory=memory))
    assert own.memory_mode == "distributed" and own._own_exemplars()[0].tolist() == [0, 1, 2, 3, 4]


def demo_icarl() -> tuple[ICaRL, ContinualModel]:
    learner, model = method_on(["--options", *FILES, "--method", "icarl", "--train-per-class", "16"])
    assert isinstance(learner, ICaRL)
    return learner, model


def test_a_task_distils_a_frozen_teacher_and_the_means_cover_the_classes_in_memory() -> None:
    learner, model = demo_icarl()
    assert learner.begin_task(model, 0) is None
    learner.update_memory(model, 0, 5)
    assert learner.memory.counts_per_class() == {0: 5, 1: 5}
    teacher = learner.begin_task(model, 1)
    assert teacher is not None and teacher.nb_classes == 2 and model.nb_classes == 4
    assert all(p.requires_grad for p in model.parameters()) and not any(p.requires_grad for p in teacher.parameters())
    images = torch.stack([learner.scenarios.test[0][i][0] for i in range(3)])
    with pytest.raises(RuntimeError, match="prepare_evaluation must run first"):
        learner.predict(model, images)
    learner.prepare_evaluation(model, 1)  # during task 1 (--eval-every): its classes have no exemplar yet
    with torch.no_grad():
        scores = learner.predict(model, images)
        head = learner.other_predictions(model)["head"](model, images)
    assert scores.shape == head.shape == (3, 4)
    assert torch.isfinite(scores[:, :2]).all() and torch.isinf(scores[:, 2:]).all()
    assert float(scores[:, :2].max()) <= 0.0 and float(scores[:, :2].min()) >= -2.0  # distances of unit vectors


def test_icarl_on_dytox_s_network_is_refused_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match="--method icarl classifies by the nearest mean .*: give --no-dytox"):
        check_runnable(parse_config(["--options", *FILES[:2], "--method", "icarl"]))
