"""float16 loss scaling with a real ``torch.amp.GradScaler``: finite steps, skipped overflowing steps, SAM
under scaling, and the scaler's state across a resume of a phase.

``Precision`` refuses float16 on the CPU (``--amp-dtype float16`` is for CUDA), so these tests take the
same autocast and scaler through ``Float16``, a ``Precision`` without that refusal whose scaler starts from
a chosen scale. On ``batches`` a fresh TINY DyTox has gradients of up to about 1.5: float16 (largest value
65504) overflows at a first step at 2**16, not at 2**14, and later, as the gradients change, at 2**16 to
2**19. The tests assert what a scaler must do at each step, not where the overflows fall, which differs a
little from the CPU to CUDA.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch
from support import TINY, PhaseControl, Stopped, schedule_cfg
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from continual.config import parse_config, settings_from
from continual.config.errors import ConfigError
from continual.config.settings import Settings
from continual.method.dytox_objective import BatchLoss, batch_loss_of
from continual.method.losses import LossTerms, bce_with_logits
from continual.method.sam import SAM
from continual.model.dytox import DyTox
from continual.report.records import EpochProgress
from continual.runtime.distributed import DistContext
from continual.state.saved_runs import Position
from continual.train import fit
from continual.train.epoch import (
    EpochCursor,
    Precision,
    SamPlan,
    StepOptions,
    batch_loss,
    clip_and_step,
    sam_step,
    train_one_epoch,
)
from continual.train.fit import Phase, PhaseTrainer, Resume
from continual.train.loaders import Loaders
from continual.train.optim import build_optimizer

pytestmark = pytest.mark.gpu_check

LR = 1e-3


@dataclasses.dataclass(frozen=True)
class Float16(Precision):
    """float16 autocast on any device, loss-scaled from ``init_scale``, growing after ``growth_interval``
    finite steps (torch's defaults: 2**16 and 2000)."""

    amp: bool = True
    amp_dtype: str = "float16"
    init_scale: float = 2.0**16
    growth_interval: int = 2000

    def __post_init__(self) -> None:  # no refusal of float16 on the CPU
        pass

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, init_scale=self.init_scale,
                                    growth_interval=self.growth_interval)


def loss_settings() -> BatchLoss:
    return BatchLoss(criterion=bce_with_logits, auto_kd=True, kd_weight=0.0, tau=1.0, head_div=0.1)


def batches(n: int, device: torch.device) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 8, 8, generator=generator).to(device), torch.tensor([0, 1, 3, 4], device=device))
            for _ in range(n)]


def tiny_model(device: torch.device) -> DyTox:
    torch.manual_seed(0)
    return DyTox(TINY, 5).to(device)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def weights(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in trainable(model)]


