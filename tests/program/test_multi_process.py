"""Two real CPU processes (torchrun, gloo): a run end to end, memory modes, accumulation, a crashing rank."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import DEMO, KILLABLE, TIMEOUT, environment, run_in_terminal, train_sh

import main
from conftest import HELPERS, REPO_ROOT
from continual.config import parse_config, settings_from
from continual.data.scenarios import build_scenarios
from continual.runtime.distributed import setup
from continual.train.session import run


def rows(tmp_path: Path) -> tuple[Path, list[dict]]:
    logs = sorted((tmp_path / "out").glob("digits/demo/*/log.jsonl"))
    assert len(logs) == 1, logs  # one run folder, written once
    return logs[0].parent, [json.loads(line) for line in logs[0].read_text().splitlines()]


def test_two_processes_with_global_memory(tmp_path: Path) -> None:
    result = train_sh(["--global-memory", "--name", "ddp"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("average incremental and last") == 1  # only rank 0 prints
    assert "%|" not in result.stdout + result.stderr  # output to pipes: no progress bar
    assert "note: published memory" not in result.stderr  # the memory is --memory-size in all
    folder, log = rows(tmp_path)
    cfg = parse_config(DEMO)
    _, test = build_scenarios(cfg)
    assert [r["eval_images"] for r in log] == [len(test[:1]), len(test[:2])]  # every test image exactly once
    assert all(r["world_size"] == 2 and r["memory_mode"] == "global" for r in log)
    assert [r["memory_total"] for r in log] == [200, 200]
    for row in log:
        first, second = row["memory_fingerprints"]
        assert first == second  # the same exemplars on both processes
    assert sorted(p.name for p in (folder / "memory").iterdir()) == ["memory_0.npz", "memory_1.npz"]
    assert "global memory" in result.stdout
    # The sharded, all-reduced counts equal a single-process evaluation of the same checkpoint.
    evaluated = run(settings_from(parse_config(DEMO + ["--global-memory", "--eval", "--resume", str(folder)])),
                    setup("cpu"))[0].to_row()
    for key in ("acc1", "acc5", "acc_old", "acc_new", "acc_task_incremental", "acc_task_prediction"):
        assert evaluated[key] == pytest.approx(log[-1][key]), key


def check_per_process_memory(base: Path, mode: str, total: int) -> None:
    folder, log = rows(base)
    assert all(r["memory_mode"] == mode for r in log)
    assert [r["memory_total"] for r in log] == [total, total]
    assert all(r["memory_fingerprints"][0] != r["memory_fingerprints"][1] for r in log)  # own augmentations
    assert sorted(p.name for p in (folder / "memory").iterdir()) == [
        "memory_0_rank0.npz", "memory_0_rank1.npz", "memory_1_rank0.npz", "memory_1_rank1.npz"]


def test_two_processes_with_distributed_memory_on_a_terminal(tmp_path: Path) -> None:
    """Run on a pseudo-terminal: only rank 0 draws progress bars (one initial render per epoch)."""
    argv = ["bash", str(REPO_ROOT / "train.sh"), "cpu", "2", *DEMO, "--distributed-memory", "--name", "ddp",
            "--output-basedir", str(tmp_path / "out"), "--log-dir", str(tmp_path / "logs")]
    status, shown = run_in_terminal(argv, environment(), TIMEOUT)
    assert status == 0, shown[-3000:]
    check_per_process_memory(tmp_path, "distributed", 200)  # memory_size / 2 per process: the erratum's protocol
    for bar in ("task 0 train 1/2", "task 0 train 2/2", "task 1 train 1/1", "task 1 finetune 1/1"):
        assert len(re.findall(re.escape(bar) + r": +0%\|", shown)) == 1, (bar, shown[-3000:])
    assert "note: published memory" not in shown


# two_processes_published (tests/conftest.py): train.sh cpu 2 with KILLABLE, shared with test_multi_node.py
def test_two_processes_keep_the_published_memory_by_default_and_say_so(two_processes_published: Path) -> None:
    check_per_process_memory(two_processes_published, "published", 400)  # memory_size per process, as published
    notes = [line for line in (two_processes_published / "stderr.txt").read_text().splitlines()
             if line.startswith("note: published memory")]
    assert notes == ["note: published memory: each of the 2 processes keeps its own --memory-size 200 exemplars, "
                     "400 in all. The DyTox erratum compares memories by their total (20 per class: 2000 on "
                     "CIFAR-100); to set the total, use --distributed-memory --memory-size TOTAL (each process "
                     "herds TOTAL/2 of its own: the erratum's distributed memory) or --global-memory --memory-size "
                     "TOTAL (one selection shared by all processes: its global memory). This run equals "
                     "--distributed-memory --memory-size 400."]  # once: rank 0 only


def test_one_process_with_accumulation_takes_the_same_step_as_two_processes(tmp_path: Path) -> None:
    script = str(HELPERS / "one_step.py")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", environment()["MASTER_PORT"]]
    ddp = subprocess.run([*torchrun, script, "ddp", str(tmp_path / "ddp.pt")],
                         capture_output=True, text=True, env=environment(), timeout=TIMEOUT)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, script, "accumulate", str(tmp_path / "single.pt")],
                            capture_output=True, text=True, env=environment(), timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp_step = torch.load(tmp_path / "ddp.pt", weights_only=True)
    single_step = torch.load(tmp_path / "single.pt", weights_only=True)
    for name, before in single_step["before"].items():
        torch.testing.assert_close(ddp_step["before"][name], before, rtol=0, atol=0)  # same start
        # SGD with lr 1: the update is the (mean) gradient
        torch.testing.assert_close(single_step["after"][name], ddp_step["after"][name], rtol=0, atol=1e-5, msg=name)
        moved = not torch.equal(single_step["after"][name], before)
        assert moved == (name in single_step["trainable"]), name


def test_a_crash_on_one_rank_ends_the_run_with_its_error(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-port", environment()["MASTER_PORT"], str(HELPERS / "crash_on_rank1.py"), *DEMO,
            "--device", "cpu", "--global-memory",
            "--output-basedir", str(tmp_path / "out"), "--log-dir", str(tmp_path / "logs")]
    result = subprocess.run(argv, capture_output=True, text=True, env=environment(), timeout=TIMEOUT)
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stdout + result.stderr


def test_train_sh_rejects_a_malformed_gpu_list() -> None:
    result = subprocess.run(["bash", str(REPO_ROOT / "train.sh"), "0;1", "--options"], capture_output=True, text=True)
    assert result.returncode == 2 and "comma-separated list of GPU ids" in result.stderr


QUICK = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"), str(REPO_ROOT / "options/model/demo_tiny.yaml"),
         "--debug", "--max-task", "1", "--no-progress", "--no-plots", "--no-tensorboard"]


def quick_run(out: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(REPO_ROOT / "train.sh"), "cpu", "2", *QUICK, "--output-basedir", str(out),
                             "--log-dir", str(out / "logs")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


def test_two_runs_on_one_machine_get_their_own_port_and_an_explicit_master_port_wins(tmp_path: Path) -> None:
    free = {k: v for k, v in environment().items() if k != "MASTER_PORT"}
    runs = [quick_run(tmp_path / name, free) for name in ("first", "second")]  # at the same time
    outputs = [run.communicate(timeout=TIMEOUT)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [output[-2000:] for output in outputs]
    assert all(len(list((tmp_path / name).glob("digits/demo/*/log.jsonl"))) == 1 for name in ("first", "second"))
    with socket.socket() as taken:  # MASTER_PORT set: train.sh uses it, here a port already in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        output = quick_run(tmp_path / "third", {**free, "MASTER_PORT": str(port)}).communicate(timeout=TIMEOUT)[0]
    assert f"port: {port}" in output and "EADDRINUSE" in output


def test_a_one_process_run_resumed_with_two_says_that_the_number_of_processes_differs(tmp_path: Path) -> None:
    assert main.main([*QUICK, "--name", "one", "--output-basedir", str(tmp_path),  # in this process: no start-up
                      "--log-dir", str(tmp_path / "logs")]) == 0
    folder = next(tmp_path.glob("digits/demo/*_one"))
    files = {path: path.stat().st_mtime_ns for path in folder.rglob("*")}
    output = subprocess.run(["bash", str(REPO_ROOT / "train.sh"), "cpu", "2", *QUICK, "--name", "one", "--resume",
                             str(folder), "--output-basedir", str(tmp_path), "--log-dir", str(tmp_path / "logs")],
                            capture_output=True, text=True, env=environment(), timeout=TIMEOUT)
    message = "the run was saved by 1 process(es) and is resumed with 2: resume it with 1"
    assert output.returncode != 0 and output.stderr.count(message) == 1, output.stderr[-2000:]
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*")} == files  # nothing written



def outputs_of(folder: Path) -> dict:
    """Weights of the last task, every memory file, and the log rows without their timings."""
    timings = {"seconds", "data_seconds", "images_per_s", "data_wait_fraction"}

    def rows(name: str) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k not in timings}
                for line in (folder / name).read_text().splitlines()]

    memories = {}
    for path in sorted((folder / "memory").iterdir()):
        with np.load(path) as memory:
            memories[path.name] = {key: memory[key] for key in ("x", "y", "t")}
    model = torch.load(folder / "checkpoints/checkpoint_1.pth", weights_only=True)["model"]
    return {"model": model, "memories": memories, "log": rows("log.jsonl"), "epochs": rows("epochs.jsonl")}


def test_a_two_process_run_killed_mid_epoch_and_resumed_equals_the_uninterrupted_run(
        tmp_path: Path, two_processes_published: Path) -> None:
    expected = outputs_of(rows(two_processes_published)[0])
    hook = {"PYTHONPATH": f"{HELPERS / 'kill_hook'}:{REPO_ROOT}", "DYTOX_TEST_KILL_AT": "task 1, train epoch 1, step 2"}
    killed = subprocess.run(["bash", str(REPO_ROOT / "train.sh"), "cpu", "2", *DEMO, *KILLABLE, "--output-basedir",
                             str(tmp_path / "killed/out"), "--log-dir", str(tmp_path / "killed/logs")],
                            capture_output=True, text=True, env={**environment(), **hook}, timeout=TIMEOUT)
    assert killed.returncode != 0 and "Signal 9 (SIGKILL) received" in killed.stderr, killed.stderr[-3000:]
    folder = next((tmp_path / "killed/out").glob("digits/demo/*_killed"))
    assert not (folder / "checkpoints/checkpoint_1.pth").exists()  # it died inside task 1
    resumed = train_sh([*KILLABLE, "--resume", str(folder)], tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "running from task 1 (train)" in resumed.stdout
    got = outputs_of(folder)
    assert got["log"] == expected["log"] and got["epochs"] == expected["epochs"]
    assert got["memories"].keys() == expected["memories"].keys() == {
        "memory_0_rank0.npz", "memory_0_rank1.npz", "memory_1_rank0.npz", "memory_1_rank1.npz"}
    for name, arrays in expected["memories"].items():
        assert all(np.array_equal(got["memories"][name][key], arrays[key]) for key in arrays), name
    for name, value in expected["model"].items():
        assert torch.equal(got["model"][name], value), name
