"""The optimiser and the learning-rate schedule: the published off-by-one stepping."""
from __future__ import annotations

import pytest
import torch
from support import schedule_cfg

from continual.train.optim import build_optimizer, build_scheduler, current_lr, schedule_index, set_epoch_lr


@pytest.mark.parametrize(("step_fix", "expected_index"), [(False, [0, 0, 1, 2, 3]), (True, [0, 1, 2, 3, 4])])
def test_learning_rate_of_each_epoch_follows_the_published_off_by_one(step_fix: bool, expected_index: list) -> None:
    cfg = schedule_cfg()
    model = torch.nn.Linear(2, 2)
    reference = build_scheduler(build_optimizer(model, cfg, 1e-3), cfg, 5)
    values = [reference._get_lr(e)[0] for e in range(5)]  # s(0)..s(4) of timm's cosine schedule
    optimizer = build_optimizer(model, cfg, 1e-3)
    scheduler = build_scheduler(optimizer, cfg, 5)
    lrs = []
    for epoch in range(5):
        set_epoch_lr(scheduler, epoch, step_fix)
        lrs.append(current_lr(optimizer))
    assert lrs == pytest.approx([values[i] for i in expected_index])
    assert lrs[0] == pytest.approx(1e-6)
    assert [schedule_index(e, step_fix) for e in range(5)] == expected_index


@pytest.mark.parametrize("step_fix", [False, True])
def test_multistep_milestones_count_epochs_as_pytorch_multisteplr_does(step_fix: bool) -> None:
    """--sched multistep --decay-milestones 3 5 --decay-rate 0.2: with sched_step_fix, epoch 3 (from 0) is the first
    at 0.2 x lr and epoch 5 the first at 0.04 x lr, as torch.optim.lr_scheduler.MultiStepLR([3, 5], 0.2) stepped after
    each epoch (the papers' code); without it, one epoch later, as every published schedule."""
    cfg = schedule_cfg(sched="multistep", decay_milestones=(3, 5), decay_rate=0.2, warmup_epochs=0)
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg, 1.0)
    scheduler = build_scheduler(optimizer, cfg, 8)
    lrs = []
    for epoch in range(8):
        set_epoch_lr(scheduler, epoch, step_fix)
        lrs.append(current_lr(optimizer))
    torch_optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    torch_schedule = torch.optim.lr_scheduler.MultiStepLR(torch_optimizer, milestones=[3, 5], gamma=0.2)
    expected = []
    for _ in range(8):
        expected.append(torch_optimizer.param_groups[0]["lr"])
        torch_optimizer.step()
        torch_schedule.step()
    if not step_fix:
        expected = [expected[0], *expected[:-1]]
    assert lrs == pytest.approx(expected)
    assert lrs[3 if step_fix else 4] == pytest.approx(0.2)