def same(first: list[Tensor], second: list[Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def adam_steps(optimizer: torch.optim.Optimizer) -> int:
    """AdamW's step count (0 before its first step)."""
    states = list(optimizer.state.values())
    return int(states[0]["step"]) if states else 0


def same_state(first: dict, second: dict) -> bool:
    """Two optimiser ``state`` entries hold the same tensors (AdamW: step, exp_avg, exp_avg_sq)."""
    return first.keys() == second.keys() and all(
        first[i].keys() == second[i].keys() and all(torch.equal(first[i][k], second[i][k]) for k in first[i])
        for i in first)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a step may change: the scale, the trainable weights, AdamW's state."""

    scale: float
    weights: list[Tensor]
    state: dict
    steps: int

    @classmethod
    def of(cls, scaler: torch.amp.GradScaler, model: nn.Module, optimizer: torch.optim.Optimizer) -> Snapshot:
        return cls(scaler.get_scale(), weights(model), copy.deepcopy(optimizer.state_dict()["state"]),
                   adam_steps(optimizer))


@dataclasses.dataclass(frozen=True)
class StepRecord:
    scale_before: float
    scale_after: float
    stepped: bool  # the optimiser stepped (AdamW's count went up)
    moved: bool  # some trainable weight changed
    state_kept: bool  # AdamW's state is bit-identical to before the step

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot) -> StepRecord:
        return cls(before.scale, after.scale, after.steps > before.steps, not same(before.weights, after.weights),
                   same_state(before.state, after.state))


def recorded_epoch(model: nn.Module, loader: list, optimizer: torch.optim.Optimizer, precision: Precision,
                   options: StepOptions) -> tuple[list[StepRecord], dict[str, float]]:
    """``train_one_epoch``, with what each step did to the scale, the weights and AdamW's state."""
    scaler = options.scaler
    assert scaler is not None
    snapshots = [Snapshot.of(scaler, model, optimizer)]

    def after_step(progress: EpochProgress, read_sums: Callable[[], dict[str, float]]) -> None:
        snapshots.append(Snapshot.of(scaler, model, optimizer))

    stats = train_one_epoch(model, None, loader, optimizer, loss_settings(), precision, options,
                            EpochCursor(where="test", after_step=after_step))
    return [StepRecord.between(a, b) for a, b in itertools.pairwise(snapshots)], stats.losses


def test_a_finite_scaled_step_is_the_hand_scaled_step_and_the_scale_doubles_after_growth_interval(
        device: torch.device) -> None:
    """Scale 256, growth interval 2: two finite steps give the weights of (256 * loss).backward(),
    grad / 256, AdamW step, done by hand, bit for bit; the scale is 256 after the first step, 512 after
    the second (tracker back to 0)."""
    precision = Float16(device)
    model = tiny_model(device)
    by_hand = copy.deepcopy(model)
    start = weights(model)
    optimizer = build_optimizer(model, schedule_cfg(), LR)
    scaler = torch.amp.GradScaler(device.type, init_scale=256.0, growth_interval=2)
    records, losses = recorded_epoch(model, batches(2, device), optimizer, precision, StepOptions(scaler=scaler))
    assert [(r.scale_before, r.scale_after) for r in records] == [(256.0, 256.0), (256.0, 512.0)]
    assert scaler.state_dict()["_growth_tracker"] == 0 and np.isfinite(losses["total"])

    hand_optimizer = build_optimizer(by_hand, schedule_cfg(), LR)
    for images, targets in batches(2, device):
        hand_optimizer.zero_grad(set_to_none=True)
        (256.0 * batch_loss(by_hand, None, images, targets, loss_settings(), precision).total).backward()
        for param in trainable(by_hand):
            if param.grad is not None:
                param.grad.div_(256.0)
        hand_optimizer.step()
    assert same(weights(model), weights(by_hand))
    # Each of AdamW's first two steps moves a weight by about lr, plus lr * 0.05 * w of weight decay.
    largest = max((a - b).abs().max().item() for a, b in zip(weights(model), start, strict=True))
    assert 1.9 * LR < largest < 2.2 * LR


def test_an_overflowing_step_is_skipped_and_halves_the_scale_and_training_carries_on(device: torch.device) -> None:
    """Scale 2**14 doubling after every finite step: it climbs until float16 overflows; that step is
    skipped (weights and AdamW's state bit-identical, the scale halved exactly), the loss stays finite (no
    error), and the next steps train again."""
    precision = Float16(device)
    model = tiny_model(device)
    optimizer = build_optimizer(model, schedule_cfg(), LR)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**14, growth_interval=1)
    records, losses = recorded_epoch(model, batches(8, device), optimizer, precision, StepOptions(scaler=scaler))
    assert len(records) == 8 and np.isfinite(losses["total"])
    assert records[0] == StepRecord(2.0**14, 2.0**15, stepped=True, moved=True, state_kept=False)
    for record in records:
        if record.stepped:
            assert record.moved and not record.state_kept and record.scale_after == 2 * record.scale_before
        else:
            assert not record.moved and record.state_kept and record.scale_after == record.scale_before / 2
    kinds = "".join("S" if r.stepped else "x" for r in records)  # S: stepped, x: skipped
    assert "Sx" in kinds and "xS" in kinds, kinds  # a skip after trained steps, then training again
    assert adam_steps(optimizer) == kinds.count("S")


