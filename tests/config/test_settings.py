"""Typed settings and derived values: AMP, scaled learning rates, per-task values, the memory mode."""
from __future__ import annotations

from pathlib import Path

import pytest
from support import write_yaml

from continual.config import parse_config, settings_from
from continual.config.settings import MemorySettings, RecipeSettings, amp_enabled, scaled_lr, settings_of


def test_amp_and_no_amp(tmp_path: Path) -> None:
    assert amp_enabled(parse_config(["--amp"])) is True
    assert amp_enabled(parse_config(["--amp", "--no-amp"])) is False
    assert amp_enabled(parse_config([])) is False  # unset: off without --amp
    assert amp_enabled(parse_config(["--no-amp", "--amp"])) is True  # one switch: the last spelling wins
    published_imagenet = write_yaml(tmp_path / "o.yaml", "no_amp: false\n")
    assert amp_enabled(parse_config(["--options", published_imagenet])) is True  # no_amp false: on, as published
    assert amp_enabled(parse_config(["--options", published_imagenet, "--no-amp"])) is False
    published_cifar = write_yaml(tmp_path / "c.yaml", "no_amp: true\n")
    assert amp_enabled(parse_config(["--options", published_cifar])) is False
    assert amp_enabled(parse_config(["--options", published_cifar, "--amp"])) is True  # the flag wins
    both = write_yaml(tmp_path / "b.yaml", "amp: true\nno_amp: true\n")
    assert amp_enabled(parse_config(["--options", both])) is False  # a file that contradicts itself: float32
    assert settings_from(parse_config(["--options", both])).precision.amp_overridden  # and a warning


# --------------------------------------------------------------------------- #
# Per-task derived values
# --------------------------------------------------------------------------- #

def test_scaled_lr_values() -> None:
    assert scaled_lr(5e-4, 128, 2) == pytest.approx(2.5e-4)
    assert scaled_lr(5e-4, 128, 1) == pytest.approx(1.25e-4)
    assert scaled_lr(5e-4, 128, 1, accum_steps=4) == pytest.approx(5e-4)
    assert scaled_lr(5e-5, 512, 1) == pytest.approx(5e-5)


def test_per_task_values_do_not_mutate_config() -> None:
    cfg = parse_config(["--lr", "1e-3", "--incremental-lr", "2e-4", "--batch-size", "256",
                        "--incremental-batch-size", "64", "--base-epochs", "9", "--epochs", "4"])
    before = vars(cfg).copy()
    assert settings_of(RecipeSettings, cfg).lr_of(0, world_size=2) == pytest.approx(1e-3 * 256 * 2 / 512)
    assert settings_of(RecipeSettings, cfg).lr_of(1, world_size=2) == pytest.approx(2e-4 * 64 * 2 / 512)
    recipe = settings_of(RecipeSettings, cfg)
    assert recipe.batch_size_of(0) == 256 and recipe.batch_size_of(3) == 64
    assert settings_of(RecipeSettings, cfg).epochs_of(0) == 9 and settings_of(RecipeSettings, cfg).epochs_of(1) == 4
    assert settings_of(RecipeSettings, cfg).finetuning_lr_of(1, world_size=1) == pytest.approx(5e-5 * 64 / 512)
    assert vars(cfg) == before


def test_incremental_lr_defaults_to_lr() -> None:
    cfg = parse_config(["--lr", "1e-3"])
    assert settings_of(RecipeSettings, cfg).lr_of(2, world_size=1) == pytest.approx(1e-3 * 128 / 512)


# --------------------------------------------------------------------------- #
# Memory mode
# --------------------------------------------------------------------------- #

def test_published_memory_mode_is_the_multi_process_default() -> None:
    memory = settings_of(MemorySettings, parse_config([]))
    assert not (memory.global_memory or memory.distributed_memory or memory.published_memory)
    assert memory.mode(2) == "published" and memory.mode(1) == "global"


def test_the_published_readme_s_per_process_memory_is_the_erratum_s_distributed_memory_of_twice_the_size() -> None:
    """--memory-size 1000 kept per process on 2 GPUs (the published README) and --distributed-memory --memory-size
    2000 give each process the same budget, herded on its own features: the same run under two names."""
    published = settings_of(MemorySettings, parse_config(["--memory-size", "1000"]))
    distributed = settings_of(MemorySettings, parse_config(["--memory-size", "2000", "--distributed-memory"]))
    assert (published.mode(2), distributed.mode(2)) == ("published", "distributed")
    assert published.budget(2) == distributed.budget(2) == 1000
    assert "global" not in (published.mode(2), distributed.mode(2))  # each process selects its own exemplars
