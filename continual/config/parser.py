"""The command line and ``--help``, built from the option table.

Every option of ``continual.config.options`` becomes one argparse argument in
its group, its help ending with its default (and its bounds); the usage line
and the closing examples say how a run is meant to be started: with option
files.
"""
from __future__ import annotations

import argparse
from typing import Any, Protocol

from continual.config.options import OPTION_GROUPS, OPTIONS, Option

USAGE = "main.py --options DATA.yaml ORDER.yaml MODEL.yaml [flags]"

DESCRIPTION = """\
DyTox (Douillard et al., CVPR 2022): a vision transformer for class-incremental learning that grows by one
task token and one head per task. A run trains task after task on a dataset split into tasks, keeps a
rehearsal memory, and writes a run folder (config.yaml, log.jsonl, summary.json, plots, checkpoints).

Give three option files (data setting, class order, model version, from options/), then flags: the files
apply in order and a flag on the command line wins over every file. Every option is listed below with its
default, and in docs/options.md."""

EPILOG = """\
examples:
  # the offline demo (scikit-learn digits, 5 tasks of 2 classes, about 40 s on 2 CPU cores)
  python main.py --options options/data/digits_demo.yaml options/model/demo_tiny.yaml --name demo

  # CIFAR-100 in 10 steps on 2 GPUs, 20 exemplars per class in total, each GPU herding its own half
  # (the erratum's distributed memory; the published README's --memory-size 1000 per GPU is the same run)
  bash train.sh 0,1 --options options/data/cifar100_10-10.yaml options/data/cifar100_order1.yaml \\
      options/model/cifar_dytox.yaml --name dytox --data-path data/ --distributed-memory --memory-size 2000

  # continue an interrupted run where it stopped, or restart it at task 5
  bash train.sh 0,1 --options ... --resume outputs/cifar/10-10/<date>_dytox [--start-task 5]

Give option files: without them, main.py trains the published parser's defaults, which are not DyTox but
the non-DyTox baseline (dytox off), 768 wide with 12 blocks, 500 epochs per task and no memory. An option
file is a YAML map of option: value (dashes become underscores); an unknown key, a wrong type or a value
out of bounds is a one-line error naming the key and the file. With several processes and the default
(published) memory, each process keeps --memory-size exemplars of its own: see docs/running.md."""


class _SwitchAction(argparse.Action):
    """A boolean flag: ``--x`` sets True and ``--no-x`` False, ``--no-*`` options included (argparse's
    ``BooleanOptionalAction`` would read ``--no-amp`` as clearing ``no_amp``); given on the command line,
    it also puts the options its record ``resets`` back to their defaults (the last of a switch's
    spellings wins)."""

    def __init__(self, option_strings: list[str], dest: str, resets: tuple[str, ...] = (), **kwargs: Any) -> None:
        self.resets = resets
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, option_string == self.option_strings[0])
        for dest in self.resets:
            setattr(namespace, dest, OPTIONS[dest].default)


class _ArgumentAdder(Protocol):
    """A parser or an argument group: anything with ``add_argument``."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action: ...


def shown_default(option: Option) -> str:
    """An option's default as a person reads it: on/off, unset, a list without brackets."""
    value = option.default
    if option.type is None:
        return "unset" if value is None else ("on" if value else "off")
    if value is None:
        return "unset"
    if isinstance(value, list):
        return " ".join(str(item) for item in value) if value else "none"
    return repr(value) if value == "" else str(value)


def help_text(option: Option) -> str:
    """The help line of an option: what it does, its bounds, its default."""
    bounds = f"; {option.bounds}" if option.bounds is not None else ""
    return f"{option.help} [default: {shown_default(option)}{bounds}]".replace("%", "%%")


def _add_option(group: _ArgumentAdder, option: Option) -> None:
    """Declare one table entry on the parser."""
    if option.type is None:
        group.add_argument(*option.flags, dest=option.dest, action=_SwitchAction, resets=option.resets,
                           default=option.default, help=help_text(option))
        return
    metavar = option.metavar
    if metavar is None and option.choices is None:
        metavar = "N" if option.type is int else "X" if option.type is float else None
    group.add_argument(option.flag, *option.aliases, dest=option.dest, type=option.type, default=option.default,
                       help=help_text(option), choices=option.choices, nargs=option.nargs, metavar=metavar)


def build_parser() -> argparse.ArgumentParser:
    """A fresh parser with every option, grouped by family. Abbreviations are off: ``--opt`` must never be
    read as ``--options``."""
    parser = argparse.ArgumentParser(prog="main.py", usage=USAGE, description=DESCRIPTION, epilog=EPILOG,
                                     allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    for title in OPTION_GROUPS:
        group = parser.add_argument_group(title)
        for option in OPTIONS.values():
            if option.group == title:
                _add_option(group, option)
    return parser
