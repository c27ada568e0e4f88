"""The task loop's own training step replays optimisation steps recorded from the published code.

Each recording (a folder in the format of ``shared/fixtures/reference_training``, see its README)
starts from the published code's initial weights and batches and holds the whole state after every
step of task 0, of task 1 (with the teacher) and of the finetuning of task 1, the loss terms before
each step, the trainable parameters, the weight-decay groups, the scaled learning rates and the lr of
every epoch of the schedules. Each phase here starts from the recording's weights and runs the
functions the task loop runs: ``begin_task`` / ``begin_finetuning``, ``build_optimizer`` at ``lr_of``
/ ``finetuning_lr_of``, ``batch_loss_of`` and ``train_one_epoch``, on the settings made from the
recording's ``config.json``; every expectation (teacher, divergence head, trainable sets, schedules,
steps) comes from the recording and that configuration, so any recording in the format replays.

By default the two recordings of the shared fixtures replay: ``reference_training`` (divergence head
in training only) and ``reference_training_div_ft`` (divergence head in finetuning too, other sizes
and rates). ``DYTOX_TRAINING_FIXTURE`` names other folders instead (several separated by ``:``).
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from conftest import REPO_ROOT, SHARED_DIR, required_path
from continual.config import parse_config, settings_from
from continual.config.settings import model_config
from continual.method.dytox_learner import begin_finetuning, begin_task
from continual.method.dytox_objective import batch_loss_of
from continual.model.dytox import DyTox
from continual.state.reference import read_reference_checkpoint
from continual.train.epoch import train_one_epoch
from continual.train.fit import precision_of
from continual.train.optim import build_optimizer, build_scheduler, current_lr, set_epoch_lr

FIXTURE_ENV = "DYTOX_TRAINING_FIXTURE"
# Tolerances of the fixture's README: max over keys of max|ours - ref| / (1 + max|ref|). A wrong rule
# (weight-decay group, lr, loss weight, frozen parameter) moves a parameter by about 1e-3 per step.
STATE_TOLERANCE = {"task0": 2e-4, "task1": 5e-5, "finetune": 5e-5}
LOSS_TOLERANCE = 1e-6
LOSS_TERMS = ("classification", "kd", "div")


SHARED_RECORDINGS = ("reference_training", "reference_training_div_ft")


def recording_folders() -> list[Path]:
    configured = os.environ.get(FIXTURE_ENV)
    if configured:
        return [Path(folder) for folder in configured.split(os.pathsep) if folder]
    return [SHARED_DIR / "fixtures" / name for name in SHARED_RECORDINGS]


@pytest.fixture(scope="module", params=recording_folders(), ids=lambda folder: folder.name)
def folder(request: pytest.FixtureRequest) -> Path:
    hint = f"set {FIXTURE_ENV} or put ../shared beside the repo"
    for name in ("trajectory.pt", "config.json", "init_task0.pth", "init_task1.pth", "after_task0.pth"):
        required_path(request.param / name, hint)
    return request.param


@pytest.fixture(scope="module")
def recording(folder: Path) -> dict:
    return torch.load(folder / "trajectory.pt", weights_only=True)


@pytest.fixture(scope="module")
def recorded(folder: Path) -> dict:
    """The recording's ``config.json``: option files, overrides, batch, steps, schedule length."""
    return json.loads((folder / "config.json").read_text())


def command_line(option_files: list[str], override: dict[str, object], batch: int) -> list[str]:
    """The recording's configuration as this project's command line (flags win over the files)."""
    argv = ["--options", *(str(REPO_ROOT / f) for f in option_files)]
    for key, value in override.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    # The recording scales every task's lr by its own batch of `batch` images (the published files
    # set incremental_batch_size 128, which the recording did not apply).
    return argv + ["--incremental-batch-size", str(batch)]


@pytest.fixture(scope="module")
def cfg(recorded: dict) -> argparse.Namespace:
    return parse_config(command_line(recorded["options"], recorded["override"], recorded["batch"]))


@pytest.fixture(scope="module")
def reference_state(folder: Path) -> Callable[[str], dict[str, Tensor]]:
    """The weights of one of the recording's checkpoints, by file name."""
    return lambda name: read_reference_checkpoint(folder / name)[0]


def fresh_model(cfg: argparse.Namespace) -> DyTox:
    """The model the task loop builds for task 0 from the configuration."""
    return DyTox(model_config(cfg), cfg.initial_increment)