def sam_loss(model: nn.Module, precision: Precision, boost_first: float = 1.0, boost_second: float = 1.0,
             seen: list | None = None):
    """SAM's loss of a batch; ``boost_*`` multiply one pass's loss (its gradients overflow float16 under
    scaling while the loss stays finite); ``seen`` collects the weights each pass runs at."""

    def loss_of(images: Tensor, targets: Tensor, first_pass: bool = True) -> LossTerms:
        if seen is not None:
            seen.append(weights(model))
        terms = batch_loss(model, None, images, targets, loss_settings(), precision, first_pass)
        boost = boost_first if first_pass else boost_second
        return dataclasses.replace(terms, classification=terms.classification * boost)

    return loss_of


def test_sam_ascends_with_unscaled_gradients_and_restores_the_weights(device: torch.device) -> None:
    """With a GradScaler at 2**10 the SAM perturbation equals the one without scaling (float16 rounding
    apart) and has norm rho = 0.05; after the second pass the weights are back to w (w + e - e: within two
    float32 roundings)."""
    precision = Float16(device)
    perturbations, restored = [], []
    for scaler in (torch.amp.GradScaler(device.type, init_scale=2.0**10), None):
        model = tiny_model(device)
        optimizer = build_optimizer(model, schedule_cfg(), LR)
        seen: list[list[Tensor]] = []
        sam_step(SamPlan(SAM(optimizer, 0.05)), 0, sam_loss(model, precision, seen=seen), batches(1, device)[0],
                 optimizer, scaler, "test")
        assert len(seen) == 2
        perturbations.append([at_e - at_w for at_e, at_w in zip(seen[1], seen[0], strict=True)])
        restored.append((seen[0], weights(model)))
    scaled, plain = (torch.cat([e.flatten() for e in p]) for p in perturbations)
    assert torch.linalg.vector_norm(scaled).item() == pytest.approx(0.05, rel=1e-4)
    torch.testing.assert_close(scaled, plain, rtol=0, atol=1e-3 * 0.05)
    for w, after in restored:
        for a, b in zip(after, w, strict=True):
            torch.testing.assert_close(a, b, rtol=2.4e-7, atol=1e-8)  # two float32 roundings


def sam_steps(model: nn.Module, optimizer: torch.optim.Optimizer, plan: SamPlan, scaler: torch.amp.GradScaler,
              losses: list, first_step: int = 0) -> list[tuple[float, bool, int]]:
    """Steps ``first_step``, ... of ``sam_step`` + ``clip_and_step``, the i-th with ``losses[i]``: (scale
    after, weights moved, forward passes) per step."""
    out = []
    device = next(model.parameters()).device
    passes: list[int] = []
    counting = model.register_forward_pre_hook(lambda module, args: passes.append(1))
    steps = range(first_step, first_step + len(losses))
    for step, loss_of, batch in zip(steps, losses, batches(steps.stop, device)[first_step:], strict=True):
        passes.clear()
        before = weights(model)
        sam_step(plan, step, loss_of, batch, optimizer, scaler, f"step {step}")
        clip_and_step(optimizer, scaler, 1.0, trainable(model))
        assert all(torch.isfinite(p).all() for p in trainable(model))
        out.append((scaler.get_scale(), not same(before, weights(model)), len(passes)))
    counting.remove()
    return out


