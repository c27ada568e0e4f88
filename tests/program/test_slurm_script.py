"""scripts/slurm/train.sbatch, the sbatch + srun + train.sh way, under stubs of srun, scontrol and scancel and a
stub Python in place of torchrun: the rendezvous each node gets, and the requeue on the time-limit signal."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "slurm" / "train.sbatch"
STUBS = {
    # srun: one task, on node 1, with the GPUs SLURM would give it (srun's own options dropped)
    "srun": 'while [[ $1 == --* ]]; do shift; done\nSLURM_NODEID=1 CUDA_VISIBLE_DEVICES=0,1 exec "$@"',
    "scontrol": 'if [ "$1" = show ]; then echo node07; echo node08; else echo "scontrol $*" >> "$STUB_LOG"; fi',
    "scancel": 'echo "scancel $*" >> "$STUB_LOG"; kill -TERM "$(cat "$STUB_DIR/run.pid")"',
    # torchrun's Python: says how it was started; with STUB_RUN_UNTIL_TERM, runs until SIGTERM and "saves"
    "python": 'echo "python $* | NNODES=$NNODES NODE_RANK=$NODE_RANK MASTER_ADDR=$MASTER_ADDR '
              'MASTER_PORT=$MASTER_PORT CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" >> "$STUB_LOG"\n'
              'if [ -n "${STUB_RUN_UNTIL_TERM:-}" ]; then\n'
              '  trap \'echo "run state saved" >> "$STUB_LOG"; exit 143\' TERM\n'
              '  echo $$ > "$STUB_DIR/run.pid.tmp"; mv "$STUB_DIR/run.pid.tmp" "$STUB_DIR/run.pid"\n'  # seen whole
              '  while true; do sleep 0.05; done\nfi',
}


@pytest.fixture
def slurm(tmp_path: Path) -> dict[str, str]:
    """The environment of a 2-node batch job whose commands are the stubs."""
    for name, body in STUBS.items():
        stub = tmp_path / name
        stub.write_text(f"#!/usr/bin/env bash\n{body}\n")
        stub.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(tmp_path / "python"),
            "STUB_DIR": str(tmp_path), "STUB_LOG": str(tmp_path / "log"), "SLURM_SUBMIT_DIR": str(REPO_ROOT),
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[07-08]"}


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_each_node_starts_train_sh_with_the_job_s_rendezvous_and_its_run_folder(
        tmp_path: Path, slurm: dict[str, str]) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--options", "a.yaml", "--name", "x"], env=slurm, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "log").read_text().splitlines() == [
        "python -m continual.runtime.launch --nnodes=2 --node-rank=1 --master-addr=node07 --master-port=14242 "
        "--rdzv-conf=timeout=900 --nproc-per-node=2 main.py --options a.yaml --name x "
        "--output-basedir outputs/slurm/4242 --auto-resume "
        "| NNODES=2 NODE_RANK=1 MASTER_ADDR=node07 MASTER_PORT=14242 CUDA_VISIBLE_DEVICES=0,1"]


def test_the_time_limit_signal_stops_the_run_then_requeues_the_job(tmp_path: Path, slurm: dict[str, str]) -> None:
    batch = subprocess.Popen(["bash", str(SCRIPT), "--name", "x"], env={**slurm, "STUB_RUN_UNTIL_TERM": "1"},
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "run.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    batch.send_signal(signal.SIGUSR2)  # what --signal=B:USR2@120 sends to the batch script
    output, _ = batch.communicate(timeout=30)
    assert batch.returncode == 0, output
    assert "the run saves its state and job 4242 is requeued" in output
    assert (tmp_path / "log").read_text().splitlines()[1:] == [
        "scancel --signal=TERM 4242", "run state saved", "scontrol requeue 4242"]  # in this order
