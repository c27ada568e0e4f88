"""continual/runtime/launch.py: what a node waits for, the one line of a failed rendezvous, and the watch that
bounds the wait and nothing after it (the launches themselves: tests/program/test_multi_node.py)."""
from __future__ import annotations

import time

import pytest
from torch.distributed.elastic.rendezvous import static_tcp_rendezvous
from torch.distributed.run import parse_args

from continual.runtime import launch
from continual.runtime.launch import Rendezvous, first_line, rendezvous_of

NODE_1 = Rendezvous(nodes="2", node_rank=1, address="host0", port=29501, timeout_s=900)


def test_the_rendezvous_is_read_from_torchrun_s_arguments_as_train_sh_passes_them() -> None:
    several = ["--nnodes=2", "--node-rank=1", "--master-addr=host0", "--master-port=29501"]
    assert rendezvous_of(parse_args([*several, "--rdzv-conf=timeout=900", "--nproc-per-node=2", "main.py"])) == NODE_1
    # without train.sh's timeout, torchrun's own for the static rendezvous
    assert rendezvous_of(parse_args([*several, "main.py"])).timeout_s == 600  # type: ignore[union-attr]
    assert static_tcp_rendezvous._default_timeout_seconds == launch.STATIC_DEFAULT_TIMEOUT_S
    # one node: torchrun's local rendezvous on a free port (nothing to wait for), unless MASTER_PORT is given
    assert rendezvous_of(parse_args(["--standalone", "--nproc-per-node=2", "main.py"])) is None
    assert rendezvous_of(parse_args(["--nproc-per-node=2", "main.py"])) is None
    alone = rendezvous_of(parse_args(["--nnodes=1", "--master-port=29502", "main.py"]))
    assert alone == Rendezvous(nodes="1", node_rank=0, address="127.0.0.1", port=29502, timeout_s=600)


def test_a_failed_rendezvous_is_one_line_naming_what_was_awaited_and_what_to_check() -> None:
    assert NODE_1.refusal("still connecting to host0:29501") == (
        "train.sh: node 1 waited 900 s (RDZV_TIMEOUT) for the rendezvous of NNODES=2 at MASTER_ADDR:MASTER_PORT "
        "host0:29501 and the nodes never all met: check that every node is started within RDZV_TIMEOUT with the "
        "same NNODES, MASTER_ADDR and MASTER_PORT and its own NODE_RANK, and that host0:29501 is node 0's address, "
        "reachable from every node (torch: still connecting to host0:29501)")
    taken = ("The server socket has failed to listen on any local network address. port: 29501, useIpv6: false, "
             "code: -98, name: EADDRINUSE, message: address already in use")
    assert NODE_1.refusal(taken) == (
        "train.sh: node 1 could not hold the rendezvous of NNODES=2 at MASTER_ADDR:MASTER_PORT host0:29501: check "
        f"MASTER_ADDR and MASTER_PORT (a port free on node 0) (torch: {taken})")
    # torch's distributed errors may carry their C++ stack after the reason
    assert first_line(RuntimeError("Timed out after 6 seconds waiting for clients. 1/2 clients joined.\n"
                                   "Exception raised from waitForWorkers at TCPStore.cpp:123\nframe #0: ...")) == (
        "Timed out after 6 seconds waiting for clients. 1/2 clients joined.")


def test_the_watch_gives_up_a_wait_longer_than_the_timeout_and_never_fires_after_the_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    given_up: list[Rendezvous] = []
    monkeypatch.setattr(launch, "give_up", given_up.append)  # instead of ending this process
    monkeypatch.setattr(launch, "GRACE_S", 0.1)
    soon = Rendezvous(nodes="2", node_rank=1, address="host0", port=29501, timeout_s=0)
    assert launch.watched(lambda handler: handler + 1, soon)(41) == 42  # met at once
    time.sleep(0.3)
    assert given_up == []  # the training that follows is never watched
    launch.watched(lambda handler: time.sleep(0.4), soon)(None)  # still waiting after 0.1 s
    assert given_up == [soon]
