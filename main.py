"""Train DyTox task by task: ``python main.py --options data.yaml order.yaml model.yaml [flags]``.

Launch with ``bash train.sh GPUS ...`` for one process per GPU (torchrun), or
directly for a single process. ``python main.py --help`` lists every option; docs/ says the rest.
"""
from __future__ import annotations

import argparse
import sys
import traceback

from continual.config import ConfigError, Settings, parse_config
from continual.config.notes import context_notes, memory_note
from continual.config.options import no_effect_notes
from continual.data.errors import DatasetError, ImageReadError
from continual.runtime.distributed import cleanup, record_errors, setup
from continual.runtime.host_memory import retain_freed_memory
from continual.runtime.preemption import Preempted
from continual.train.orders import run_orders, settings_per_run
from continual.train.session import run


def configuration(argv: list[str] | None) -> tuple[argparse.Namespace, list[Settings]]:
    """The parsed options and the settings of each run (one per class order), all checked before any work:
    a ConfigError, or argparse's exit on an unknown flag. run_with_submitit.py checks a job's options with it."""
    cfg = parse_config(argv)
    return cfg, settings_per_run(cfg)


@record_errors  # under torchrun, the failing rank's traceback becomes the run's reported root cause
def main(argv: list[str] | None = None) -> int:
    try:
        cfg, runs = configuration(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if cfg.retain_freed_memory:
        retain_freed_memory()
    ctx = setup(cfg.device)
    notes = [*no_effect_notes(cfg), *context_notes(cfg)]
    memory = None if cfg.eval else memory_note(runs[0].memory, ctx.world_size)  # the same in every order's run
    if memory is not None:
        notes.append(memory)
    for note in notes if ctx.is_main else []:
        print(f"note: {note}", file=sys.stderr, flush=True)
    try:
        if len(runs) == 1:
            run(runs[0], ctx)
        else:
            run_orders(cfg, runs, ctx)
    except ConfigError as error:  # found once the run folder is read: e.g. a resume with other options
        if ctx.is_main:  # every process finds it: one line is enough
            print(f"error: {error}", file=sys.stderr)
        return 2
    except DatasetError as error:  # missing or malformed data before training; an undecodable image during it
        if ctx.is_main or isinstance(error, ImageReadError):  # a file only one process read: that one says it
            print(f"error: {error.line}", file=sys.stderr, flush=True)
        traceback.clear_frames(error.__traceback__)  # frees a failed loader's workers now, not at a later collection
        return 2
    except Preempted as stopped:
        return 130 if stopped.signal_name == "SIGINT" else 143  # the shell's codes for these signals
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
