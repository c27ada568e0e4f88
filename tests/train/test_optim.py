"""The optimiser and the learning-rate schedule: the published off-by-one stepping."""
from __future__ import annotations

import pytest
import torch
from support import TINY, schedule_cfg

from continual.method.dytox_objective import BatchLoss
from continual.method.losses import bce_with_logits
from continual.model.dytox import DyTox
from continual.train.epoch import Precision, StepOptions, train_one_epoch
from continual.train.optim import (
    build_optimizer,
    build_scheduler,
    current_lr,
    implementation,
    schedule_index,
    set_epoch_lr,
)


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


def trained_weights(opt_impl: str, opt: str = "adamw") -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer]:
    """Three training steps of a grown DyTox (old parts frozen, divergence head on) with ``--opt-impl``."""
    torch.manual_seed(0)
    model = DyTox(TINY, 3)
    model.expand(2)
    model.freeze(["old_task_tokens", "old_heads"])
    optimizer = build_optimizer(model, schedule_cfg(opt=opt, opt_impl=opt_impl, clip_grad=1.0), 1e-2)
    objective = BatchLoss(criterion=bce_with_logits, auto_kd=True, kd_weight=0.0, tau=1.0, head_div=0.1)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 8, 8, generator=generator), torch.tensor([0, 1, 3, 4])) for _ in range(3)]
    train_one_epoch(model, None, batches, optimizer, objective, Precision(torch.device("cpu"), False),
                    StepOptions(clip_grad=1.0))
    return {name: p.detach().clone() for name, p in model.named_parameters()}, optimizer


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_the_default_foreach_step_gives_the_published_loop_s_weights_bit_for_bit(opt: str) -> None:
    loop, loop_optimizer = trained_weights("loop", opt)
    foreach, foreach_optimizer = trained_weights("foreach", opt)
    assert not loop_optimizer.defaults["foreach"] and foreach_optimizer.defaults["foreach"]
    assert all(torch.equal(loop[name], foreach[name]) for name in loop)


def test_a_fused_step_agrees_with_the_loop_s_to_rounding() -> None:
    """From the same weights, moments and gradients, one fused AdamW step lands where the loop's does, to
    float32 rounding (over many steps Adam amplifies such differences where gradients are near zero)."""
    weights, _ = trained_weights("loop")
    stepped = {}
    for opt_impl in ("loop", "fused"):
        torch.manual_seed(1)
        model = DyTox(TINY, 3)
        model.expand(2)
        model.load_state_dict(weights, strict=False)
        optimizer = build_optimizer(model, schedule_cfg(opt_impl=opt_impl), 1e-2)
        for _ in range(2):  # moments built from the same gradients
            for param in model.parameters():
                param.grad = torch.linspace(-1, 1, param.numel()).reshape(param.shape)
            optimizer.step()
        assert bool(optimizer.defaults["fused"]) == (opt_impl == "fused")
        stepped[opt_impl] = {name: p.detach().clone() for name, p in model.named_parameters()}
    for name, value in stepped["loop"].items():
        torch.testing.assert_close(stepped["fused"][name], value, rtol=1e-6, atol=1e-7)


def test_auto_is_fused_on_cuda_and_foreach_elsewhere_and_timm_s_own_optimisers_keep_theirs() -> None:
    assert implementation("adamw", "auto", on_cuda=True) == {"fused": True}
    assert implementation("adamw", "auto", on_cuda=False) == {"foreach": True}
    assert build_optimizer(DyTox(TINY, 2), schedule_cfg(), 1e-3).defaults["foreach"]  # auto, on the CPU
    assert implementation("lamb", "auto", on_cuda=True) == {}
    assert implementation("AdamW", "fused") == {"fused": True}
    assert implementation("sgd", "loop") == {"foreach": False}