def test_an_overflowing_first_sam_pass_skips_the_step_even_when_the_second_pass_would_not_overflow(
        device: torch.device) -> None:
    """Scale 256; the first pass's gradients overflow (its loss boosted 2**12), the second pass is on a
    memory batch that does not: no ascent, no second pass, the weights and AdamW untouched, the scale
    halved, every step. Before the fix every such step trained on the memory gradient at w and the scale
    stayed at 256."""
    precision = Float16(device)
    model = tiny_model(device)
    optimizer = build_optimizer(model, schedule_cfg(), LR)
    memory = itertools.repeat((batches(2, device)[1][0], torch.tensor([0, 1, 2, 2], device=device)))
    plan = SamPlan(SAM(optimizer, 0.05), second_on_memory=True, memory_batches=memory)
    scaler = torch.amp.GradScaler(device.type, init_scale=256.0, growth_interval=1000)
    start = weights(model)
    overflowing = sam_loss(model, precision, boost_first=2.0**12)
    assert sam_steps(model, optimizer, plan, scaler, [overflowing] * 3) == [(128.0, False, 1), (64.0, False, 1),
                                                                           (32.0, False, 1)]
    assert same(weights(model), start) and adam_steps(optimizer) == 0
    assert sam_steps(model, optimizer, plan, scaler, [sam_loss(model, precision)]) == [(32.0, True, 2)]


def test_an_overflowing_second_look_sam_pass_skips_the_step_and_keeps_the_previous_direction(
        device: torch.device) -> None:
    """look-SAM k = 2, scale 256: full step 0 and single pass 1 train; full step 2's second pass overflows
    (its loss boosted 2**12): skipped, scale 128, the direction of step 0 kept (bit-identical), so step 3
    reuses it and trains. Before the fix step 2 stored a NaN direction and step 3 was skipped too
    (scale 64): one overflow cost k steps."""
    precision = Float16(device)
    model = tiny_model(device)
    optimizer = build_optimizer(model, schedule_cfg(), LR)
    plan = SamPlan(SAM(optimizer, 0.05, look_k=2, look_alpha=0.5))
    scaler = torch.amp.GradScaler(device.type, init_scale=256.0, growth_interval=1000)
    plain, overflowing = sam_loss(model, precision), sam_loss(model, precision, boost_second=2.0**12)
    assert sam_steps(model, optimizer, plan, scaler, [plain, plain]) == [(256.0, True, 2), (256.0, True, 1)]
    direction = copy.deepcopy(plan.sam.state_dict())
    steps_before, before = adam_steps(optimizer), weights(model)
    assert sam_steps(model, optimizer, plan, scaler, [overflowing], first_step=2)[0][0] == 128.0
    assert adam_steps(optimizer) == steps_before  # skipped; w + e - e: within float32 rounding of w
    for a, b in zip(weights(model), before, strict=True):
        torch.testing.assert_close(a, b, rtol=2.4e-7, atol=1e-8)  # two float32 roundings
    kept = plan.sam.state_dict()["orthogonal"]
    assert all(torch.equal(a, b) for a, b in zip(kept, direction["orthogonal"], strict=True) if a is not None)
    assert [a is None for a in kept] == [b is None for b in direction["orthogonal"]]
    # step 3 (k = 2: a single pass) reuses the kept direction
    assert sam_steps(model, optimizer, plan, scaler, [plain], first_step=3) == [(128.0, True, 1)]
    assert adam_steps(optimizer) == steps_before + 1


def test_a_look_sam_epoch_under_float16_skips_overflows_and_never_stops_on_a_non_finite_loss(
        device: torch.device) -> None:
    """look-SAM in ``train_one_epoch``, scale 2**14 doubling after each finite step: the overflowing
    steps are skipped and halve the scale, the others train and double it; no error."""
    precision = Float16(device)
    model = tiny_model(device)
    optimizer = build_optimizer(model, schedule_cfg(), LR)
    plan = SamPlan(SAM(optimizer, 0.05, look_k=2, look_alpha=0.5))
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**14, growth_interval=1)
    records, losses = recorded_epoch(model, batches(8, device), optimizer, precision,
                                     StepOptions(scaler=scaler, clip_grad=1.0, sam=plan))
    assert np.isfinite(losses["total"]) and all(torch.isfinite(p).all() for p in trainable(model))
    for record in records:
        assert record.scale_after == (2 * record.scale_before if record.stepped else record.scale_before / 2)
        assert record.state_kept != record.stepped
    kinds = "".join("S" if r.stepped else "x" for r in records)
    assert "Sx" in kinds and "xS" in kinds, kinds


# -------------------------------------------------------------- the scaler across a resume (fit.py)

