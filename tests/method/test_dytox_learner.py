"""DyTox's hooks, on the demo's settings and data: teacher and expansion, memory update, finetuning set."""
from __future__ import annotations

import numpy as np
import torch
from support import method_on

from conftest import REPO_ROOT
from continual.method.dytox_learner import DyToxLearner
from continual.model.base import ContinualModel
from continual.model.baseline import IncrementalClassifier
from continual.model.build import grown_model

DEMO = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"), str(REPO_ROOT / "options/model/demo_tiny.yaml")]


def demo_learner(*flags: str) -> tuple[DyToxLearner, ContinualModel]:
    learner, model = method_on(DEMO + list(flags))
    assert isinstance(learner, DyToxLearner)
    return learner, model


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


def learner_with_memory(*flags: str) -> tuple[DyToxLearner, ContinualModel]:
    """The demo's learner after task 0's memory update, at the start of task 1."""
    learner, model = demo_learner(*flags)
    learner.update_memory(model, 0, learner.memory_quota(0))  # type: ignore[arg-type]
    learner.begin_task(model, 1)
    return learner, model


def test_oversample_memory_adds_the_memory_that_many_times() -> None:
    task = len(demo_learner()[0].scenarios.train[1])
    for times in (0, 1, 3):
        learner, _ = learner_with_memory("--oversample-memory", str(times))
        assert len(learner.training_set(1)) == task + times * 200  # type: ignore[arg-type]


def test_only_ft_trains_later_tasks_on_the_memory_alone() -> None:
    learner, _ = learner_with_memory("--only-ft")
    dataset = learner.training_set(1)
    assert len(dataset) == len(learner.memory) == 200  # type: ignore[arg-type]
    assert len(learner.training_set(0)) == len(learner.scenarios.train[0])  # type: ignore[arg-type]


def test_oversample_memory_ft_repeats_each_old_exemplar() -> None:
    learner, model = learner_with_memory("--oversample-memory-ft", "3")
    learner.update_memory(model, 1, learner.memory_quota(1))  # type: ignore[arg-type]
    dataset = learner.finetuning_set(1)
    assert dataset is not None
    y = dataset.get_raw_samples()[1]  # type: ignore[attr-defined]
    old = learner.memory.get()[1][learner.memory.get()[2] < 1]
    assert len(y) == 3 * 100 + 100  # 100 exemplars of task 0, 3 times each, then task 1's 100
    np.testing.assert_array_equal(y[:300], np.repeat(old, 3))
    assert set(y[300:]) == {2, 3}


def test_finetuning_resetclf_draws_the_heads_again_and_keeps_the_rest() -> None:
    learner, model = learner_with_memory("--finetuning-resetclf")
    with torch.no_grad():
        for head in model.head:
            head.norm.weight.fill_(3.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    learner.begin_finetuning(model)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {f"head.{i}.{part}" for i in range(2) for part in ("head.weight", "head.bias", "norm.weight")}
    assert all(torch.equal(head.norm.weight, torch.ones_like(head.norm.weight)) for head in model.head)


def test_sep_memory_keeps_the_memory_out_of_the_training_data() -> None:
    learner, _ = learner_with_memory("--sep-memory")
    assert len(learner.training_set(1)) == len(learner.scenarios.train[1])  # type: ignore[arg-type]
    assert len(learner.memory) == 200  # still there, for SAM's memory passes and finetuning


BASELINE = ["--no-dytox", "--head-div", "0", "--freeze-task", "--freeze-ft", "sab"]  # options/model/baseline.yaml


def test_the_baseline_grows_its_classifier_and_keeps_its_teacher() -> None:
    learner, model = demo_learner(*BASELINE)
    assert isinstance(model, IncrementalClassifier)
    learner.begin_task(model, 0)
    teacher = learner.begin_task(model, 1)
    assert isinstance(teacher, IncrementalClassifier) and teacher.head.head.out_features == 2
    assert model.head.head.out_features == 4 and model.nb_classes_per_task == [2, 2]
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert all(p.requires_grad for p in model.parameters())  # baseline.yaml: freeze_task []


def test_rehearsal_modes_2_keeps_two_half_selections_of_each_class() -> None:
    """As published: two herdings of quota // 2 each, one after the other within a class; with the training
    augmentation the features differ between the two passes, with a deterministic pass the halves repeat."""
    for flags, halves_equal in ((["--rehearsal", "random"], False), (["--rehearsal-test-trsf"], True)):
        learner, model = demo_learner("--rehearsal-modes", "2", *flags)
        learner.update_memory(model, 0, 50)
        x, y, _ = learner.memory.get()
        assert learner.memory.counts_per_class() == {0: 50, 1: 50}
        first, second = x[y == 0][:25], x[y == 0][25:]
        assert np.array_equal(first, second) is halves_equal
        learner.begin_task(model, 1)
        learner.update_memory(model, 1, 24)  # the old classes keep the first 12 of each half
        kept = learner.memory.get()[0][learner.memory.get()[1] == 0]
        assert np.array_equal(kept, np.concatenate([first[:12], second[:12]]))
        assert learner.memory.counts_per_class() == {0: 24, 1: 24, 2: 24, 3: 24}


def test_retrain_scratch_draws_every_weight_again_and_trains_on_all_seen_tasks() -> None:
    learner, model = learner_with_memory("--retrain-scratch")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    learner.begin_task(model, 2)
    drawn = grown_model(model.config, model.nb_classes_per_task).state_dict()  # which tensors are random:
    random = {name for name, value in grown_model(model.config, model.nb_classes_per_task).named_parameters()
              if not torch.equal(value, drawn[name])}  # (GPSA's local init of v and pos_proj is not)
    kept = [name for name, p in model.named_parameters() if name in before and torch.equal(p, before[name])]
    assert len(random) > 20 and not random & set(kept), random & set(kept)
    seen = sum(len(learner.scenarios.train[task]) for task in range(3))
    assert len(learner.training_set(2)) == seen  # type: ignore[arg-type]  # the task's and the old tasks' images
    assert not model.task_tokens[0].requires_grad  # freeze_task still applies
