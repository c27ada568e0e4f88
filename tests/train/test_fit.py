"""A phase's setup: the mixer and the criterion, without and with mixup."""
from __future__ import annotations

from continual.config import parse_config


def test_without_mixup_the_plain_targets_and_criterion_are_used() -> None:
    from continual.config.settings import MixupSettings, settings_of
    from continual.method.losses import bce_with_logits, soft_target_cross_entropy
    from continual.train.fit import build_mixer

    plain = settings_of(MixupSettings, parse_config(["--mixup", "0", "--cutmix", "0", "--bce-loss"]))
    assert not plain.active and build_mixer(plain, 10) is None
    mixed = settings_of(MixupSettings, parse_config(["--mixup", "0.8", "--cutmix", "0", "--no-bce-loss"]))
    mixer = build_mixer(mixed, 10)
    assert mixer is not None and mixer.num_classes == 10 and mixer.mixup_alpha == 0.8
    from continual.method.losses import build_criterion
    assert build_criterion(True, 0.1, False) is bce_with_logits
    assert build_criterion(False, 0.1, True) is soft_target_cross_entropy


def test_sams_memory_passes_draw_batches_of_replay_memory_images() -> None:
    from conftest import REPO_ROOT
    from continual.config import settings_from
    from continual.train.fit import memory_batch_size

    demo = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"),
            str(REPO_ROOT / "options/model/demo_tiny.yaml")]
    assert memory_batch_size(settings_from(parse_config(demo)), 1) == 32  # the task's batch
    assert memory_batch_size(settings_from(parse_config(demo + ["--replay-memory", "8"])), 1) == 8
    assert memory_batch_size(settings_from(parse_config(demo + ["--incremental-batch-size", "16"])), 1) == 16
