"""Submit a DyTox run to SLURM through submitit, requeued on time-out and pre-emption until it ends.

    python run_with_submitit.py --nodes N --ngpus G --timeout MIN --partition P [--job-dir DIR]
        [--cluster slurm|local] [--wait] [main.py options]

This script's options come first; every other option is main.py's, checked before anything is
submitted. Each task of the job is one process of the run (one per GPU; ``--ngpus 0``: CPU processes with
gloo). The job folder holds submitit's files and logs (``submitit/<job id>_<task>_log.out`` and ``.err``)
and the run folder (``<dataset>/<setting>/<date>_<name>``). On time-out or pre-emption the run saves its
state at the next step and the job requeues itself with ``--resume`` of that run folder
(continual/train/submitit_job.py). ``--cluster local`` runs the same with submitit's local executor.
See docs/running.md, "SLURM".
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

import main
from continual.config import ConfigError, Settings
from continual.config.validate import check_world_size
from continual.train.submitit_job import RunPlace, SubmititJob

REPO_ROOT = Path(__file__).resolve().parent

EPILOG = """\
Every other option is main.py's (python main.py --help, docs/options.md), passed to main.py unchanged and
checked before anything is submitted. The run folder goes into the job folder (main.py's --output-basedir
is the job folder); the job's first attempt starts it and every requeued attempt continues it with
--resume. Example, CIFAR-100 in 10 steps on 2 GPUs of one node:

  python run_with_submitit.py --nodes 1 --ngpus 2 --timeout 1440 --partition gpu \\
      --options options/data/cifar100_10-10.yaml options/data/cifar100_order1.yaml \\
      options/model/cifar_dytox.yaml --name dytox --data-path data/ --distributed-memory --memory-size 2000"""


def job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_with_submitit.py", allow_abbrev=False, epilog=EPILOG,
        usage="run_with_submitit.py --nodes N --ngpus G --timeout MIN --partition P [--job-dir DIR] "
              "[--cluster slurm|local] [--wait] [main.py options]",
        description="Submit a DyTox run (main.py) as a SLURM job through submitit, requeued on time-out and "
                    "pre-emption until it ends.", formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--nodes", type=int, metavar="N", default=1, help="nodes of the job [default: 1]")
    add("--ngpus", type=int, metavar="G", default=1, help="GPUs per node, one process each; 0: CPU processes with gloo "
        "(--cpu-tasks of them per node) [default: 1]")
    add("--cpu-tasks", type=int, metavar="N", default=1, help="with --ngpus 0: CPU processes per node [default: 1]")
    add("--timeout", type=int, required=True, metavar="MIN", help="time limit of each attempt, in minutes")
    add("--partition", default=None, metavar="P", help="SLURM partition [default: the cluster's default]")
    add("--cpus-per-task", type=int, metavar="N", default=10, help="CPU cores per process (SLURM) [default: 10]")
    add("--signal-delay", type=int, default=120, metavar="S", help="seconds before the time limit when the "
        "run is told to save and stop; it must cover the longest stretch between two steps [default: 120]")
    add("--max-timeouts", type=int, metavar="N", default=30, help="how many times a job that reaches its time limit is "
        "requeued (pre-emptions do not count) [default: 30]")
    add("--slurm-option", action="append", default=[], metavar="KEY=VALUE", help="any other sbatch option, "
        "e.g. account=abc, qos=high, mem=64G (repeatable)")
    add("--job-dir", default=None, metavar="DIR", help="the job folder (submitit's files and logs, and the run "
        "folder) [default: <output-basedir>/jobs/<date>_<name>]")
    add("--cluster", choices=("slurm", "local"), default="slurm", help="slurm, or local: this machine "
        "through submitit's local executor (one node) [default: slurm]")
    add("--wait", action="store_true", help="block until the job ends; exit with its status (1 and its "
                                            "error if it failed)")
    return parser


def refusal(args: argparse.Namespace, cfg: argparse.Namespace) -> str | None:
    """What makes the job impossible before submitting it, if anything."""
    for flag, value, least in (("--nodes", args.nodes, 1), ("--ngpus", args.ngpus, 0),
                               ("--cpu-tasks", args.cpu_tasks, 1), ("--timeout", args.timeout, 1),
                               ("--cpus-per-task", args.cpus_per_task, 1), ("--signal-delay", args.signal_delay, 0),
                               ("--max-timeouts", args.max_timeouts, 0)):
        if value < least:
            return f"{flag} must be at least {least}, got {value}"
    malformed = [option for option in args.slurm_option if "=" not in option]
    if malformed:
        return f"--slurm-option {malformed[0]}: expected KEY=VALUE, e.g. account=abc"
    if args.cluster == "local" and args.nodes > 1:
        return f"--cluster local runs on this machine, one node: --nodes {args.nodes}"
    if args.ngpus > 0 and args.cpu_tasks != 1:
        return "--cpu-tasks is for CPU jobs (--ngpus 0): with GPUs there is one process per GPU"
    if args.ngpus == 0 and cfg.device not in ("auto", "cpu"):
        return f"--device {cfg.device} needs GPUs: give --ngpus"
    if args.ngpus > 0 and cfg.device == "cpu":
        return "--device cpu with GPUs asked for: give --ngpus 0 for a CPU job"
    if cfg.resume and not Path(cfg.resume).is_dir():
        return f"--resume {cfg.resume}: no such run folder"
    if cfg.output_dir and not cfg.name:
        return "--output-dir: the run folder goes into the job folder; give --job-dir (and --name) instead"
    if cfg.class_order and isinstance(cfg.class_order[0], list) and len(cfg.class_order) > 1:
        return f"class_order holds {len(cfg.class_order)} orders: submit one job per order (--class-order)"
    return None


def job_options(args: argparse.Namespace, given: list[str], cfg: argparse.Namespace, job_dir: Path) -> list[str]:
    """main.py's options in the job: the given ones, then the job folder as the output folder, the device, and
    --auto-resume (a job that SLURM itself restarts, after a node failure, continues its run folder)."""
    added = ["--output-basedir", str(job_dir)]
    if args.ngpus == 0:
        added += ["--device", "cpu"]
    if not (cfg.resume or cfg.eval):
        added.append("--auto-resume")
    return [*given, *added]


def make_executor(args: argparse.Namespace, folder: Path, name: str) -> submitit.Executor:
    """SLURM's executor, or the local one, with one task per GPU (or --cpu-tasks CPU processes) per node."""
    tasks = args.ngpus or args.cpu_tasks
    if args.cluster == "local":
        local = submitit.LocalExecutor(folder, max_num_timeout=args.max_timeouts)
        local.update_parameters(timeout_min=args.timeout, tasks_per_node=tasks, gpus_per_node=args.ngpus,
                                signal_delay_s=args.signal_delay)
        return local
    slurm = submitit.SlurmExecutor(folder, max_num_timeout=args.max_timeouts)
    extra = dict(option.split("=", 1) for option in args.slurm_option)
    slurm.update_parameters(job_name=name, nodes=args.nodes, ntasks_per_node=tasks, cpus_per_task=args.cpus_per_task,
                            time=args.timeout, signal_delay_s=args.signal_delay,
                            **({"gpus_per_node": args.ngpus} if args.ngpus else {}),
                            **({"partition": args.partition} if args.partition else {}),
                            **({"additional_parameters": extra} if extra else {}))
    return slurm


