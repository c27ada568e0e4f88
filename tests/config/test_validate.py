"""Cross-option validation: a refused combination is a ConfigError naming the option, raised while parsing."""
from __future__ import annotations

from pathlib import Path

import pytest
from support import with_values

from continual.config import ConfigError, parse_config, settings_from
from continual.config.validate import validate_config


@pytest.mark.parametrize("changes,option", [
    ({"class_order": [0, 1, 1, 3]}, "class_order"),
    ({"class_order": [[0, 1, 2], [2, 2, 0]]}, "class_order"),
    ({"class_order": [1, 2, 3]}, "class_order"),
    ({"freeze_task": ["old_heads", "encoder"]}, "freeze_task"),
    ({"freeze_ft": ["sabs"]}, "freeze_ft"),
    ({"rehearsal": "icarl"}, "rehearsal"),
    ({"head_div_mode": ["train"]}, "head_div_mode"),
    ({"sam_mode": ["tr", "eval"]}, "sam_mode"),
    ({"global_memory": True, "distributed_memory": True}, "global_memory"),
    ({"memory_size": -1}, "memory_size"),
    ({"increment": 0}, "increment"),
    ({"initial_increment": -5}, "initial_increment"),
    ({"incremental_batch_size": 0}, "incremental_batch_size"),
    ({"validation": 1.0}, "validation"),
    ({"validation": -0.1}, "validation"),
    ({"validation_test_transform": True}, "validation_test_transform"),
    ({"oversample_memory_ft": 0}, "oversample_memory_ft"),
    ({"oversample_memory": -1}, "oversample_memory"),
])
def test_validate_config_errors(changes: dict[str, object], option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        validate_config(with_values(**changes))


def test_validation_runs_during_parsing() -> None:
    with pytest.raises(ConfigError, match="class_order"):
        parse_config(["--class-order", "0", "1", "1"])
    with pytest.raises(ConfigError, match="distributed_memory"):
        parse_config(["--global-memory", "--distributed-memory"])


def test_mean_and_std_take_one_value_per_channel() -> None:
    with pytest.raises(ConfigError, match=r"option 'mean' takes three values \(R G B\), got 2: \[0.5, 0.4\]"):
        parse_config(["--mean", "0.5", "0.4"])
    with pytest.raises(ConfigError, match="option 'std' takes three values"):
        validate_config(with_values(std=[0.2, 0.2, 0.2, 0.2]))
    with pytest.raises(ConfigError, match=r"option 'std' must be > 0 \(each value\), got \[0.2, 0.0, 0.2\]"):
        parse_config(["--std", "0.2", "0", "0.2"])
    data = settings_from(parse_config(["--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.2", "0.1"])).data
    assert data.mean == (0.5, 0.4, 0.3) and data.std == (0.2, 0.2, 0.1)
    assert settings_from(parse_config([])).data.mean is None  # the dataset's own, unless given


def test_valid_configuration_passes() -> None:
    validate_config(with_values(class_order=[2, 0, 1], freeze_task=["all"],
                                rehearsal="furthest_token"))


# --------------------------------------------------------------------------- #
# Several class orders
# --------------------------------------------------------------------------- #

def test_orders_of_different_lengths_are_refused_at_parse_time(tmp_path: Path) -> None:
    options = tmp_path / "orders.yaml"
    options.write_text("class_order: [[0, 1, 2], [1, 0]]\n")
    with pytest.raises(ConfigError, match="class_order.*different lengths"):
        parse_config(["--options", str(options)])


@pytest.mark.parametrize("flags", [["--resume", "somewhere"], ["--eval"], ["--start-task", "2"]])
def test_one_folder_options_are_refused_with_several_orders(flags: list[str], tmp_path: Path) -> None:
    options = tmp_path / "orders.yaml"
    options.write_text("class_order: [[0, 1, 2], [2, 0, 1], [1, 2, 0]]\n")
    with pytest.raises(ConfigError, match=f"{flags[0]}.*class_order holds 3 orders.*--auto-resume"):
        parse_config(flags + ["--options", str(options)])


# --------------------------------------------------------------------------- #
# SAM options
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize(("flags", "message"), [
    (["--sam-adaptive"], "sam_rho > 0"),
    (["--look-sam-k", "2"], "sam_rho > 0"),
    (["--sam-rho", "1", "--sam-first", "memory", "--sam-second", "memory"], "both be 'memory'"),
    (["--sam-rho", "1", "--look-sam-k", "2", "--sam-first", "memory"], "look-SAM"),
])
def test_combinations_the_paper_does_not_define_are_rejected(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(flags)


# --------------------------------------------------------------------------- #
# DyTox or the baseline, encoders, POD: refused before any work (when the settings are made)
# --------------------------------------------------------------------------- #

DEMO = ["--options", "options/data/digits_demo.yaml", "options/model/demo_tiny.yaml"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--no-dytox"], r"freeze_task.*\['old_task_tokens', 'old_heads'\] are not parts of the convit baseline"),
    (["--no-dytox", "--freeze-task", "--freeze-ft", "sab", "--model", "vit"], "'sab'.* not parts of the vit"),
    (["--freeze-ft", "backbone"], "not parts of DyTox"),
    (["--model", "vit"], "DyTox's encoder is the ConViT"),
    (["--no-dytox", "--freeze-task", "--freeze-ft", "--resnet"], "'resnet' is DyTox's encoder"),
    (["--no-dytox", "--freeze-task", "--freeze-ft", "--model", "vit", "--norm", "scale"], "keeps LayerNorm"),
    (["--no-dytox", "--freeze-task", "--freeze-ft", "--pod", "1"], "the baseline has none"),
    (["--pod", "1", "--pod-scales", "1", "2"], "gives NaN at scales > 1"),
    (["--pod", "1", "--pod-scales", "0"], r"'pod_scales' must be >= 1 \(each value\), got \[0\]"),
    (["--pod", "1", "--local-up-to-layer", "1"], "at least 2 SABs"),
    (["--no-class-attention"], "class_attention must be true"),
    (["--encoder", "resnet18_cifar"], "option 'encoder' 'resnet18_cifar' is no encoder of DyTox"),
    (["--sched", "multistep"], "option 'sched' multistep needs decay_milestones: the epochs where"),
    (["--decay-milestones", "10"], "option 'decay_milestones' is read by sched multistep only, not 'cosine'"),
    (["--sched", "multistep", "--decay-milestones", "63", "49"], r"'decay_milestones' must increase: \[63, 49\]"),
    (["--opt", "lamb", "--opt-impl", "fused"], r"'opt_impl' fused is for torch's adam, adamw.*'lamb' steps its own"),
])
def test_what_a_method_does_not_have_is_refused(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from(parse_config(DEMO + flags))


def test_the_resnet_and_the_baseline_settings() -> None:
    resnet = settings_from(parse_config(DEMO + ["--resnet", "--pod", "1", "--pod-scales", "1", "2"])).model
    assert (resnet.encoder, resnet.embed_dim, resnet.num_heads, resnet.dytox) == ("resnet18", 504, 12, True)
    baseline = settings_from(parse_config(DEMO + ["--no-dytox", "--freeze-task", "--freeze-ft", "backbone",
                                                  "--model", "vit", "--exact-freeze"])).model
    assert (baseline.encoder, baseline.dytox, baseline.exact_freeze, baseline.embed_dim) == ("vit", False, True, 64)
    cifar = settings_from(parse_config(DEMO + ["--no-dytox", "--freeze-task", "--freeze-ft", "backbone", "--encoder",
                                               "resnet18_cifar"])).model
    assert (cifar.encoder, cifar.embed_dim) == ("resnet18_cifar", 512)  # its pooled width, whatever the options say
