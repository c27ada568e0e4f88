"""The option files give the published runs' configuration, value for value.

Below are the published option files (arthurdouillard/dytox at 4da25c1, ``options/``) as data,
and the published parser's defaults for every option that changes what a run computes. A
published run's configuration is those defaults overridden by its files; this project's files
must resolve to the same values, and so must the published files themselves read by this
project's parser (a user may bring them as they are).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

import main
from conftest import REPO_ROOT, shared_path
from continual.config import parse_config
from continual.config.settings import amp_enabled, model_config
from continual.model.build import grown_model
from continual.train.epoch import cpu_has_fast_bfloat16

# The published parser's defaults (main.py, get_args_parser) of the options that change the computation.
PUBLISHED_DEFAULTS = {
    "batch_size": 128, "incremental_batch_size": None, "epochs": 500, "base_epochs": 500,
    "input_size": 32, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "drop": 0.0,
    "drop_path": 0.1, "norm": "layer", "opt": "adamw", "opt_eps": 1e-8, "opt_betas": None, "clip_grad": None,
    "momentum": 0.9, "weight_decay": 0.05, "sched": "cosine", "lr": 5e-4, "incremental_lr": None,
    "lr_noise": None, "lr_noise_pct": 0.67, "lr_noise_std": 1.0, "warmup_lr": 1e-6, "min_lr": 1e-5,
    "decay_epochs": 30, "warmup_epochs": 5, "cooldown_epochs": 10, "patience_epochs": 10, "decay_rate": 0.1,
    "color_jitter": 0.4, "aa": "rand-m9-mstd0.5-inc1", "smoothing": 0.1, "train_interpolation": "bicubic",
    "repeated_aug": True, "reprob": 0.25, "remode": "pixel", "recount": 1, "resplit": False, "mixup": 0.8,
    "cutmix": 1.0, "cutmix_minmax": None, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch",
    "auto_kd": False, "kd": 0.0, "distillation_tau": 1.0, "seed": 0, "initial_increment": 50, "increment": 10,
    "class_order": None, "eval_every": 50, "max_task": None, "dytox": False, "head_div": 0.0,
    "head_div_mode": ["tr", "ft"], "sam_rho": 0.0, "sam_adaptive": False, "sam_first": "main",
    "sam_second": "main", "sam_skip_first": False, "sam_final": None, "sam_mode": ["tr", "ft"], "look_sam_k": 0,
    "look_sam_alpha": 0.7, "fixed_memory": False, "rehearsal_test_trsf": False, "rehearsal": "random",
    "finetuning": "", "finetuning_epochs": 30, "finetuning_lr": 5e-5, "finetuning_teacher": False,
    "ft_no_sampling": False, "freeze_task": [], "freeze_ft": [], "freeze_eval": False, "local_up_to_layer": 10,
    "locality_strength": 1.0, "class_attention": False, "bce_loss": False, "model": "", "ind_clf": "",
    "log_category": "misc",
}
# Not compared: the memory mode (explicit here) and the decoding path (joint decoding is
# the same function as the published per-task loop, tests/model/test_dytox.py); data_set is compared
# case-insensitively (the published files spell it CIFAR).

_MODEL_COMMON = {
    "model": "convit", "embed_dim": 384, "depth": 6, "num_heads": 12, "local_up_to_layer": 5,
    "class_attention": True, "weight_decay": 1e-6, "batch_size": 128, "incremental_batch_size": 128,
    "incremental_lr": 5e-4, "rehearsal": "icarl_all", "auto_kd": True, "finetuning": "balanced",
    "finetuning_epochs": 20, "ft_no_sampling": True, "dytox": True, "freeze_task": ["old_task_tokens", "old_heads"],
    "freeze_ft": ["sab"], "head_div": 0.1, "head_div_mode": "tr", "ind_clf": "1-1", "bce_loss": True,
    "reprob": 0.0, "remode": "pixel", "recount": 1, "resplit": False, "cutmix": 0.0,
}
_CIFAR = {**_MODEL_COMMON, "patch_size": 4, "input_size": 32, "no_amp": True, "eval_every": 50}
_IMAGENET = {**_MODEL_COMMON, "patch_size": 16, "input_size": 224, "no_amp": False, "eval_every": 250}
PUBLISHED_MODEL_FILES = {
    "cifar_dytox": {**_CIFAR, "mixup": 0.0},
    "cifar_dytox_plus": {**_CIFAR, "mixup": 0.8},
    "cifar_dytox_plusplus": {**_CIFAR, "mixup": 0.8, "head_div_mode": ["tr"], "sam_rho": 3.0,
                             "sam_adaptive": True, "sam_skip_first": True, "sam_mode": ["tr"]},
    "imagenet_dytox": {**_IMAGENET, "mixup": 0.0},
    "imagenet_dytox_plus": {**_IMAGENET, "mixup": 0.8},
}
PUBLISHED_DATA_FILES = {
    "cifar100_10-10": {"data_set": "CIFAR", "initial_increment": 10, "increment": 10, "log_category": "10-10"},
    "cifar100_5-5": {"data_set": "CIFAR", "initial_increment": 5, "increment": 5, "log_category": "5-5"},
    "cifar100_2-2": {"data_set": "CIFAR", "initial_increment": 2, "increment": 2, "log_category": "2-2"},
    "cifar100_joint": {"data_set": "CIFAR", "initial_increment": 100, "increment": 100, "log_category": "joint"},
    "imagenet100_10-10": {"data_set": "imagenet100", "initial_increment": 10, "increment": 10,
                          "log_category": "10-10"},
    "imagenet100_joint": {"data_set": "imagenet100", "initial_increment": 100, "increment": 100,
                          "log_category": "joint"},
    "imagenet1000_100-100": {"data_set": "imagenet1000", "initial_increment": 100, "increment": 100,
                             "log_category": "100-100"},
    "imagenet1000_joint": {"data_set": "imagenet1000", "initial_increment": 1000, "increment": 1000,
                           "log_category": "joint"},
}
ORDER_FILES = {"cifar100_order1": "cifar100", "cifar100_order2": "cifar100", "cifar100_order3": "cifar100",
               "imagenet100_order1": "imagenet100", "imagenet1000_order1": "imagenet1000"}


def published_orders() -> dict[str, list[int]]:
    return yaml.safe_load(shared_path("reference/class_orders.yaml").read_text())


def runs() -> list[tuple[str, str, str]]:
    """Every (data, order, model) combination of the published files, within one dataset family."""
    combos = []
    for data in PUBLISHED_DATA_FILES:
        family = "cifar" if data.startswith("cifar") else "imagenet"
        orders = [o for o, dataset in ORDER_FILES.items() if data.startswith(dataset + "_")]
        models = [m for m in PUBLISHED_MODEL_FILES if m.startswith(family)]
        combos += [(data, order, model) for order in orders for model in models]
    return combos


def expected(data: str, order: str, model: str) -> dict[str, object]:
    """The published run's configuration: parser defaults, then the data, order and model files."""
    values = {**PUBLISHED_DEFAULTS, **PUBLISHED_DATA_FILES[data], "class_order": published_orders()[order],
              **PUBLISHED_MODEL_FILES[model]}
    values["head_div_mode"] = [m for m in ("tr", "ft") if m in values["head_div_mode"]]  # the published `in` test
    values["data_set"] = str(values["data_set"]).lower()
    return values