def submit(args: argparse.Namespace, options: list[str], settings: Settings, job_dir: Path,
           job_type: type[SubmititJob]) -> submitit.Job:
    """Write the job folder and submit; the tasks import this repository's code (PYTHONPATH)."""
    run = settings.run
    name = run.name or "dytox"
    executor = make_executor(args, job_dir / "submitit", name)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    place = RunPlace(str(job_dir), settings.data.data_set, run.log_category, run.name, run.resume)
    return executor.submit(job_type(tuple(options), os.getcwd(), place, main.main, evaluate=run.eval))


def waited(job: submitit.Job) -> int:
    """``--wait``: the job's end, as an exit status."""
    try:
        outcome = job.results()[0]
    except (FailedJobError, UncompletedJobError) as error:
        lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith("---")]
        reason = next((line for line in reversed(lines) if "JobFailed:" in line or "Error:" in line), lines[-1])
        reason = reason.split("JobFailed: ", 1)[-1].strip()  # main.py's error line, without the exception's path
        print(f"error: job {job.job_id} failed: {reason}\n  its logs: {job.paths.stdout} and {job.paths.stderr}",
              file=sys.stderr)
        return 1
    print(f"job {job.job_id}: {outcome}", flush=True)
    return 0


def cli(argv: list[str] | None = None, job_type: type[SubmititJob] = SubmititJob) -> int:
    parser = job_parser()
    args, given = parser.parse_known_args(argv)
    try:
        cfg, runs = main.configuration(given)  # main.py's own checks, before anything is written
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    problem = refusal(args, cfg)
    if problem:
        parser.error(problem)
    job_dir = Path(args.job_dir or Path(cfg.output_basedir) / "jobs" /
                   f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{cfg.name or 'dytox'}").resolve()
    options = job_options(args, given, cfg, job_dir)
    try:
        cfg, runs = main.configuration(options)
        check_world_size(runs[0].run.world_size, args.nodes * (args.ngpus or args.cpu_tasks))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    job = submit(args, options, runs[0], job_dir, job_type)
    tasks = args.ngpus or args.cpu_tasks
    print(f"submitted job {job.job_id} ({args.cluster}, {args.nodes} node(s) x {tasks} "
          f"{'GPU' if args.ngpus else 'CPU'} process(es)) in {job_dir}\n  logs: {job_dir / 'submitit'}/"
          f"{job.job_id}_<task>_log.out and .err; the run folder goes under {job_dir}", flush=True)
    return waited(job) if args.wait else 0


if __name__ == "__main__":
    sys.exit(cli())
