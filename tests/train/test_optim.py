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
