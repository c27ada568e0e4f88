"""Train DyTox task by task: ``python main.py --options data.yaml order.yaml model.yaml [flags]``.

Launch with ``bash train.sh GPUS ...`` for one process per GPU (torchrun), or
directly for a single process. See README.md for the option files and outputs.
"""
from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import record

from continual.config.options import ConfigError, parse_config
from continual.runtime.distributed import cleanup, setup
from continual.runtime.host_memory import retain_freed_memory
from continual.train.orders import run_all
from continual.runtime.preemption import Preempted


@record  # under torchrun, the failing rank's traceback becomes the run's reported root cause
def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if cfg.retain_freed_memory:
        retain_freed_memory()
    ctx = setup(cfg.device)
    try:
        run_all(cfg, ctx)  # one run, or one per class order
    except Preempted as stopped:
        return 130 if stopped.signal_name == "SIGINT" else 143  # the shell's codes for these signals
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
