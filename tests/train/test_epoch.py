"""One epoch's training step and evaluation, on a tiny model and batches."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from support import SMALL, TINY, schedule_cfg

from continual.method.dytox_objective import BatchLoss
from continual.method.losses import bce_with_logits
from continual.method.pod import pod_loss
from continual.model.dytox import DyTox
from continual.train.epoch import (
    EpochCursor,
    Precision,
    StepOptions,
    batch_loss,
    evaluate,
    train_one_epoch,
)
from continual.train.optim import build_optimizer


def tiny_batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 8, 8, generator=generator), torch.tensor([0, 1, 3, 4])) for _ in range(n)]


def settings() -> BatchLoss:
    return BatchLoss(criterion=bce_with_logits, auto_kd=True, kd_weight=0.0, tau=1.0, head_div=0.1)


def test_training_epoch_updates_trainable_parameters_and_reports_losses() -> None:
    model = DyTox(TINY, 3)
    teacher = DyTox(TINY, 3)
    teacher.load_state_dict(model.state_dict())
    teacher.freeze(["all"])
    model.expand(2)
    model.freeze(["old_task_tokens", "old_heads"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, schedule_cfg(), 1e-3)
    stats = train_one_epoch(model, teacher, tiny_batches(), optimizer, settings(),
                            Precision(torch.device("cpu"), False))
    assert set(stats.losses) == {"classification", "kd", "div", "total"} and stats.images == 8
    losses = stats.losses
    assert losses["total"] == pytest.approx(losses["classification"] + losses["kd"] + losses["div"])
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) != param.requires_grad, name


def test_non_finite_loss_stops_with_the_place() -> None:
    model = DyTox(TINY, 5)
    with torch.no_grad():
        model.head[0].head.bias.fill_(float("nan"))
    optimizer = build_optimizer(model, schedule_cfg(), 1e-3)
    with pytest.raises(FloatingPointError, match="task 3, train epoch 7, step 0"):
        train_one_epoch(model, None, tiny_batches(), optimizer, settings(), Precision(torch.device("cpu"), False),
                        cursor=EpochCursor(where="task 3, train epoch 7"))


def test_evaluate_runs_without_autocast_when_amp_is_off() -> None:
    model = DyTox(TINY, 5).eval()
    counts = evaluate(lambda net, images: net(images).logits, model, tiny_batches(1),
                      Precision(torch.device("cpu"), False), [5])
    with torch.no_grad():
        expected = (model(tiny_batches(1)[0][0]).logits.argmax(1) == torch.tensor([0, 1, 3, 4])).sum()
    assert counts.correct.item() == expected.item() and counts.total.item() == 4


def test_bfloat16_autocast_training_step_on_cpu() -> None:
    model = DyTox(TINY, 5)
    optimizer = build_optimizer(model, schedule_cfg(), 1e-3)
    precision = Precision(torch.device("cpu"), True)
    assert precision.dtype == torch.bfloat16 and precision.grad_scaler() is None
    stats = train_one_epoch(model, None, tiny_batches(), optimizer, settings(), precision)
    assert np.isfinite(stats.losses["total"])
    assert Precision(torch.device("cuda"), True).dtype == torch.float16
    assert Precision(torch.device("cuda"), True, "bfloat16").dtype == torch.bfloat16
    assert Precision(torch.device("cuda"), True, "bfloat16").grad_scaler() is None  # no loss scaling needed
    with pytest.raises(ValueError, match="float16 is for CUDA"):
        Precision(torch.device("cpu"), True, "float16")


def test_mixup_batches_train_with_soft_targets_and_the_divergence_head() -> None:
    from timm.data import Mixup

    model = DyTox(TINY, 3)
    model.expand(2)  # 5 classes, divergence head over 2 new classes + "old"
    mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=5)
    calls = []

    def recording_mixer(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed, soft = mixer(images, targets)
        calls.append(soft)
        return mixed, soft

    optimizer = build_optimizer(model, schedule_cfg(), 1e-3)
    stats = train_one_epoch(model, None, tiny_batches(), optimizer, settings(), Precision(torch.device("cpu"), False),
                            StepOptions(mixer=recording_mixer))
    assert len(calls) == 2 and calls[0].shape == (4, 5)
    torch.testing.assert_close(calls[0].sum(dim=1), torch.ones(4))
    assert set(stats.losses) == {"classification", "div", "total"} and np.isfinite(stats.losses["total"])


def test_precision_warns_about_emulated_bfloat16_and_ignored_amp() -> None:
    from continual.train.epoch import cpu_has_fast_bfloat16

    notes = Precision(torch.device("cpu"), True).warnings()
    assert any("bfloat16" in note for note in notes) == (not cpu_has_fast_bfloat16())
    assert Precision(torch.device("cpu"), False).warnings() == []
    assert "no_amp is true" in Precision(torch.device("cpu"), False).warnings(amp_requested_but_disabled=True)[0]


def test_an_epoch_with_max_batches_trains_on_that_many_batches_only() -> None:
    """``--debug`` (the published debug mode): one batch per epoch."""
    model = DyTox(TINY, 5)
    optimizer = build_optimizer(model, schedule_cfg(), 1e-3)
    full = train_one_epoch(model, None, tiny_batches(3), optimizer, settings(), Precision(torch.device("cpu"), False))
    short = train_one_epoch(model, None, tiny_batches(3), optimizer, settings(), Precision(torch.device("cpu"), False),
                            cursor=EpochCursor(max_batches=1))
    assert full.images == 12 and short.images == 4 and short.next_step is None


def test_pod_adds_its_weighted_distance_between_the_encoder_maps_to_the_first_pass_only() -> None:
    """--pod: the weight times POD between the student's and the teacher's SAB maps (published layout); SAM's
    second pass has no POD term, as published."""
    teacher = DyTox(SMALL, 2).eval()
    model = copy.deepcopy(teacher)
    model.expand(2)
    with torch.no_grad():
        for param in model.sabs[0].parameters():
            param.add_(0.05 * torch.randn_like(param))
    images, targets = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    precision = Precision(torch.device("cpu"), False)
    plain = batch_loss(model, teacher, images, targets, settings(), precision)
    with_pod = batch_loss(model, teacher, images, targets, dataclasses.replace(settings(), pod=0.5), precision)
    with torch.no_grad():
        expected = 0.5 * pod_loss(list(model(images).encoder_maps), list(teacher(images).encoder_maps))
    assert plain.pod is None and with_pod.pod is not None and float(expected) > 1e-4
    torch.testing.assert_close(with_pod.pod, expected)
    torch.testing.assert_close(with_pod.total, plain.total + expected)
    second = batch_loss(model, teacher, images, targets, dataclasses.replace(settings(), pod=0.5), precision,
                        first_pass=False)
    assert second.pod is None


def test_a_method_s_constraint_runs_after_each_optimiser_step_not_each_accumulated_batch() -> None:
    """WA clips its classifier after every update: with --grad-accum-steps 2 over 5 batches the optimiser steps
    3 times (2 + 2 + 1 batches), and the constraint sees each step's weights, never a half-accumulated state."""
    model = DyTox(TINY, 3)
    model.expand(2)
    optimizer = build_optimizer(model, schedule_cfg(), 1e-3)
    counts = {"step": 0, "constraint": 0}
    original = optimizer.step

    def counted_step(*args, **kwargs):  # type: ignore[no-untyped-def]
        counts["step"] += 1
        return original(*args, **kwargs)

    optimizer.step = counted_step  # type: ignore[method-assign]
    seen = []

    def constraint() -> None:
        counts["constraint"] += 1
        seen.append(counts["step"])

    train_one_epoch(model, None, tiny_batches(5), optimizer, settings(), Precision(torch.device("cpu"), False),
                    StepOptions(accum_steps=2, after_step=constraint))
    assert counts == {"step": 3, "constraint": 3} and seen == [1, 2, 3]
