"""SAM, ASAM and look-SAM steps against hand-computed updates; the rho of each task."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from continual.method.losses import LossTerms
from continual.method.sam import SAM, sam_rho_for_task
from continual.train.epoch import SamPlan, clip_and_step, sam_step


def tiny_problem() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    return model, torch.randn(5, 3), torch.randn(5, 2)


def loss_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((model(x) - y) ** 2).mean()


def gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, torch.Tensor]) -> dict:
    """Gradient of the loss at the given parameter values (a functional evaluation)."""
    values = {name: value.clone().requires_grad_(True) for name, value in params.items()}
    loss = ((torch.func.functional_call(model, values, (x,)) - y) ** 2).mean()
    return dict(zip(values, torch.autograd.grad(loss, list(values.values())), strict=True))


def sam_update(model: nn.Module, optimizer: torch.optim.Optimizer, plan: SamPlan, x, y, step: int = 0,
               clip: float | None = None) -> int:
    """One training step through the engine's SAM path; returns the number of forward passes."""
    passes = []

    def loss_of(images: torch.Tensor, targets: torch.Tensor, first_pass: bool = True) -> LossTerms:
        passes.append(1)
        return LossTerms(classification=loss_at(model, images, targets))

    sam_step(plan, step, loss_of, (x, y), optimizer, None, "test")
    clip_and_step(optimizer, None, clip, [p for p in model.parameters() if p.requires_grad])
    return len(passes)


@pytest.mark.parametrize("adaptive", [False, True])
def test_onesam_step_equals_the_hand_computed_update(adaptive: bool) -> None:
    model, x, y = tiny_problem()
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    rho, lr = 0.5, 0.1
    g = gradients(model, x, y, w)
    if adaptive:  # ASAM: e = rho * w^2 g / || |w| g ||
        norm = torch.sqrt(sum(((w[n].abs() * g[n]) ** 2).sum() for n in w))
        e = {n: rho * w[n] ** 2 * g[n] / norm for n in w}
    else:  # SAM: e = rho g / ||g||
        norm = torch.sqrt(sum((g[n] ** 2).sum() for n in w))
        e = {n: rho * g[n] / norm for n in w}
    g_sam = gradients(model, x, y, {n: w[n] + e[n] for n in w})
    expected = {n: w[n] - lr * g_sam[n] for n in w}

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    assert sam_update(model, optimizer, SamPlan(SAM(optimizer, rho, adaptive=adaptive)), x, y) == 2
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=0, atol=1e-6)


def test_look_sam_takes_two_passes_every_k_steps_and_reuses_the_direction_between() -> None:
    model, x, y = tiny_problem()
    rho, lr, alpha, k = 0.5, 0.1, 0.7, 3
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    plan = SamPlan(SAM(optimizer, rho, look_k=k, look_alpha=alpha))
    # Full step 0, by hand: g_v = g_s - (g_s . g / ||g||^2) g, per parameter.
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = gradients(model, x, y, w)
    norm = torch.sqrt(sum((g[n] ** 2).sum() for n in w))
    g_s = gradients(model, x, y, {n: w[n] + rho * g[n] / norm for n in w})
    g_v = {n: g_s[n] - (g_s[n] * g[n]).sum() / (g[n] ** 2).sum() * g[n] for n in w}
    assert sam_update(model, optimizer, plan, x, y, step=0) == 2
    # Step 1, one pass: g1 + alpha ||g1|| / ||g_v|| g_v.
    w1 = {n: p.detach().clone() for n, p in model.named_parameters()}
    g1 = gradients(model, x, y, w1)
    expected = {n: w1[n] - lr * (g1[n] + alpha * g1[n].norm() / g_v[n].norm() * g_v[n]) for n in w}
    assert sam_update(model, optimizer, plan, x, y, step=1) == 1
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=0, atol=1e-6)
    passes = [sam_update(model, optimizer, plan, x, y, step=s) for s in range(2, 8)]
    assert passes == [1, 2, 1, 1, 2, 1]


def test_frozen_parameters_are_neither_perturbed_nor_updated() -> None:
    model, x, y = tiny_problem()
    model.bias.requires_grad_(False)
    bias = model.bias.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def loss_of(images: torch.Tensor, targets: torch.Tensor, first_pass: bool = True) -> LossTerms:
        seen.append(model.bias.detach().clone())
        return LossTerms(classification=loss_at(model, images, targets))

    weight = model.weight.detach().clone()
    sam_step(SamPlan(SAM(optimizer, 0.5, adaptive=True)), 0, loss_of, (x, y), optimizer, None, "test")
    clip_and_step(optimizer, None, None, [model.weight])
    assert len(seen) == 2 and all(torch.equal(b, bias) for b in seen)
    assert torch.equal(model.bias, bias) and not torch.equal(model.weight, weight)


def test_sam_composes_with_gradient_clipping() -> None:
    model, x, y = tiny_problem()
    before = model.weight.detach().clone(), model.bias.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    sam_update(model, optimizer, SamPlan(SAM(optimizer, 0.5)), x, y, clip=1e-3)
    step = torch.cat([(model.weight - before[0]).flatten(), (model.bias - before[1]).flatten()])
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_memory_batches_feed_the_pass_that_asks_for_them() -> None:
    model, x, y = tiny_problem()
    memory_x, memory_y = torch.randn(4, 3), torch.randn(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = []

    def loss_of(images: torch.Tensor, targets: torch.Tensor, first_pass: bool = True) -> LossTerms:
        batches.append(len(images))
        return LossTerms(classification=loss_at(model, images, targets))

    plan = SamPlan(SAM(optimizer, 0.5), second_on_memory=True, memory_batches=iter([(memory_x, memory_y)]))
    sam_step(plan, 0, loss_of, (x, y), optimizer, None, "test")
    assert batches == [5, 4]


def test_rho_goes_linearly_to_sam_final() -> None:
    assert [sam_rho_for_task(3.0, 1.0, t, 5) for t in range(5)] == [3.0, 2.5, 2.0, 1.5, 1.0]
    assert sam_rho_for_task(3.0, None, 4, 5) == 3.0