def phase_settings() -> Settings:
    """float16 AMP, AdamW, clipping, a cosine schedule, batches of 4, no augmentation."""
    return settings_from(parse_config(["--amp", "--amp-dtype", "float16", "--batch-size", "4", "--num-workers", "0",
                                       "--no-repeated-aug", "--no-pin-mem", "--mixup", "0", "--cutmix", "0",
                                       "--clip-grad", "1.0", "--warmup-epochs", "0"]))


def phase_run(device: torch.device, stop_at: int, resume: dict | None = None) -> dict:
    """A 2-epoch phase of 6 batches per epoch with ``phase_settings``, stopped at the ``stop_at``-th stop
    question; returns the state saved there. ``resume`` (a saved state) continues from it with a new model,
    trainer, scaler and generator."""
    settings = phase_settings()
    ctx = DistContext(0, 1, 0, device)
    model = tiny_model(device)
    if resume is not None:
        resume = copy.deepcopy(resume)  # AdamW counts its steps in the tensors it loaded: keep the saved ones
        model.load_state_dict(resume["model"])
    rng = np.random.default_rng(0)
    control = PhaseControl(model, rng, stop_at)
    trainer = PhaseTrainer(settings, ctx, Loaders(settings.loader, settings.recipe, ctx), rng, 1, control)
    generator = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(24, 3, 8, 8, generator=generator), torch.randint(0, 5, (24,),
                            generator=generator), torch.zeros(24, dtype=torch.long))
    objective = batch_loss_of(settings.loss, settings.mixup.active, model.nb_classes_per_task)
    phase = Phase(0, "train", dataset, objective, 1e-3, 2, True, None, 2)
    with pytest.raises(Stopped):
        trainer.fit(model, phase, None if resume is None else Resume(resume["position"], resume["fit"],
                                                                     resume["rng"]))
    assert control.saved is not None
    return control.saved


def test_a_phase_resumed_inside_an_epoch_continues_the_scale_and_matches_the_uninterrupted_run(
        device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    """PhaseTrainer.fit with torch's scaler (from 2**16, growth every 2000 finite steps) stopped after step
    3 of epoch 0 (an overflow already skipped, the scale below 2**16) and resumed with a new model, trainer
    and scaler from the saved run state, stopped again after step 2 of epoch 1, equals the run stopped there
    uninterrupted: scale, growth tracker, AdamW's state and the weights bit for bit. Resumed without the
    scaler's state, it does not."""
    if device.type == "cpu":  # the options cannot select float16 there: the same scaler through Float16
        with pytest.raises(ConfigError, match="float16 is for CUDA"):
            fit.precision_of(phase_settings().precision, device)
        monkeypatch.setattr(fit, "precision_of", lambda settings, dev: Float16(dev))
    first = phase_run(device, stop_at=4)
    assert first["position"] == Position(0, "train", 0, 4)
    scaler = first["fit"].scaler
    assert scaler is not None and scaler["scale"] < 2.0**16 and scaler["growth_interval"] == 2000
    assert first["fit"].optimizer["state"][0]["step"] < 4  # at least one of the 4 steps overflowed
    uninterrupted = phase_run(device, stop_at=9)
    resumed = phase_run(device, stop_at=5, resume=first)
    assert uninterrupted["position"] == resumed["position"] == Position(0, "train", 1, 3)
    assert resumed["fit"].scaler == uninterrupted["fit"].scaler
    for name, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    saved, again = uninterrupted["fit"].optimizer["state"], resumed["fit"].optimizer["state"]
    assert same_state(saved, again)
    without_scaler = dict(first, fit=dataclasses.replace(first["fit"], scaler=None))
    fresh_scale = phase_run(device, stop_at=5, resume=without_scaler)  # starts again at 2**16: more skips
    assert fresh_scale["fit"].optimizer["state"][0]["step"] < uninterrupted["fit"].optimizer["state"][0]["step"]
    assert not all(torch.equal(fresh_scale["model"][name], value) for name, value in uninterrupted["model"].items())
