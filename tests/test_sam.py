"""SAM, ASAM and look-SAM steps against hand-computed updates; DyTox+ / DyTox++ option files end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import main
from continual.config import ConfigError, parse_config
from continual.train.epoch import SamPlan, clip_and_step, sam_step
from continual.method.losses import LossTerms
from continual.method.sam import SAM, sam_rho_for_task

OPTIONS = Path(__file__).resolve().parents[1] / "options"


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
    return dict(zip(values, torch.autograd.grad(loss, list(values.values()))))


def sam_update(model: nn.Module, optimizer: torch.optim.Optimizer, plan: SamPlan, x, y, step: int = 0,
               clip: float | None = None) -> int:
    """One training step through the engine's SAM path; returns the number of forward passes."""
    passes = []

    def loss_of(images: torch.Tensor, targets: torch.Tensor) -> LossTerms:
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

    def loss_of(images: torch.Tensor, targets: torch.Tensor) -> LossTerms:
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

    def loss_of(images: torch.Tensor, targets: torch.Tensor) -> LossTerms:
        batches.append(len(images))
        return LossTerms(classification=loss_at(model, images, targets))

    plan = SamPlan(SAM(optimizer, 0.5), second_on_memory=True, memory_batches=iter([(memory_x, memory_y)]))
    sam_step(plan, 0, loss_of, (x, y), optimizer, None, "test")
    assert batches == [5, 4]


def test_rho_goes_linearly_to_sam_final() -> None:
    assert [sam_rho_for_task(3.0, 1.0, t, 5) for t in range(5)] == [3.0, 2.5, 2.0, 1.5, 1.0]
    assert sam_rho_for_task(3.0, None, 4, 5) == 3.0


@pytest.mark.parametrize(("flags", "message"), [
    (["--sam-adaptive"], "sam_rho > 0"),
    (["--look-sam-k", "2"], "sam_rho > 0"),
    (["--sam-rho", "1", "--sam-first", "memory", "--sam-second", "memory"], "both be 'memory'"),
    (["--sam-rho", "1", "--look-sam-k", "2", "--sam-first", "memory"], "look-SAM"),
])
def test_combinations_the_paper_does_not_define_are_rejected(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(flags)


@pytest.mark.parametrize("model_file", ["cifar_dytox_plus", "cifar_dytox_plusplus", "imagenet_dytox_plus"])
def test_published_dytox_plus_option_files_run_two_tasks(tmp_path: Path, model_file: str) -> None:
    """The published model options on the offline digits, shortened by flags (few images, one epoch)."""
    argv = [
        "--options", str(OPTIONS / "data/digits_demo.yaml"), str(OPTIONS / f"model/{model_file}.yaml"),
        "--max-task", "2", "--base-epochs", "1", "--epochs", "1", "--finetuning-epochs", "1",
        "--train-per-class", "16", "--memory-size", "20", "--input-size", "32", "--num-workers", "0",
        "--name", "plus", "--output-basedir", str(tmp_path), "--log-dir", str(tmp_path / "logs"),
        "--no-amp",  # the ImageNet files' mixed precision would be emulated bfloat16 on this CPU
    ]
    cfg = parse_config(argv)
    assert cfg.mixup == 0.8 and cfg.sam_rho == (3.0 if model_file.endswith("plusplus") else 0.0)
    assert main.main(argv) == 0
    log = next(tmp_path.glob("digits/demo/*_plus/log.jsonl"))
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["task"] for r in rows] == [0, 1] and rows[1]["classes_seen"] == 4
    epochs = [json.loads(line) for line in log.with_name("epochs.jsonl").read_text().splitlines()]
    assert {e["phase"] for e in epochs} == {"train", "finetune"}


def test_without_mixup_the_plain_targets_and_criterion_are_used() -> None:
    from continual.method.losses import bce_with_logits, soft_target_cross_entropy
    from continual.config.settings import MixupSettings, settings_of
    from continual.train.fit import build_mixer

    plain = settings_of(MixupSettings, parse_config(["--mixup", "0", "--cutmix", "0", "--bce-loss"]))
    assert not plain.active and build_mixer(plain, 10) is None
    mixed = settings_of(MixupSettings, parse_config(["--mixup", "0.8", "--cutmix", "0", "--no-bce-loss"]))
    mixer = build_mixer(mixed, 10)
    assert mixer is not None and mixer.num_classes == 10 and mixer.mixup_alpha == 0.8
    from continual.method.losses import build_criterion
    assert build_criterion(True, 0.1, False) is bce_with_logits
    assert build_criterion(False, 0.1, True) is soft_target_cross_entropy
