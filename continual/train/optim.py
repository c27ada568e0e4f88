"""Optimiser and learning-rate schedule of a task, through timm's factories.

The learning rate is computed per task from the configuration (linear scaling,
``RecipeSettings.lr_of``), never written back into it.

Schedule stepping (docs/differences.md): the published loop steps timm's per-epoch
scheduler *after* each epoch with the index of the epoch just finished, so
epoch e trains at the schedule's value for e - 1 (epoch 0 at the value for 0).
That off-by-one is the default because the published numbers depend on it;
``--sched-step-fix`` trains epoch e at the value for e.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn

from continual.config.settings import OptimizerSettings, ScheduleSettings
from continual.vocabulary import TORCH_STEPPED_OPTIMISERS


def build_optimizer(model: nn.Module, cfg: OptimizerSettings, lr: float) -> torch.optim.Optimizer:
    """timm optimiser over the trainable parameters; no weight decay on biases and norms (timm's rule)."""
    kwargs: dict[str, Any] = {"eps": cfg.opt_eps} if cfg.opt_eps is not None else {}
    on_cuda = any(p.is_cuda for p in model.parameters())
    kwargs.update(implementation(cfg.opt, cfg.opt_impl, on_cuda))
    if cfg.opt_betas:
        kwargs["betas"] = tuple(cfg.opt_betas)
    return create_optimizer_v2(
        model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, **kwargs
    )


def implementation(opt: str, impl: str, on_cuda: bool = False) -> dict[str, bool]:
    """The keyword that picks how torch's optimiser steps (``--opt-impl``); nothing for timm's own optimisers.

    ``foreach``: one multi-tensor operation per term of the update instead of one per parameter, the same
    arithmetic in the same order as the published per-parameter loop (a test checks the weights are equal bit
    for bit). ``fused``: one kernel for all parameters with the step counters on the device, so the host never
    reads them and float16 loss scaling skips its read of the overflow flag; its rounding differs from the
    loop's in the last bit, as the fast paths' arithmetic does. ``auto`` (the default): fused on CUDA, where the
    launches are the cost, foreach elsewhere.
    """
    if opt.lower() not in TORCH_STEPPED_OPTIMISERS:
        return {}
    if impl == "auto":
        impl = "fused" if on_cuda else "foreach"
    return {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleSettings, epochs: int) -> Scheduler:
    """Per-epoch timm schedule (cosine with warm-up in the published options) over ``epochs``."""
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=epochs,
        decay_epochs=cfg.decay_epochs,
        decay_milestones=timm_milestones(cfg.decay_milestones),
        cooldown_epochs=cfg.cooldown_epochs,
        patience_epochs=cfg.patience_epochs,
        decay_rate=cfg.decay_rate,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
        noise=None if cfg.lr_noise is None else list(cfg.lr_noise),  # type: ignore[arg-type]  # None: no noise
        noise_pct=cfg.lr_noise_pct,
        noise_std=cfg.lr_noise_std,
        noise_seed=cfg.seed,
    )
    return scheduler


def timm_milestones(milestones: tuple[int, ...]) -> list[int]:
    """``decay_milestones`` as timm's multistep schedule reads them. The option counts as PyTorch's MultiStepLR
    and the papers' code do (epoch m, from 0, is the first at the decayed rate); timm's value for epoch t is
    decayed once t + 1 reaches a milestone, one epoch earlier."""
    return [m + 1 for m in milestones]


def schedule_index(epoch: int, step_fix: bool) -> int:
    """Index of the schedule value used to train ``epoch`` (published: one epoch late)."""
    return epoch if step_fix else max(epoch - 1, 0)


def set_epoch_lr(scheduler: Scheduler, epoch: int, step_fix: bool) -> None:
    """Put the learning rate of ``epoch`` into the optimiser before training it."""
    scheduler.step(schedule_index(epoch, step_fix))


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(group["lr"] for group in optimizer.param_groups)
