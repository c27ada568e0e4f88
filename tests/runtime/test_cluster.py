"""A cluster job's processes: torchrun's variables from what SLURM tells submitit, the rendezvous port of each
attempt, and the bridge that hands the time-limit signal to the run's stop request."""
from __future__ import annotations

import signal

import pytest
import submitit

from continual.runtime.cluster import SignalBridge, StoppedOutsideTraining, master_port, process_group_variables
from continual.runtime.preemption import StopRequest

SLURM_TASK = {  # task 5 of 8: the second of 4 tasks on the second node of "gpu[07-08]"
    "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "1234", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}


def test_a_slurm_task_gets_its_rank_the_world_size_and_the_first_node_as_rendezvous(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)
    place = submitit.JobEnvironment()
    assert process_group_variables(place, attempt=0) == {
        "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "gpu07", "MASTER_PORT": "11234"}
    assert process_group_variables(place, attempt=1)["MASTER_PORT"] == str(10_000 + (1234 + 7919) % 20_000)  # 19153
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")  # one node: the loopback address, whatever its name
    assert process_group_variables(place, attempt=0)["MASTER_ADDR"] == "127.0.0.1"


def test_the_port_depends_on_the_job_and_the_attempt_only() -> None:
    assert master_port("1234", 0) == master_port("1234", 0) == 11234
    assert len({master_port(job, attempt) for job in ("1234", "1235") for attempt in range(5)}) == 10
    assert master_port("77_3", 0) == 10_000 + 773  # an array job's "<id>_<index>"
    assert all(10_000 <= master_port(str(job), 3) < 30_000 for job in (0, 19_999, 10**9 + 7))


def test_the_time_limit_signal_reaches_the_run_s_stop_request_and_stops_at_once_outside_it() -> None:
    def submitits(signum: int, frame: object) -> None:  # stands for submitit's handler, which requeues
        raise AssertionError("the bridge's signal reached the handler it replaced")

    before = signal.signal(signal.SIGUSR2, submitits)
    bridge = SignalBridge((signal.SIGUSR2, signal.SIGTERM)).install()
    try:
        stop = StopRequest().install()  # what the task loop installs while the tasks run
        signal.raise_signal(signal.SIGUSR2)
        assert stop.signal_name == "SIGUSR2" and bridge.received == "SIGUSR2"  # the loop saves at the next step
        stop.uninstall()
        for signum in (signal.SIGUSR2, signal.SIGTERM):  # no loop listening: setting up, or writing the summary
            with pytest.raises(StoppedOutsideTraining, match=f"stopped by {signal.Signals(signum).name} outside"):
                signal.raise_signal(signum)
    finally:
        bridge.uninstall()
    assert signal.getsignal(signal.SIGUSR2) == submitits == bridge.previous(signal.SIGUSR2)
    signal.signal(signal.SIGUSR2, before)
