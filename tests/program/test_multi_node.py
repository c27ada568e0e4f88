"""Several nodes on one machine (docs/running.md, "Several nodes"): the documented two launches train the run of
``train.sh cpu 2``, and a rendezvous that cannot complete ends in bounded time with one line, nothing written."""
from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from support import DEMO, KILLABLE, TIMEOUT, environment

from conftest import REPO_ROOT
from continual.runtime.launch import GRACE_S

ACCURACIES = ("acc1", "acc5", "acc_per_task", "acc_old", "acc_new", "acc_task_incremental", "acc_task_prediction",
              "avg_acc")


def documented_launches() -> list[tuple[dict[str, str], list[str]]]:
    """The one-machine commands of docs/running.md's "Several nodes": (environment, argv) of node 0, node 1."""
    text = (REPO_ROOT / "docs/running.md").read_text(encoding="utf-8")
    section = text[text.index("## Several nodes"):]
    section = section[:section.index("\n## ")]
    launches = []
    for line in section.splitlines():
        if line.startswith("NNODES=") and "MASTER_ADDR=127.0.0.1" in line:
            words = shlex.split(line.removesuffix("&"))
            command = words.index("bash")  # the variables before it
            launches.append((dict(word.split("=", 1) for word in words[:command]), words[command:]))
    assert [env["NODE_RANK"] for env, _ in launches] == ["0", "1"]
    return launches


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(documented: tuple[dict[str, str], list[str]], base: Path, **changes: str) -> subprocess.Popen:
    """A documented launch, in the repository as the document's reader, with ``changes`` to its variables and the
    outputs under ``base``."""
    variables, argv = documented
    outputs = ["--output-basedir", str(base / "out"), "--log-dir", str(base / "logs")]
    return subprocess.Popen([*argv, *DEMO[3:], *KILLABLE, *outputs], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**environment(), **variables, **changes})


def test_the_documented_launches_are_the_demo_of_the_shared_run_on_one_cpu_process_each() -> None:
    for variables, argv in documented_launches():
        assert variables["NNODES"] == "2" and variables["MASTER_ADDR"] == "127.0.0.1"
        assert argv[:4] == ["bash", "train.sh", "cpu", "1"] and argv[4] == "--options"
        assert [str(REPO_ROOT / name) for name in argv[5:7]] == DEMO[1:3]  # the option files of the shared run
        assert set(argv[7:]) <= set(KILLABLE)  # and a part of its flags


def test_two_nodes_on_one_machine_train_the_run_of_two_processes(tmp_path: Path,
                                                                 two_processes_published: Path) -> None:
    """The run of ``train.sh cpu 2`` again as two one-process nodes meeting at 127.0.0.1. A rendezvous timeout
    below the run's length: a watch left running after the nodes met would end the training."""
    port = str(free_port())
    nodes = [start(launch, tmp_path, MASTER_PORT=port, RDZV_TIMEOUT="10") for launch in documented_launches()]
    outputs = [node.communicate(timeout=TIMEOUT) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-3000:] for _, err in outputs]
    assert ["average incremental and last" in out for out, _ in outputs] == [True, False]  # rank 0 is on node 0
    (folder,) = (tmp_path / "out").glob("digits/demo/*_killed")
    (expected,) = (two_processes_published / "out").glob("digits/demo/*_killed")
    got_rows, expected_rows = ([json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
                               for run in (folder, expected))
    assert [r["world_size"] for r in got_rows] == [2, 2]
    for got, wanted in zip(got_rows, expected_rows, strict=True):
        assert {key: got[key] for key in ACCURACIES} == {key: wanted[key] for key in ACCURACIES}
        assert got["memory_fingerprints"] == wanted["memory_fingerprints"]  # each rank herded the same exemplars
    weights, expected_weights = (torch.load(run / "checkpoints/checkpoint_1.pth", weights_only=True)["model"]
                                 for run in (folder, expected))
    assert weights.keys() == expected_weights.keys()
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-5, msg=name)


RDZV_TIMEOUT = 1


@dataclass(frozen=True)
class Refused:
    """A node whose rendezvous could not complete: its rank, the port it waited at, how it ended."""

    rank: int
    port: int
    status: int
    stderr: str
    seconds: float
    base: Path  # its --output-basedir and --log-dir are under it


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Refused]:
    """Node 0 alone (node 1 never starts), and node 1 given a wrong MASTER_PORT beside node 0: all three at once."""
    base = tmp_path_factory.mktemp("refused")
    alone, right, wrong = free_port(), free_port(), free_port()
    cases = {"missing node 1": (0, alone), "wrong port, node 0": (0, right), "wrong port, node 1": (1, wrong)}
    began = time.monotonic()
    running = {case: start(documented_launches()[rank], base / f"case{number}", MASTER_PORT=str(port),
                           RDZV_TIMEOUT=str(RDZV_TIMEOUT)) for number, (case, (rank, port)) in enumerate(cases.items())}
    ended = {}
    for number, (case, node) in enumerate(running.items()):
        _, err = node.communicate(timeout=TIMEOUT)  # the later ones' seconds may include the earlier ones' wait
        ended[case] = Refused(*cases[case], node.returncode, err, time.monotonic() - began, base / f"case{number}")
    return ended


@pytest.mark.parametrize("case", ["missing node 1", "wrong port, node 0", "wrong port, node 1"])
def test_a_rendezvous_that_cannot_complete_ends_in_bounded_time_with_one_line(refused: dict[str, Refused],
                                                                             case: str) -> None:
    node = refused[case]
    address = f"NNODES=2 at MASTER_ADDR:MASTER_PORT 127.0.0.1:{node.port}"
    lines = node.stderr.strip().splitlines()
    assert node.status == 1 and "Traceback" not in node.stderr, node.stderr[-3000:]
    assert lines[0] == (f"train.sh: node {node.rank} waits up to {RDZV_TIMEOUT} s (RDZV_TIMEOUT) for the "
                        f"rendezvous of {address}")
    assert lines[-1].startswith(
        f"train.sh: node {node.rank} waited {RDZV_TIMEOUT} s (RDZV_TIMEOUT) for the rendezvous of {address} and the "
        f"nodes never all met: check that every node is started within RDZV_TIMEOUT with the same NNODES, "
        f"MASTER_ADDR and MASTER_PORT and its own NODE_RANK, and that 127.0.0.1:{node.port} is node 0's address, "
        f"reachable from every node (torch: "), lines[-1]
    assert len(lines) == 2, lines  # the store's C++ retry warnings are not shown
    # It waited (the start of Python and torch aside, at most a minute on a busy machine), and for no longer.
    assert RDZV_TIMEOUT <= node.seconds < RDZV_TIMEOUT + GRACE_S + 60, node.seconds
    assert not any(node.base.rglob("*"))  # no run folder, log or checkpoint


@pytest.mark.parametrize(("variables", "error"), [
    ({"NNODES": "2", "RDZV_TIMEOUT": "15m"}, "RDZV_TIMEOUT must be a whole number of seconds above 0, got '15m'"),
    ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK must be one of 0 to NNODES-1 (1), a different one on each node, "
                                        "got '2'"),
])
def test_train_sh_refuses_a_timeout_or_a_node_rank_it_cannot_use_in_one_line(variables: dict[str, str],
                                                                             error: str) -> None:
    result = subprocess.run(["bash", str(REPO_ROOT / "train.sh"), "cpu", "1", "--options"], capture_output=True,
                            text=True, env={**environment(), **variables})
    assert (result.returncode, result.stderr) == (2, f"train.sh: {error}\n")