def paths(model: DyTox, plain: bool) -> DyTox:
    """The default fast paths, or the published arithmetic (``--no-fused-attention --no-joint-tokens``)."""
    if plain:
        model.set_arithmetic(fused=False, joint=False)
    return model


def state_error(state: dict[str, Tensor], reference: dict[str, Tensor]) -> float:
    assert state.keys() == reference.keys()
    return max(((state[k] - reference[k]).abs().max() / (1 + reference[k].abs().max())).item() for k in reference)


def decay_groups(model: DyTox, optimizer: torch.optim.Optimizer) -> dict[str, list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    groups: dict[str, list[str]] = {"decay": [], "no_decay": []}
    for group in optimizer.param_groups:
        key = "decay" if group["weight_decay"] > 0 else "no_decay"
        groups[key] += [names[id(p)] for p in group["params"]]
    return {key: sorted(value) for key, value in groups.items()}


def replay(
    phase: str, model: DyTox, teacher: DyTox | None, lr: float, cfg: argparse.Namespace, recording: dict,
    recorded: dict,
) -> None:
    """The recorded steps of ``phase``, each a one-batch epoch of the loop's ``train_one_epoch``."""
    settings = settings_from(cfg)
    optimizer = build_optimizer(model, settings.optimizer, lr)
    assert lr == pytest.approx(recording[f"{phase}_lr"], rel=1e-12)
    if f"{phase}_param_groups" in recording:
        assert decay_groups(model, optimizer) == {k: sorted(v) for k, v in recording[f"{phase}_param_groups"].items()}
    loss = batch_loss_of(settings.loss, settings.mixup.active)
    precision = precision_of(settings.precision, torch.device("cpu"))
    batches, states, losses = (recording[f"{phase}_{kind}"] for kind in ("batches", "states", "losses"))
    assert len(batches) == recorded["steps"]
    for step, ((images, targets), state, expected) in enumerate(zip(batches, states, losses, strict=True)):
        stats = train_one_epoch(model, teacher, [(images, targets)], optimizer, loss, precision)
        assert all(module.training for module in model.modules()), "the loop trains in train mode throughout"
        for term in LOSS_TERMS:
            if expected[term] is None:
                assert term not in stats.losses, (phase, step, term)
            else:
                assert stats.losses[term] == pytest.approx(expected[term], abs=LOSS_TOLERANCE), (phase, step, term)
        error = state_error(model.state_dict(), state)
        assert error <= STATE_TOLERANCE[phase], f"{phase} step {step}: relative error {error:.2e}"


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
def test_task0_steps_give_the_recorded_weights_and_losses(cfg: argparse.Namespace, recording: dict, recorded: dict,
                                                          reference_state: Callable, plain: bool) -> None:
    model = paths(fresh_model(cfg), plain)
    model.load_state_dict(reference_state("init_task0.pth"))
    settings = settings_from(cfg)
    assert begin_task(model, settings.learner, settings.loss.distills, 0, cfg.initial_increment) is None
    assert all(p.requires_grad for p in model.parameters())
    replay("task0", model, None, settings.recipe.lr_of(0, world_size=1), cfg, recording, recorded)


def task1_start(cfg: argparse.Namespace, reference_state: Callable, plain: bool) -> tuple[DyTox, DyTox | None]:
    """The model of task 1 from the recording's weights after task 0, expanded and frozen by ``begin_task``, and
    its teacher (a frozen copy taken before the expansion, when the configuration distils)."""
    model = paths(fresh_model(cfg), plain)
    after_task0 = reference_state("after_task0.pth")
    model.load_state_dict(after_task0)
    settings = settings_from(cfg)
    teacher = begin_task(model, settings.learner, settings.loss.distills, 1, cfg.increment)
    assert (teacher is not None) == settings.loss.distills
    if teacher is not None:
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        assert state_error(teacher.state_dict(), after_task0) == 0  # copied before the expansion
    model.load_state_dict(reference_state("init_task1.pth"))  # the recording's fresh token and heads
    return model, teacher


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
def test_task1_steps_with_the_teacher_give_the_recorded_weights_and_losses(
        cfg: argparse.Namespace, recording: dict, recorded: dict, reference_state: Callable, plain: bool) -> None:
    model, teacher = task1_start(cfg, reference_state, plain)
    assert model.divergence_active() == (cfg.head_div > 0 and "tr" in cfg.head_div_mode)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(recording["task1_trainable"])
    replay("task1", model, teacher, settings_from(cfg).recipe.lr_of(1, world_size=1), cfg, recording, recorded)


@pytest.mark.parametrize("plain", [False, True], ids=["fast", "plain"])
def test_finetuning_steps_give_the_recorded_weights_and_losses(
        cfg: argparse.Namespace, recording: dict, recorded: dict, reference_state: Callable, plain: bool) -> None:
    """Balanced finetuning: with freeze_ft [sab] the old heads and old tokens train too (as published), the
    divergence head when head_div_mode names ft, the teacher when finetuning_teacher is set; a constant lr."""
    model, teacher = task1_start(cfg, reference_state, plain)
    model.load_state_dict(recording["task1_states"][-1])
    settings = settings_from(cfg)
    begin_finetuning(model, settings.learner)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(recording["finetune_trainable"])
    assert model.divergence_active() == (cfg.head_div > 0 and "ft" in cfg.head_div_mode)
    finetuning_teacher = teacher if settings.learner.finetuning_teacher else None
    replay("finetune", model, finetuning_teacher, settings.recipe.finetuning_lr_of(1, world_size=1), cfg, recording,
           recorded)


@pytest.mark.parametrize("task", [0, 1])
def test_learning_rate_of_every_epoch_follows_the_recorded_schedule(cfg: argparse.Namespace, recording: dict,
                                                                    recorded: dict, task: int) -> None:
    """Epoch e trains at the schedule's value for e - 1 (published stepping), and task 0's schedule
    spans ``epochs`` although task 0 trains ``base_epochs`` (500 in the published data files)."""
    settings = settings_from(cfg)
    assert settings.recipe.schedule_epochs(task) == recorded["schedule_epochs"]
    optimizer = build_optimizer(fresh_model(cfg), settings.optimizer, settings.recipe.lr_of(task, world_size=1))
    scheduler = build_scheduler(optimizer, settings.schedule, settings.recipe.schedule_epochs(task))
    expected = recording[f"task{task}_lr_per_epoch"]
    lrs = []
    for epoch in range(len(expected)):
        set_epoch_lr(scheduler, epoch, cfg.sched_step_fix)
        lrs.append(current_lr(optimizer))
    assert lrs == pytest.approx(expected, rel=1e-9)


def ks_distance(a: Tensor, b: Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = a.flatten().double().sort().values, b.flatten().double().sort().values
    points = torch.cat([a, b])
    gap = torch.searchsorted(a, points, right=True) / len(a) - torch.searchsorted(b, points, right=True) / len(b)
    return gap.abs().max().item()


def test_fresh_parameters_are_drawn_like_the_published_ones(cfg: argparse.Namespace,
                                                           reference_state: Callable) -> None:
    """Every parameter of a new model (task 0) and every new one of an expansion (task 1) follows the
    published initialisation: a two-sample KS test (level 0.001) against the recording's initial
    weights. Heads and the divergence head use PyTorch's Linear init (uniform in +-1/sqrt(fan_in)),
    not the ViT truncated normal of the blocks."""
    init0, init1 = reference_state("init_task0.pth"), reference_state("init_task1.pth")
    new_in_task1 = [k for k in init1 if k not in init0 or init1[k].shape != init0[k].shape]
    assert new_in_task1  # task token, head and divergence head of task 1
    ours: dict[str, list[Tensor]] = {}
    for seed in range(20):
        torch.manual_seed(seed)
        model = fresh_model(cfg)
        first = model.state_dict()
        model.expand(cfg.increment)
        second = model.state_dict()
        for key in init0:
            ours.setdefault(key, []).append(first[key])
        for key in new_in_task1:
            ours.setdefault("task1:" + key, []).append(second[key])
    references = {**init0, **{"task1:" + k: init1[k] for k in new_in_task1}}
    for key, reference in references.items():
        pooled = torch.cat([t.flatten() for t in ours[key]])
        n, m = reference.numel(), pooled.numel()
        bound = 1.95 * ((n + m) / (n * m)) ** 0.5  # KS critical value at level 0.001
        assert ks_distance(reference, pooled) <= bound, key
    head = torch.cat([t.flatten() for t in ours["head.0.head.weight"]])
    assert head.abs().max() <= 1 / cfg.embed_dim**0.5 and head.std() > 0.07  # uniform, not std 0.02
