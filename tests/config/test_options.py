"""The option table and the command line: defaults, precedence of files and flags, argparse behaviour."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from support import write_yaml

from conftest import REPO_ROOT
from continual.config import parse_config, settings_from
from continual.config.errors import ConfigError
from continual.config.options import (
    NO_EFFECT_OPTIONS,
    OPTION_GROUPS,
    OPTIONS,
    Bounds,
    Option,
    config_differences,
    no_effect_notes,
)

DEMO_OPTIONS = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"),
                str(REPO_ROOT / "options/model/demo_tiny.yaml")]

# --------------------------------------------------------------------------- #
# Precedence
# --------------------------------------------------------------------------- #

@pytest.fixture
def two_files(tmp_path: Path) -> tuple[str, str]:
    a = write_yaml(tmp_path / "a.yaml", "epochs: 100\nlr: 0.001\nname: from_a\nseed: 3\n")
    b = write_yaml(tmp_path / "b.yaml", "lr: 0.002\nname: from_b\n")
    return a, b


def test_defaults_without_files() -> None:
    cfg = parse_config([])
    assert cfg.epochs == 500 and cfg.lr == 5e-4 and cfg.data_set == "cifar"
    assert cfg.head_div_mode == ["tr", "ft"] and cfg.freeze_task == []
    assert cfg.pin_mem is True and cfg.class_order is None and cfg.options == []


def test_later_file_wins_over_earlier_and_defaults(two_files: tuple[str, str]) -> None:
    cfg = parse_config(["--options", *two_files])
    assert cfg.epochs == 100  # only in A
    assert cfg.seed == 3
    assert cfg.lr == pytest.approx(0.002)  # B beats A
    assert cfg.name == "from_b"
    assert cfg.batch_size == 128  # default untouched
    assert cfg.options == list(two_files)


@pytest.mark.parametrize("cli_first", [True, False])
def test_command_line_wins_wherever_it_appears(two_files: tuple[str, str], cli_first: bool) -> None:
    flags = ["--lr", "0.1", "--name", "cli", "--epochs", "7"]
    files = ["--options", *two_files]
    cfg = parse_config(flags + files if cli_first else files + flags)
    assert cfg.lr == pytest.approx(0.1)
    assert cfg.name == "cli"
    assert cfg.epochs == 7
    assert cfg.seed == 3  # still from A


def test_command_line_bool_beats_yaml_bool(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "m.yaml", "bce_loss: true\nrepeated_aug: false\n")
    assert parse_config(["--options", path]).bce_loss is True
    cfg = parse_config(["--no-bce-loss", "--repeated-aug", "--options", path])
    assert cfg.bce_loss is False and cfg.repeated_aug is True


def test_opt_is_not_an_abbreviation_of_options() -> None:
    assert parse_config(["--opt", "sgd"]).opt == "sgd"


def test_class_order_on_command_line_beats_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "o.yaml", "class_order: [0, 1, 2, 3]\n")
    cfg = parse_config(["--class-order", "3", "1", "2", "0", "--options", path])
    assert cfg.class_order == [3, 1, 2, 0]


# --------------------------------------------------------------------------- #
# Command-line flags
# --------------------------------------------------------------------------- #

def test_command_line_errors_exit_like_argparse() -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(["--ind-clf", "2-2"])
    assert info.value.code == 2


def test_the_loader_options_keep_workers_and_prefetch_two_batches_unless_told() -> None:
    loader = settings_from(parse_config([])).loader
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (2, True, 2)
    loader = settings_from(parse_config(["--no-persistent-workers", "--prefetch-factor", "4"])).loader
    assert (loader.persistent_workers, loader.prefetch_factor) == (False, 4)
    assert parse_config(["--num-workers", "0", "--prefetch-factor", "3"]).prefetch_factor == 3  # accepted, unused
    with pytest.raises(ConfigError, match=r"^option 'prefetch_factor' must be >= 1, got 0$"):
        parse_config(["--prefetch-factor", "0"])


def test_flags_named_no_something() -> None:
    """argparse's BooleanOptionalAction would set False for --no-amp; there is no --no-no-* spelling."""
    assert parse_config(["--no-amp"]).no_amp is True
    assert parse_config(["--no-progress"]).progress is False
    assert parse_config(["--no-progress", "--progress"]).progress is True
    assert parse_config(["--no-pin-mem"]).pin_mem is False
    for spelling in ("--no-no-amp", "--no-no-progress"):
        with pytest.raises(SystemExit):
            parse_config([spelling])


# --------------------------------------------------------------------------- #
# Immutability
# --------------------------------------------------------------------------- #

def test_parsing_twice_gives_equal_configs(two_files: tuple[str, str]) -> None:
    argv = ["--options", *two_files, "--freeze-task", "sab", "--class-order", "1", "0"]
    first = parse_config(argv)
    first.freeze_task.append("tab")  # a careless caller must not leak into the next parse
    assert parse_config(argv) == parse_config(argv)
    assert parse_config(argv).freeze_task == ["sab"]
    assert parse_config([]).head_div_mode == ["tr", "ft"]


