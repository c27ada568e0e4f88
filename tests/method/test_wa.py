"""Weight aligning (--method wa): its factor, loss and constraint on hand-computed numbers, and its hooks on the
demo's data with the baseline's network."""
from __future__ import annotations

import math

import pytest
import torch
from support import method_on

from conftest import REPO_ROOT
from continual.config import ConfigError, parse_config
from continual.config.validate import check_runnable
from continual.method.learner import TeacherOutput
from continual.method.wa import AlignedDistillation, WeightAligning, aligning_factor, classifier, soft_distillation
from continual.model.base import ContinualModel
from continual.model.dytox import DyToxOutput

FILES = [str(REPO_ROOT / f"options/{name}.yaml") for name in ("data/digits_demo", "model/demo_tiny", "model/baseline")]


def test_the_aligning_factor_is_the_old_rows_mean_norm_over_the_new_rows() -> None:
    weight = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0]])  # norms 5 | 1, 2
    assert aligning_factor(weight, 1) == pytest.approx(5 / 1.5)


def test_the_loss_weighs_cross_entropy_and_distillation_by_the_share_of_old_classes() -> None:
    logits = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0]])  # uniform over the 2 old classes
    distillation = soft_distillation(logits, teacher, tau=2.0)
    # -(1/2) log softmax([0.5, 0]) summed over the two old classes
    expected = -0.5 * (0.5 - math.log(math.exp(0.5) + 1)) - 0.5 * (0 - math.log(math.exp(0.5) + 1))
    assert float(distillation) == pytest.approx(expected)
    out = DyToxOutput(logits, None, torch.zeros(1, 1, 2))
    terms = AlignedDistillation(2.0)(out, TeacherOutput(teacher), torch.tensor([3]))
    cross_entropy = math.log(math.exp(1) + 3)  # the true class 3 has logit 0
    assert float(terms.classification) == pytest.approx(0.5 * cross_entropy)  # lambda = 2 old / 4 seen
    assert float(terms.total) == pytest.approx(0.5 * cross_entropy + 0.5 * expected)
    first_task = AlignedDistillation(2.0)(out, None, torch.tensor([3]))
    assert first_task.kd is None and float(first_task.total) == pytest.approx(cross_entropy)


def demo_wa() -> tuple[WeightAligning, ContinualModel]:
    learner, model = method_on(["--options", *FILES, "--method", "wa"])
    assert isinstance(learner, WeightAligning)
    return learner, model


def test_a_task_distils_its_teacher_then_aligns_the_new_rows_and_every_step_clips_the_weights() -> None:
    learner, model = demo_wa()
    assert learner.begin_task(model, 0) is None
    teacher = learner.begin_task(model, 1)
    assert teacher is not None and teacher.nb_classes == 2 and model.nb_classes == 4
    weight = classifier(model).weight
    with torch.no_grad():
        weight[:2] = torch.tensor([[3.0, 4.0] + [0.0] * (weight.shape[1] - 2)] * 2)  # norm 5
        weight[2:] = torch.full_like(weight[2:], -1.0)
    learner.step_constraint(model)()  # after an optimiser step: non-negative
    assert float(weight.detach().min()) == 0.0
    with torch.no_grad():
        weight[2:] = 0.0
        weight[2:, 0] = torch.tensor([1.0, 3.0])  # norms 1 and 3
    learner.end_training(model, 1)
    torch.testing.assert_close(weight[2:].norm(dim=1), torch.tensor([2.5, 7.5]))  # gamma = 5 / 2
    torch.testing.assert_close(weight[:2].norm(dim=1), torch.tensor([5.0, 5.0]))


def test_wa_on_dytox_s_network_is_refused_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match="--method wa aligns the rows of one growing classifier: give --no-dytox"):
        check_runnable(parse_config(["--options", *FILES[:2], "--method", "wa"]))
