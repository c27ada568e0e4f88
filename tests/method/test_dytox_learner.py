"""DyTox's hooks, on the demo's settings and data: teacher and expansion, memory update, finetuning set."""
from __future__ import annotations

import numpy as np
import torch

from conftest import REPO_ROOT
from continual.config import parse_config, settings_from
from continual.data.scenarios import load_scenarios
from continual.method.dytox_learner import DyToxLearner
from continual.model.dytox import DyTox
from continual.runtime.distributed import DistContext
from continual.train.loaders import Loaders

DEMO = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"), str(REPO_ROOT / "options/model/demo_tiny.yaml")]


def demo_learner(*flags: str) -> tuple[DyToxLearner, DyTox]:
    settings = settings_from(parse_config(DEMO + list(flags)))
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    scenarios = load_scenarios(settings.data)
    loaders = Loaders(settings.loader, settings.recipe, ctx)
    learner = DyToxLearner(settings.learner, settings.loss, settings.memory, scenarios, ctx, loaders.eval,
                           np.random.default_rng(0))
    return learner, DyTox(settings.model, scenarios.classes_per_task[0])


def test_a_task_after_the_first_gets_a_frozen_teacher_and_a_new_token() -> None:
    learner, model = demo_learner()
    assert learner.begin_task(model, 0) is None and model.nb_tasks == 1
    teacher = learner.begin_task(model, 1)  # auto_kd: distils
    assert teacher is not None and teacher.nb_tasks == 1 and model.nb_tasks == 2
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not model.task_tokens[0].requires_grad and model.task_tokens[1].requires_grad  # old_task_tokens


def test_the_memory_keeps_the_quota_of_each_seen_class_and_feeds_the_finetuning() -> None:
    learner, model = demo_learner()
    assert learner.finetuning_set(0) is None  # no finetuning after the first of several tasks
    for task in (0, 1):
        if task:
            learner.begin_task(model, task)
        quota = learner.memory_quota(task)
        assert quota == 200 // (2 * (task + 1))  # memory_size over the classes seen
        learner.update_memory(model, task, quota)
        assert learner.memory.counts_per_class() == {c: quota for c in range(2 * (task + 1))}
    finetuning = learner.finetuning_set(1)
    assert finetuning is not None and len(finetuning) == len(learner.memory) == 200
    assert learner.total_memory() == 200


def test_no_memory_and_no_finetuning_without_a_budget() -> None:
    learner, _ = demo_learner("--memory-size", "0")
    assert learner.memory_quota(1) is None and learner.finetuning_set(1) is None
