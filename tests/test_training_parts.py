"""Samplers, schedule stepping, metrics, checkpoints and the training step, on small inputs."""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from continual.state import checkpoints as checkpoint
from continual.config import parse_config
from continual.model.dytox import DyTox, DyToxConfig
from continual.train.epoch import BatchLoss, EpochCursor, Precision, StepOptions, evaluate, train_one_epoch
from continual.method.losses import bce_with_logits
from continual.method.metrics import EvalCounts, TaskAccuracy, average_incremental_accuracy, forgetting, task_of_class
from continual.train.optim import build_optimizer, build_scheduler, current_lr, schedule_index, set_epoch_lr
from continual.method.rehearsal import Memory
from continual.data.samplers import RepeatedAugSampler, build_train_loader

TINY = DyToxConfig(embed_dim=32, depth=2, num_heads=4, patch_size=4, input_size=8, local_up_to_layer=1,
                   head_div=True, head_div_mode=("tr",))


# ------------------------------------------------------------------ samplers
def test_repeated_aug_sampler_matches_the_published_epoch_length_and_repeats() -> None:
    sampler = RepeatedAugSampler(range(1000))
    indices = list(sampler)
    assert len(indices) == len(sampler) == 768  # 1000 // 256 * 256
    assert all(count == 3 for count in list(Counter(indices).values())[:-1])  # 256 images x 3 views
    assert indices[0] == indices[1] == indices[2]


def test_repeated_aug_sampler_shuffles_each_epoch_with_the_epoch_as_seed() -> None:
    sampler = RepeatedAugSampler(range(600))
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert first != second and list(sampler) == first


def test_small_task_never_gives_an_empty_epoch() -> None:
    """Published: a task under 256 images gives 0 samples per epoch (and a division by zero)."""
    sampler = RepeatedAugSampler(range(100))
    assert len(list(sampler)) == len(sampler) == 100
    loader = build_train_loader(TensorDataset(torch.zeros(10, 1)), batch_size=32, shuffle=True, repeated_aug=True,
                                world_size=1, rank=0, seed=0, num_workers=0, pin_memory=False)
    assert sum(len(batch[0]) for batch in loader) == 10


def test_plain_shuffle_sees_every_sample_each_epoch() -> None:
    loader = build_train_loader(TensorDataset(torch.arange(300)), batch_size=32, shuffle=True, repeated_aug=False,
                                world_size=1, rank=0, seed=0, num_workers=0, pin_memory=False)
    seen = torch.cat([batch[0] for batch in loader])
    assert len(seen) == 288 and len(set(seen.tolist())) == 288  # drop_last, no duplicates


# ------------------------------------------------------------------ schedule
def schedule_cfg(**overrides) -> argparse.Namespace:
    argv = ["--sched", "cosine", "--warmup-epochs", "1", "--warmup-lr", "1e-6", "--min-lr", "1e-5"]
    cfg = parse_config(argv)
    return argparse.Namespace(**{**vars(cfg), **overrides})


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


# ------------------------------------------------------------------- metrics
def test_eval_counts_per_task_top1_top5_old_new() -> None:
    classes_per_task = [2, 3]
    logits = torch.tensor([
        [5.0, 1, 0, 0, 0],  # target 0: right
        [5.0, 1, 0, 0, 0],  # target 1: wrong top-1, right top-5
        [0, 0, 0, 9.0, 0],  # target 3: right
        [0, 0, 9.0, 0, 0],  # target 4: wrong
    ])
    targets = torch.tensor([0, 1, 3, 4])
    counts = EvalCounts.zeros(2)
    counts.add_batch(logits, targets, task_of_class(classes_per_task))
    accuracy = TaskAccuracy.from_counts(counts)
    assert accuracy.top1 == 50.0 and accuracy.top5 == 100.0
    assert accuracy.per_task == [50.0, 50.0] and accuracy.old == 50.0 and accuracy.new == 50.0


def test_forgetting_and_average_incremental_accuracy_on_a_hand_built_matrix() -> None:
    matrix = [[90.0], [70.0, 80.0], [60.0, 85.0, 75.0]]
    # task 0: best 90 -> 60 (30); task 1: best 80 (row 1) -> 85 now (-5); mean 12.5
    assert forgetting(matrix) == pytest.approx(12.5)
    assert forgetting(matrix[:1]) == 0.0
    assert average_incremental_accuracy([90.0, 75.0, 73.0]) == pytest.approx(238 / 3)


# --------------------------------------------------------------- checkpoints
def test_task_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    model = DyTox(TINY, 3)
    model.expand(2)
    path = checkpoint.save_task_checkpoint(tmp_path, 1, model, {"lr": 0.1, "freeze_ft": ["sab"]})
    assert set(torch.load(path, weights_only=True)) >= {"model", "model_config", "nb_classes_per_task", "config"}
    loaded, state = checkpoint.load_task_checkpoint(path)
    assert loaded.nb_classes_per_task == [3, 2] and state["config"]["freeze_ft"] == ["sab"]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert list(tmp_path.rglob("*.tmp")) == []


def test_truncated_checkpoint_is_reported_with_its_path(tmp_path: Path) -> None:
    path = checkpoint.save_task_checkpoint(tmp_path, 0, DyTox(TINY, 3), {})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="checkpoint_0.pth"):
        checkpoint.load_task_checkpoint(path)


def test_memory_file_round_trip(tmp_path: Path) -> None:
    memory = Memory()
    x = np.arange(6 * 4, dtype=np.uint8).reshape(6, 2, 2)
    memory.add(x, np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 0, 0, 1, 1]), np.array([1, 2, 5]))
    path = checkpoint.save_memory(tmp_path, 3, memory)
    loaded = checkpoint.load_memory(path)
    for a, b in zip(memory.get(), loaded.get()):
        assert np.array_equal(a, b)


def test_atomic_write_keeps_the_previous_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("previous")

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        checkpoint.atomic_write(target, failing)
    assert target.read_text() == "previous" and list(tmp_path.iterdir()) == [target]


# ------------------------------------------------------------- training step
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
    stats = train_one_epoch(model, teacher, tiny_batches(), optimizer, settings(), Precision(torch.device("cpu"), False))
    assert set(stats.losses) == {"classification", "kd", "div", "total"} and stats.images == 8
    assert stats.losses["total"] == pytest.approx(stats.losses["classification"] + stats.losses["kd"] + stats.losses["div"])
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
    counts = evaluate(model, tiny_batches(1), Precision(torch.device("cpu"), False), [5])
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


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_host_memory_is_kept_for_reuse_on_glibc() -> None:
    """mallopt accepts both thresholds; in a fresh process, a freed 64 MiB tensor leaves the resident size up."""
    code = (
        "import os, torch\n"
        "from continual.runtime.host_memory import retain_freed_memory\n"
        "assert retain_freed_memory()\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "before = rss(); x = torch.ones(16 * 2**20); del x\n"
        "print(rss() - before)\n"
    )
    kept = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout)
    assert kept >= 60 * 2**20  # glibc's default would have unmapped it on free


def test_precision_warns_about_emulated_bfloat16_and_ignored_amp() -> None:
    from continual.train.epoch import cpu_has_fast_bfloat16

    notes = Precision(torch.device("cpu"), True).warnings()
    assert any("bfloat16" in note for note in notes) == (not cpu_has_fast_bfloat16())
    assert Precision(torch.device("cpu"), False).warnings() == []
    assert "no_amp is true" in Precision(torch.device("cpu"), False).warnings(amp_requested_but_disabled=True)[0]
