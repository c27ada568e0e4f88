"""torchrun for train.sh: the same launcher, with a rendezvous that never completes bounded and told in one line.

The nodes of a run meet at MASTER_ADDR:MASTER_PORT before any training process starts (torchrun's static
rendezvous: node 0 holds a TCPStore there, the other nodes connect to it). When they never meet (a node not
started, a wrong MASTER_PORT or MASTER_ADDR, a firewall), torch 2.14 ends badly: node 0 waits the rendezvous
timeout (``--rdzv-conf timeout=SECONDS``, 600 s by default), but a node that cannot reach node 0 waits about
twice that (its store retries a connection that itself waits the whole timeout), printing C++ retry warnings with
their C++ stacks meanwhile; both end with a traceback of torchrun's agent whose last line ("Timed out after 6
seconds waiting for clients. 1/2 clients joined.") names none of the settings to check.

Started here, a node says once what it waits for, keeps the store's C++ log quiet (this process only: the
training processes log as usual), gives up the rendezvous at most GRACE_S after its timeout (train.sh's
RDZV_TIMEOUT), and ends such a failure with one line naming NNODES, MASTER_ADDR:MASTER_PORT, the seconds waited
and what to check, exit status 1, before anything is written. Only the rendezvous is watched, never the training;
everything else (a failing process, signals) is torchrun's behaviour.

Usage (train.sh's): ``python -m continual.runtime.launch TORCHRUN_ARGS... main.py MAIN_ARGS...``.
"""
from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

# Read by libtorch when it loads: set around the import of torch, so that only this process is quiet.
CPP_LOG_LEVEL = "TORCH_CPP_LOG_LEVEL"
STATIC_DEFAULT_TIMEOUT_S = 600  # torchrun's static rendezvous without --rdzv-conf timeout
GRACE_S = 3  # node 0's own timeout fires first (its message says how many nodes joined); this bounds the others

Handler = TypeVar("Handler")
Met = TypeVar("Met")


@dataclass(frozen=True)
class Rendezvous:
    """Where and how long a node of a multi-node run waits for the others (torchrun's static rendezvous)."""

    nodes: str  # NNODES as given (torchrun also takes MIN:MAX)
    node_rank: int
    address: str
    port: int
    timeout_s: int

    @property
    def where(self) -> str:
        return f"NNODES={self.nodes} at MASTER_ADDR:MASTER_PORT {self.address}:{self.port}"

    def waiting_note(self) -> str:
        return (f"train.sh: node {self.node_rank} waits up to {self.timeout_s} s (RDZV_TIMEOUT) for the rendezvous "
                f"of {self.where}")

    def refusal(self, torch_says: str) -> str:
        """One line for a rendezvous that failed; ``torch_says`` (torch's reason, one line) ends it."""
        if re.search(r"timed out|still (connecting|waiting)", torch_says, re.IGNORECASE):
            return (f"train.sh: node {self.node_rank} waited {self.timeout_s} s (RDZV_TIMEOUT) for the rendezvous "
                    f"of {self.where} and the nodes never all met: check that every node is started within "
                    f"RDZV_TIMEOUT with the same NNODES, MASTER_ADDR and MASTER_PORT and its own NODE_RANK, and "
                    f"that {self.address}:{self.port} is node 0's address, reachable from every node "
                    f"(torch: {torch_says})")
        return (f"train.sh: node {self.node_rank} could not hold the rendezvous of {self.where}: check MASTER_ADDR "
                f"and MASTER_PORT (a port free on node 0) (torch: {torch_says})")


def rendezvous_of(args: Any) -> Rendezvous | None:
    """The static rendezvous that torchrun's parsed ``args`` describe; None for a single node's local one."""
    if args.standalone or args.rdzv_backend != "static" or args.rdzv_endpoint:
        return None
    if max_nodes(args.nnodes) == 1 and args.master_port is None:
        return None  # torchrun picks a free local port: nothing to wait for
    conf = dict(item.split("=", 1) for item in args.rdzv_conf.split(",") if "=" in item)
    return Rendezvous(nodes=args.nnodes, node_rank=args.node_rank, address=args.master_addr,
                      port=args.master_port if args.master_port is not None else 29500,
                      timeout_s=int(conf.get("timeout", STATIC_DEFAULT_TIMEOUT_S)))


def max_nodes(nnodes: str) -> int:
    """torchrun's ``--nnodes`` N or MIN:MAX: the most nodes the rendezvous waits for."""
    return int(nnodes.split(":")[-1])


def first_line(error: BaseException) -> str:
    """torch's reason without the C++ stack that its distributed errors may carry."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def give_up(rendezvous: Rendezvous) -> None:
    """End this node now, from the watch's thread: its main thread is blocked in the store's C++ connection
    loop, and nothing was started or written yet."""
    waiting = ("still waiting for the other nodes to connect" if rendezvous.node_rank == 0
               else f"still connecting to {rendezvous.address}:{rendezvous.port}")
    print(rendezvous.refusal(waiting), file=sys.stderr, flush=True)
    os._exit(1)


def watched(wait: Callable[[Handler], Met], rendezvous: Rendezvous) -> Callable[[Handler], Met]:
    """``wait`` (a rendezvous handler's next_rendezvous), given up GRACE_S after the rendezvous timeout."""

    def wait_at_most_the_timeout(handler: Handler) -> Met:
        watch = threading.Timer(rendezvous.timeout_s + GRACE_S, give_up, args=(rendezvous,))
        watch.daemon = True
        watch.start()
        try:
            return wait(handler)
        finally:
            watch.cancel()  # met (or failed with torch's own error): the training is never watched

    return wait_at_most_the_timeout


def main(argv: list[str] | None = None) -> int:
    user_level = os.environ.get(CPP_LOG_LEVEL)
    if user_level is None:
        os.environ[CPP_LOG_LEVEL] = "FATAL"  # the store's retry warnings, each with a C++ stack
    # torch imported here, after the log level is set (importing this module must not load libtorch)
    from torch.distributed import DistError
    from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous
    from torch.distributed.run import parse_args, run

    from continual.runtime.distributed import record_errors
    if user_level is None:
        del os.environ[CPP_LOG_LEVEL]  # the training processes inherit the user's environment
    args = parse_args(argv)
    rendezvous = rendezvous_of(args)
    if rendezvous is not None:
        if max_nodes(rendezvous.nodes) > 1:
            print(rendezvous.waiting_note(), file=sys.stderr, flush=True)
        # the handler's class is public, its creation is not: the watch wraps the one method that waits
        StaticTCPRendezvous.next_rendezvous = watched(  # type: ignore[method-assign, assignment]
            StaticTCPRendezvous.next_rendezvous, rendezvous)
    try:
        record_errors(run)(args)
    except DistError as error:  # raised by torchrun's agent itself (a training process's is a ChildFailedError)
        if rendezvous is None:
            raise
        print(rendezvous.refusal(first_line(error)), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
