"""Experience replay (--method er), the worked example of docs/extending.md: its hooks on the demo's
settings and data, and its loss on hand-computed numbers."""
from __future__ import annotations

import math

import pytest
import torch
from support import method_on

from conftest import REPO_ROOT
from continual.config.options import OPTIONS
from continual.method.er import CrossEntropy, ExperienceReplay
from continual.method.registry import METHODS
from continual.model.base import ContinualModel
from continual.model.dytox import DyToxOutput

DEMO = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"), str(REPO_ROOT / "options/model/demo_tiny.yaml"),
        "--method", "er"]


def demo_replay(*flags: str) -> tuple[ExperienceReplay, ContinualModel]:
    learner, model = method_on(DEMO + list(flags))
    assert isinstance(learner, ExperienceReplay)
    return learner, model


def test_the_loss_is_cross_entropy_over_the_seen_classes() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = DyToxOutput(logits, None, torch.zeros(1, 2, 4))
    terms = CrossEntropy()(out, None, torch.tensor([0, 2]))
    expected = (math.log(1 + 2 * math.exp(-2)) + math.log(2 + math.e)) / 2  # -log softmax, averaged
    assert terms.to_floats() == {"classification": pytest.approx(expected), "total": pytest.approx(expected)}
    soft = CrossEntropy()(out, None, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))  # MixUp's targets
    assert float(soft.total) == pytest.approx(expected)
    assert not CrossEntropy().wants_teacher_maps(True)


def test_a_new_task_grows_the_model_without_a_teacher_and_trains_everything() -> None:
    learner, model = demo_replay()
    assert learner.begin_task(model, 0) is None
    model.freeze(["all"])
    assert learner.begin_task(model, 1) is None and model.nb_classes_per_task == [2, 2]
    assert all(p.requires_grad for p in model.parameters())
    assert model.head_div is None and not learner.unused_parameters(model)  # no divergence head: DyTox's alone
    assert learner.finetuning_set(1) is None and learner.finetuning_teacher(model) is None


def test_each_task_trains_on_its_images_and_the_whole_memory_once() -> None:
    learner, model = demo_replay("--oversample-memory", "3")  # DyTox's option: not ER's
    learner.begin_task(model, 0)
    assert len(learner.training_set(0)) == len(learner.scenarios.train[0])  # type: ignore[arg-type]
    learner.update_memory(model, 0, learner.memory_quota(0))  # type: ignore[arg-type]
    learner.begin_task(model, 1)
    assert len(learner.memory) == 200
    assert len(learner.training_set(1)) == len(learner.scenarios.train[1]) + 200  # type: ignore[arg-type]


def test_every_method_of_the_registry_is_named_in_the_help_of_method() -> None:
    assert "er" in METHODS and all(f"{name} (" in OPTIONS["method"].help for name in METHODS)