def test_the_published_underscore_spellings_are_accepted() -> None:
    cfg = parse_config(["--num_workers", "3", "--world_size", "2", "--dist_url", "env://", "--log-path", "elsewhere",
                        "--local_rank", "1"])
    assert (cfg.num_workers, cfg.world_size, cfg.dist_url, cfg.log_dir, cfg.local_rank) == \
        (3, 2, "env://", "elsewhere", 1)


NEVER_READ_FLAGS = ["--freeze-eval", "--resplit", "--incremental-warmup-lr", "1e-3", "--start-epoch", "3",
                    "--local_rank", "0", "--sam-div", "kl"]


def test_options_the_published_code_never_reads_are_accepted_with_a_note_and_change_nothing() -> None:
    plain = parse_config(DEMO_OPTIONS)
    flagged = parse_config(DEMO_OPTIONS + NEVER_READ_FLAGS)
    notes = no_effect_notes(flagged)
    assert no_effect_notes(plain) == [] and len(notes) == 6
    assert all("no effect" in note for note in notes) and notes[0].startswith("--freeze-eval True: ")
    ours, theirs = settings_from(plain), settings_from(flagged)  # everything a run computes with
    assert dataclasses.replace(ours, options={}) == dataclasses.replace(theirs, options={})
    assert config_differences(dict(ours.options), dict(theirs.options)) == []  # a resume may add them


def test_debug_trains_one_epoch_of_one_batch_per_task() -> None:
    recipe = settings_from(parse_config(DEMO_OPTIONS + ["--debug"])).recipe
    assert (recipe.epochs_of(0), recipe.epochs_of(3), recipe.schedule_epochs(0)) == (1, 1, 1)
    assert recipe.batches_per_epoch == 1
    assert recipe.finetuning_epochs == 10  # as published: finetuning keeps its epochs, of one batch each
    assert settings_from(parse_config(DEMO_OPTIONS)).recipe.batches_per_epoch is None


# --------------------------------------------------------------------------- #
# One record per option: what is derived from it
# --------------------------------------------------------------------------- #

def outside(bounds: Bounds, integer: bool) -> float:
    """A value just outside ``bounds``."""
    if bounds.low is not None:
        return bounds.low if bounds.low_open else bounds.low - (1 if integer else 0.5)
    assert bounds.high is not None
    return bounds.high if bounds.high_open else bounds.high + 1


BOUNDED = [option for option in OPTIONS.values() if option.bounds is not None]


@pytest.mark.parametrize("option", BOUNDED, ids=lambda option: option.dest)
def test_a_value_outside_an_option_s_bounds_is_refused_on_the_command_line_and_in_a_file(
        option: Option, tmp_path: Path) -> None:
    assert option.bounds is not None
    bad = outside(option.bounds, option.type is int)
    value = int(bad) if option.type is int else bad
    with pytest.raises(ConfigError, match=rf"option '{option.dest}' must be {re.escape(str(option.bounds))}"):
        parse_config([option.flag, str(value)])
    path = write_yaml(tmp_path / "bad.yaml", f"{option.dest}: {value}\n")
    with pytest.raises(ConfigError, match=rf"bad.yaml: option '{option.dest}'.*must be"):
        parse_config(["--options", path])


def test_the_bounds_read_as_written() -> None:
    assert [str(b) for b in (Bounds(1), Bounds(0, low_open=True), Bounds(0, 1, high_open=True), Bounds(0, 1))] == \
        [">= 1", "> 0", "[0, 1)", "[0, 1]"]
    assert 0.999 in Bounds(0, 1, high_open=True) and 1 not in Bounds(0, 1, high_open=True)
    assert 0 not in Bounds(0, low_open=True) and -1 not in Bounds(0)


def test_only_the_options_that_change_no_computation_may_change_on_a_resume() -> None:
    safe = {dest for dest, option in OPTIONS.items() if option.resume_safe}
    assert safe == {"options", "name", "output_basedir", "log_dir", "device", "num_workers", "pin_mem",
                    "persistent_workers", "prefetch_factor", "eval", "eval_every", "max_task", "save_every_epoch",
                    "resume", "start_task", "auto_resume", "progress", "retain_freed_memory", "plots", "tensorboard",
                    "data_path", "compile", "compile_backend"}
    saved = {dest: option.default for dest, option in OPTIONS.items()}
    now = {**saved, **{dest: "changed" for dest in safe | NO_EFFECT_OPTIONS}, "lr": 0.1}
    assert config_differences(saved, now) == ["lr (saved 0.0005, now 0.1)"]
    older = {**saved, "no_progress": False}  # a key of an option an earlier version had
    assert config_differences(older, saved) == []
    before_method = {dest: value for dest, value in saved.items() if dest != "method"}  # an option added since
    assert config_differences(before_method, saved) == []
    assert config_differences(before_method, {**saved, "method": "er"}) == ["method (saved 'dytox', now 'er')"]


def test_every_record_has_a_group_a_help_and_its_own_spellings() -> None:
    spellings = [flag for option in OPTIONS.values() for flag in option.flags]
    assert len(spellings) == len(set(spellings))
    assert all(option.group in OPTION_GROUPS and option.help for option in OPTIONS.values())
    assert len(OPTIONS) == sum(len(group) for group in OPTION_GROUPS.values())