def resolved(files: list[Path]) -> dict[str, object]:
    cfg = parse_config(["--options", *map(str, files)])
    values = vars(cfg)
    return {**values, "data_set": values["data_set"].lower(), "amp": amp_enabled(cfg)}


def assert_matches(values: dict[str, object], wanted: dict[str, object]) -> None:
    for key, value in wanted.items():
        if key == "no_amp":
            assert values["amp"] is (not value), "no_amp"  # the published meaning: AMP unless no_amp
        elif isinstance(value, float):
            assert values[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert values[key] == value, key


@pytest.mark.parametrize(("data", "order", "model"), runs(), ids=lambda name: name)
def test_project_option_files_give_the_published_configuration(data: str, order: str, model: str) -> None:
    options = REPO_ROOT / "options"
    files = [options / "data" / f"{data}.yaml", options / "data" / f"{order}.yaml",
             options / "model" / f"{model}.yaml"]
    assert_matches(resolved(files), expected(data, order, model))


@pytest.mark.parametrize("model", sorted(PUBLISHED_MODEL_FILES))
def test_the_published_files_read_as_they_are_give_the_same_run(tmp_path: Path, model: str) -> None:
    """A user's copy of the published files (no extra keys) resolves like this project's files."""
    data = "cifar100_10-10" if model.startswith("cifar") else "imagenet100_10-10"
    order = "cifar100_order1" if model.startswith("cifar") else "imagenet100_order1"
    copies = []
    for name, values in ((data, PUBLISHED_DATA_FILES[data]), (order, {"class_order": published_orders()[order]}),
                         (model, PUBLISHED_MODEL_FILES[model])):
        copies.append(tmp_path / f"{name}.yaml")
        copies[-1].write_text(yaml.safe_dump(values))
    assert_matches(resolved(copies), expected(data, order, model))


def test_published_defaults_table_names_real_options() -> None:
    values = vars(parse_config([]))
    assert set(PUBLISHED_DEFAULTS) <= set(values)
    assert {k for f in PUBLISHED_MODEL_FILES.values() for k in f} <= set(values)


IMAGENET_SHARED = 11_010_732  # patch embedding (16x16 on 224x224), 196 positions, 5 SABs and 1 TAB of width 384


@pytest.mark.parametrize(("data", "classes", "paper", "paper_tasks"), [
    ("imagenet100_10-10", 10, 11.01, 1),
    ("imagenet1000_100-100", 100, 11.36, 9),
])
def test_parameter_counts_of_the_published_imagenet_model(data: str, classes: int, paper: float,
                                                          paper_tasks: int) -> None:
    """ConViT with 384 channels, patch 16 on 224x224, 5 SABs + 1 TAB; counts without the divergence
    head. After 10 tasks: 11.06M (ImageNet-100) and 11.41M (ImageNet-1000). The paper's figures
    (millions, truncated) are 11.01M and 11.36M: the counts before any expansion and after 9 tasks
    respectively (the published log takes its count once, before the loop: docs/differences.md), whereas its
    CIFAR figures are the counts after the last task (tests/model/test_dytox.py)."""
    cfg = parse_config(["--options", str(REPO_ROOT / "options/data" / f"{data}.yaml"),
                        str(REPO_ROOT / "options/model/imagenet_dytox.yaml")])
    config = model_config(cfg)
    assert (config.embed_dim, config.patch_size, config.input_size) == (384, 16, 224)

    def count(tasks: int) -> int:
        model = grown_model(config, [classes] * tasks)
        return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head_div."))

    per_task = 384 + 2 * 384 + 385 * classes  # task token, head LayerNorm, head Linear
    for tasks in sorted({1, paper_tasks, 10}):
        assert count(tasks) == IMAGENET_SHARED + tasks * per_task, tasks
    assert math.floor(count(paper_tasks) / 1e4) / 100 == paper


def test_published_imagenet_mixed_precision_on_a_cpu_is_a_start_up_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    """no_amp: false stays as published; on a CPU without bfloat16 instructions the run says so first."""
    argv = ["--options", str(REPO_ROOT / "options/data/imagenet100_10-10.yaml"),
            str(REPO_ROOT / "options/model/imagenet_dytox.yaml"), "--device", "cpu",
            "--data-path", str(tmp_path / "nowhere"), "--output-basedir", str(tmp_path / "out")]
    assert amp_enabled(parse_config(argv))
    assert main.main(argv) == 2  # the missing data is one line, after the warning
    printed = capsys.readouterr().err
    assert f"error: ImageNet folder {tmp_path / 'nowhere' / 'train'} not found" in printed
    warned = "bfloat16 runs emulated" in printed
    assert warned == (not cpu_has_fast_bfloat16())
    assert not (tmp_path / "out").exists()
