"""DyTox's objective of a batch: the loss options made into its terms, and the terms from the outputs."""
from __future__ import annotations

import pytest
import torch

from continual.config import parse_config
from continual.config.settings import LossSettings, settings_of
from continual.method.dytox_objective import batch_loss_of
from continual.method.learner import TeacherOutput
from continual.method.losses import bce_with_logits, dytox_loss
from continual.model.dytox import DyToxOutput


def test_the_pod_weight_of_a_phase_is_off_on_the_first_task_and_scaled_with_pod_scaling() -> None:
    cfg = parse_config(["--pod", "0.8", "--pod-scales", "1", "2", "--pod-tokens-as-maps"])
    loss = settings_of(LossSettings, cfg)
    assert batch_loss_of(loss, False, [2]).pod == 0.0  # no teacher on the first task, as published
    assert batch_loss_of(loss, False, [2, 2]).pod == pytest.approx(0.8)
    scaled = settings_of(LossSettings, parse_config(["--pod", "0.8", "--pod-scaling"]))
    assert batch_loss_of(scaled, False, [2, 2, 4]).pod == pytest.approx(0.8 * (4 / 8) ** 0.5)
    assert batch_loss_of(loss, False, [2, 2]).pod_scales == (1, 2) and batch_loss_of(loss, False).pod == 0.0


def test_the_objective_is_the_dytox_loss_of_the_outputs_and_asks_for_maps_only_with_pod() -> None:
    loss = settings_of(LossSettings, parse_config(["--bce-loss", "--auto-kd", "--head-div", "0.1", "--pod", "0.3"]))
    objective = batch_loss_of(loss, False, [2, 2])
    generator = torch.Generator().manual_seed(0)
    logits, div_logits, old = (torch.randn(4, n, generator=generator) for n in (4, 3, 2))
    targets = torch.tensor([0, 1, 2, 3])
    out = DyToxOutput(logits, div_logits, torch.zeros(2, 4, 8))
    terms = objective(out, TeacherOutput(old), targets, first_pass=False)
    expected = dytox_loss(logits, div_logits, targets, old, bce_with_logits, auto_kd=True, kd_weight=0.0, tau=1.0,
                          head_div=0.1)
    assert terms.pod is None and expected.kd is not None and expected.div is not None
    torch.testing.assert_close(terms.total, expected.total)
    assert objective.wants_teacher_maps(True) and not objective.wants_teacher_maps(False)
    assert not batch_loss_of(loss, False, [2]).wants_teacher_maps(True)  # no POD on the first task
