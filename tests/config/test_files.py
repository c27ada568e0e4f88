"""Option files: YAML values and their errors, the project's option files, saving a configuration."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support import with_values, write_yaml

from conftest import REPO_ROOT
from continual.config import ConfigError, parse_config
from continual.config.files import config_to_dict, load_config_file, save_config
from continual.config.settings import settings_from
from continual.config.validate import check_runnable, validate_config

DATA_FILES = sorted((REPO_ROOT / "options" / "data").glob("*.yaml"))
MODEL_FILES = sorted((REPO_ROOT / "options" / "model").glob("*.yaml"))


# Realistic runs: data setting + class order + model version.
COMBOS = [
    ("data/cifar100_10-10.yaml", "data/cifar100_order1.yaml", "model/cifar_dytox.yaml"),
    ("data/cifar100_5-5.yaml", "data/cifar100_order2.yaml", "model/cifar_dytox_plus.yaml"),
    ("data/cifar100_2-2.yaml", "data/cifar100_order3.yaml", "model/cifar_dytox_plusplus.yaml"),
    ("data/cifar100_joint.yaml", "data/cifar100_order1.yaml", "model/cifar_dytox.yaml"),
    ("data/imagenet100_10-10.yaml", "data/imagenet100_order1.yaml", "model/imagenet_dytox.yaml"),
    ("data/imagenet100_joint.yaml", "data/imagenet100_order1.yaml", "model/imagenet_dytox.yaml"),
    ("data/imagenet1000_100-100.yaml", "data/imagenet1000_order1.yaml",
     "model/imagenet_dytox_plus.yaml"),
    ("data/imagenet1000_joint.yaml", "data/imagenet1000_order1.yaml", "model/imagenet_dytox.yaml"),
    ("data/fashion_mnist_5x2.yaml", "model/cpu_small.yaml"),
    ("data/digits_demo.yaml", "model/demo_tiny.yaml"),
    ("data/imagefolder.yaml", "model/imagenet_dytox.yaml"),
]


def options_path(relative: str) -> str:
    return str(REPO_ROOT / "options" / relative)


# --------------------------------------------------------------------------- #
# YAML errors
# --------------------------------------------------------------------------- #

def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", "epochs: 3\nnot_an_option: 1\n")
    with pytest.raises(ConfigError) as info:
        parse_config(["--options", path])
    assert "not_an_option" in str(info.value) and path in str(info.value)


def test_dashed_key_suggests_underscore(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "dash.yaml", "data-set: cifar\n")
    with pytest.raises(ConfigError, match="data_set"):
        parse_config(["--options", path])


def test_options_key_is_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "nested.yaml", "options: [other.yaml]\n")
    with pytest.raises(ConfigError, match="options"):
        parse_config(["--options", path])


@pytest.mark.parametrize("text,key", [
    ("ind_clf: 2-2\n", "ind_clf"),
    ("epochs: abc\n", "epochs"),
    ("epochs: 1.5\n", "epochs"),
    ("lr: fast\n", "lr"),
    ("data_set: mnist\n", "data_set"),
    ("rehearsal: icarl\n", "rehearsal"),
    ("freeze_task: [old_heads, everything]\n", "freeze_task"),
    ("head_div_mode: [tr, test]\n", "head_div_mode"),
    ("bce_loss: 'yes please'\n", "bce_loss"),
    ("bce_loss: 1\n", "bce_loss"),
    ("epochs: true\n", "epochs"),
    ("epochs: null\n", "epochs"),
    ("epochs: [1, 2]\n", "epochs"),
    ("head_div_mode: []\n", "head_div_mode"),
    ("device: gpu\n", "device"),
    ("class_order: [1, 0, x]\n", "class_order"),
    ("class_order: 3\n", "class_order"),
])
def test_invalid_yaml_value_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write_yaml(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        parse_config(["--options", path])
    message = str(info.value)
    assert key in message and path in message


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="missing.yaml"):
        parse_config(["--options", missing])


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "epochs: [1\n",
                                  "epochs: 1\nepochs: 2\n", "1: 2\n"])
def test_malformed_file_is_config_error(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path / "weird.yaml", text)
    with pytest.raises(ConfigError, match="weird.yaml"):
        parse_config(["--options", path])


def test_empty_file_changes_nothing(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "empty.yaml", "# only a comment\n")
    assert vars(parse_config(["--options", path])) == {**vars(parse_config([])), "options": [path]}


# --------------------------------------------------------------------------- #
# YAML values
# --------------------------------------------------------------------------- #

def test_yaml_false_turns_off_default_true(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "f.yaml", "pin_mem: false\nrepeated_aug: false\n"
                                            "fused_attention: false\n")
    cfg = parse_config(["--options", path])
    assert cfg.pin_mem is False and cfg.repeated_aug is False and cfg.fused_attention is False


def test_yaml_values_are_converted_like_command_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "v.yaml", (
        "weight_decay: 1e-6\n"  # PyYAML reads this as a string: must still be a float
        "lr: 1\n"  # int for a float option
        "data_set: CIFAR\n"  # case-insensitive
        "log_category: 10-10\n"
        "aa: none\n"
        "incremental_lr: null\n"
        "max_task: 3\n"
    ))
    cfg = parse_config(["--options", path])
    assert cfg.weight_decay == pytest.approx(1e-6) and isinstance(cfg.weight_decay, float)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.data_set == "cifar"
    assert cfg.log_category == "10-10"
    assert cfg.aa is None and cfg.incremental_lr is None and cfg.max_task == 3


def test_yaml_lists(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "l.yaml", (
        "freeze_task: [old_task_tokens, old_heads]\n"
        "freeze_ft: [sab]\n"
        "head_div_mode: tr\n"  # a scalar is a one-item list (published files do this)
        "sam_mode: [ft]\n"
        "opt_betas: [0.9, 0.999]\n"
        "class_order: [3, 1, 2, 0]\n"
    ))
    cfg = parse_config(["--options", path])
    assert cfg.freeze_task == ["old_task_tokens", "old_heads"]
    assert cfg.freeze_ft == ["sab"]
    assert cfg.head_div_mode == ["tr"]
    assert cfg.sam_mode == ["ft"]
    assert cfg.opt_betas == [pytest.approx(0.9), pytest.approx(0.999)]
    assert cfg.class_order == [3, 1, 2, 0]


def test_several_class_orders_in_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "orders.yaml", "class_order: [[0, 1, 2], [2, 0, 1]]\n")
    assert parse_config(["--options", path]).class_order == [[0, 1, 2], [2, 0, 1]]


# --------------------------------------------------------------------------- #
# The project's option files
# --------------------------------------------------------------------------- #

def test_option_folders_are_populated() -> None:
    assert len(DATA_FILES) >= 15 and len(MODEL_FILES) >= 7


@pytest.mark.parametrize("path", DATA_FILES + MODEL_FILES,
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_option_file_parses_alone(path: Path) -> None:
    cfg = parse_config(["--options", str(path)])
    assert cfg.options == [str(path)]
    assert path.read_text().startswith("#"), "each option file starts with a comment header"


@pytest.mark.parametrize("files", COMBOS, ids=lambda files: "+".join(Path(f).stem for f in files))
def test_realistic_combinations_parse(files: tuple[str, ...]) -> None:
    cfg = parse_config(["--options", *map(options_path, files), "--memory-size", "2000"])
    validate_config(cfg)
    assert cfg.dytox and cfg.class_attention and cfg.rehearsal == "icarl_all"
    assert cfg.memory_size == 2000
    assert cfg.local_up_to_layer < cfg.depth


def test_published_cifar_dytox_values() -> None:
    cfg = parse_config(["--options", options_path("data/cifar100_10-10.yaml"),
                        options_path("data/cifar100_order1.yaml"),
                        options_path("model/cifar_dytox.yaml")])
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size) == (384, 6, 12, 4)
    assert (cfg.initial_increment, cfg.increment, cfg.input_size) == (10, 10, 32)
    assert cfg.class_order[:5] == [87, 0, 52, 58, 44]
    assert sorted(cfg.class_order) == list(range(100))
    assert cfg.freeze_task == ["old_task_tokens", "old_heads"] and cfg.freeze_ft == ["sab"]
    assert cfg.head_div == pytest.approx(0.1) and cfg.head_div_mode == ["tr"]
    assert cfg.weight_decay == pytest.approx(1e-6) and cfg.finetuning_epochs == 20
    assert cfg.mixup == 0.0 and cfg.sam_rho == 0.0 and cfg.log_category == "10-10"


# Each rival's CIFAR-100 settings (its source is the file's header): method, lr after the scaling by the global
# batch / 512 at one process, batch, epochs, multistep milestones and factor, weight decay, memory.
RIVAL_FILES = {
    "cifar_icarl": ("icarl", 2.0, 128, 70, (49, 63), 0.2, 1e-5, 2000),
    "cifar_wa": ("wa", 0.1, 32, 250, (100, 150, 200), 0.1, 2e-4, 2000),
    "cifar_der": ("der", 0.1, 128, 170, (100, 120), 0.1, 5e-4, 2000),
}


@pytest.mark.parametrize("name", sorted(RIVAL_FILES))
def test_the_rivals_option_files_carry_their_papers_cifar_settings(name: str) -> None:
    method, lr, batch, epochs, milestones, factor, weight_decay, memory = RIVAL_FILES[name]
    cfg = parse_config(["--options", options_path("data/cifar100_10-10.yaml"),
                        options_path("data/cifar100_order1.yaml"), options_path(f"model/{name}.yaml")])
    check_runnable(cfg)
    settings = settings_from(cfg)
    assert (settings.learner.method, settings.model.dytox, settings.model.encoder) == (method, False, "resnet18_cifar")
    assert settings.model.embed_dim == 512 and settings.model.architecture == ("der" if method == "der" else "baseline")
    recipe, schedule = settings.recipe, settings.schedule
    assert [recipe.lr_of(task, 1) for task in (0, 1)] == pytest.approx([lr, lr])
    assert (recipe.batch_size_of(0), recipe.batch_size_of(1), recipe.epochs_of(0), recipe.epochs_of(1)) == \
        (batch, batch, epochs, epochs)
    assert (schedule.sched, schedule.decay_milestones, schedule.decay_rate) == ("multistep", milestones, factor)
    assert schedule.sched_step_fix and settings.optimizer.opt == "sgd" and settings.optimizer.momentum == 0.9
    assert settings.optimizer.weight_decay == pytest.approx(weight_decay)
    assert (cfg.memory_size, cfg.rehearsal, cfg.aa, cfg.mixup, cfg.smoothing) == (memory, "icarl_all", None, 0.0, 0.0)
    assert cfg.finetuning == ("balanced" if method == "der" else "")
    if method == "der":  # the official code's classifier stage: 30 epochs at 0.1, temperature 5
        assert (cfg.finetuning_epochs, recipe.finetuning_lr_of(1, 1), cfg.finetuning_temperature) == \
            (30, pytest.approx(0.1), 5.0)
    if method == "wa":
        assert cfg.distillation_tau == 2.0


def test_dytox_versions_differ_only_in_mixup_and_sam() -> None:
    def load(name: str) -> dict[str, object]:
        return load_config_file(options_path(f"model/{name}.yaml"))

    base, plus = load("cifar_dytox"), load("cifar_dytox_plus")
    plusplus = load("cifar_dytox_plusplus")
    assert {k: v for k, v in plus.items() if base.get(k) != v} == {
        "mixup": 0.8, "mixup_prob": 1.0, "mixup_switch_prob": 0.5}
    assert {k: v for k, v in plusplus.items() if plus.get(k) != v} == {
        "sam_rho": 3.0, "sam_adaptive": True, "sam_skip_first": True, "sam_mode": ["tr"]}


def test_fashion_mnist_benchmark_values() -> None:
    cfg = parse_config(["--options", options_path("data/fashion_mnist_5x2.yaml"),
                        options_path("model/cpu_small.yaml")])
    assert cfg.data_set == "fashion_mnist" and cfg.train_per_class == 1000
    assert cfg.class_order == list(range(10)) and cfg.memory_size == 200
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.local_up_to_layer) == (128, 4, 4, 3)
    assert (cfg.epochs, cfg.base_epochs, cfg.finetuning_epochs) == (5, 5, 2)
    assert cfg.warmup_epochs == 1 and cfg.reprob == 0.0


# --------------------------------------------------------------------------- #
# Saving
# --------------------------------------------------------------------------- #

def test_save_config_round_trips_atomically(tmp_path: Path) -> None:
    cfg = parse_config(["--options", options_path("data/cifar100_order1.yaml"),
                        options_path("model/cifar_dytox.yaml"), "--aa", "none"])
    path = tmp_path / "config.yaml"
    save_config(config_to_dict(cfg), path)
    assert load_config_file(path) == config_to_dict(cfg)
    assert yaml.safe_load(path.read_text()) == vars(cfg)
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_save_config_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("stale: true\n")
    save_config(config_to_dict(parse_config(["--seed", "4"])), path)
    assert load_config_file(path)["seed"] == 4
    assert not path.with_suffix(".yaml.tmp").exists()


def test_config_to_dict_is_a_copy() -> None:
    cfg = parse_config([])
    data = config_to_dict(cfg)
    data["head_div_mode"].append("x")
    assert cfg.head_div_mode == ["tr", "ft"]


def test_config_to_dict_rejects_non_plain_values() -> None:
    with pytest.raises(ConfigError, match="data_path"):
        config_to_dict(with_values(data_path=Path("/data")))
