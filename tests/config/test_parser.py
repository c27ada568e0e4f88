"""The command line built from the option table, and --help as a person reads it."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from continual.config import parse_config
from continual.config.options import OPTION_GROUPS, OPTIONS
from continual.config.parser import build_parser, help_text, shown_default


@pytest.fixture(scope="module")
def printed_help() -> str:
    """``python main.py --help`` as a person runs it (80 columns)."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), "--help"], capture_output=True, text=True,
                            timeout=120, env={"COLUMNS": "80", "PATH": ""}, cwd=REPO_ROOT)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def test_help_starts_with_the_option_files_and_ends_with_runnable_examples(printed_help: str) -> None:
    assert printed_help.startswith("usage: main.py --options DATA.yaml ORDER.yaml MODEL.yaml [flags]\n")
    assert "the non-DyTox baseline" in printed_help  # what main.py does without option files
    examples = [line.strip() for line in printed_help.split("examples:")[1].splitlines()]
    demo = next(line for line in examples if line.startswith("python main.py"))
    assert demo == "python main.py --options options/data/digits_demo.yaml options/model/demo_tiny.yaml --name demo"
    cifar = " ".join(examples[examples.index(next(line for line in examples if line.startswith("bash train.sh 0,1"))):]
                     ).split("  #")[0].replace("\\ ", "")
    words = shlex.split(cifar)[3:]  # after bash train.sh 0,1
    cfg = parse_config(words)  # the printed command parses, with the erratum's memory protocol
    assert cfg.distributed_memory and cfg.memory_size == 2000 and cfg.dytox and cfg.increment == 10
    assert parse_config(shlex.split(demo)[2:]).data_set == "digits"


def test_every_option_shows_its_default_and_bounds(printed_help: str) -> None:
    flat = re.sub(r"\s+", "", printed_help)  # argparse wraps lines, also after hyphens
    for dest, option in OPTIONS.items():
        assert re.sub(r"\s+", "", help_text(option).replace("%%", "%")) in flat, dest
    assert printed_help.count("[default:") == len(OPTIONS)
    assert "--memory-size N" in printed_help and "[default:0;>=0]" in flat
    assert "--progress, --no-progress" in printed_help and "--no-no-" not in printed_help
    assert "--amp " in printed_help and "--no-amp " in printed_help


def test_groups_in_table_order_each_option_under_its_own() -> None:
    text = build_parser().format_help()
    starts = [text.index(f"\n{group}:\n") for group in OPTION_GROUPS]
    assert starts == sorted(starts)
    for dest, option in OPTIONS.items():
        position = re.search(rf"\n  {re.escape(option.flag)}[ ,\n]", text).start()  # type: ignore[union-attr]
        owner = max((start, group) for group, start in zip(OPTION_GROUPS, starts, strict=True) if start < position)
        assert owner[1] == option.group, dest


@pytest.mark.parametrize(("dest", "shown"), [
    ("pin_mem", "on"), ("max_task", "unset"), ("head_div_mode", "tr ft"), ("options", "none"), ("name", "''"),
    ("no_amp", "unset"), ("lr", "0.0005"),
])
def test_shown_defaults(dest: str, shown: str) -> None:
    assert shown_default(OPTIONS[dest]) == shown


def test_amp_and_no_amp_are_one_switch_where_the_last_spelling_wins() -> None:
    assert (parse_config(["--amp"]).amp, parse_config(["--amp"]).no_amp) == (True, None)
    assert (parse_config(["--amp", "--no-amp"]).amp, parse_config(["--amp", "--no-amp"]).no_amp) == (False, True)
