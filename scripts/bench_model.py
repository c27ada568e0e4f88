"""BENCHMARKS.md §2: throughput of the published CIFAR DyTox model, plain baseline vs fast paths.

A training step is exactly the task loop's (``continual.train.epoch.train_one_epoch``
on one batch): forward, the DyTox loss (BCE, with the teacher's forward and the
divergence head from task 1 on), backward and an AdamW step, with old task
tokens and heads frozen. An evaluation step is the forward of
``continual.train.epoch.evaluate``, in inference mode.

Modes (each configuration runs in a fresh process, so that its peak resident
memory is its own):

- ``plain``: the baseline: the published arithmetic (positional map per sample,
  renormalised GPSA rows, separate Q/K and V projections), one decoder pass per
  task token, glibc's default allocator behaviour. No fast path.
- ``fast``: the defaults of ``main.py``: fused Q/K/V projection, positional map
  once per forward, joint decoding of all task tokens, freed host memory kept
  for reuse (``continual.runtime.host_memory``).
- ``fast-amp``: ``fast`` under bfloat16 autocast (``--amp``).
- ``fast-model``: the model's fast paths with glibc's default allocator behaviour,
  to tell the two sources of speed apart.

For each: images/s (median and min-max of the timed runs), peak resident memory
and the memory a step adds on top of the built model (peak minus resident
memory just before the first step), FLOPs of a step (``torch.utils.flop_counter``)
and the achieved GFLOP/s next to a 2048x2048 float32 matrix-multiply rate
measured in the same process.

    python scripts/bench_model.py                                  # 1, 3, 10, 50 tokens, plain and fast
    python scripts/bench_model.py --tokens 10 --modes plain fast fast-amp --runs 7
    python scripts/bench_model.py --tokens 10 --modes fast --kinds train --profile   # top operators
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continual.config import parse_config  # noqa: E402
from continual.config.settings import LossSettings, model_config, settings_of  # noqa: E402
from continual.model.build import grown_model  # noqa: E402
from continual.model.dytox import DyTox  # noqa: E402
from continual.runtime.host_memory import retain_freed_memory  # noqa: E402
from continual.train.epoch import Precision, evaluate, train_one_epoch  # noqa: E402
from continual.train.fit import batch_loss_of  # noqa: E402

OPTIONS = ["--options", "options/model/cifar_dytox.yaml"]
MODES = {
    "plain": dict(fast=False, amp=False, retain=False),
    "fast": dict(fast=True, amp=False, retain=True),
    "fast-amp": dict(fast=True, amp=True, retain=True),
    "fast-model": dict(fast=True, amp=False, retain=False),  # the model's fast paths alone
}
CLASSES_PER_TASK = 2  # 50 tokens = the 50-step CIFAR-100 setting


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds) / 1e9


def build(cfg: argparse.Namespace, fast: bool, tokens: int) -> tuple[DyTox, DyTox | None]:
    """The model during task ``tokens - 1``, frozen as in training, and its teacher, as the task loop
    makes them: the teacher is a frozen copy of the model before it expands."""
    torch.manual_seed(0)
    config = dataclasses.replace(model_config(cfg), fused_attention=fast, joint_tokens=fast)
    student = grown_model(config, [CLASSES_PER_TASK] * max(tokens - 1, 1))
    if tokens == 1:
        return student, None
    teacher = copy.deepcopy(student)
    teacher.freeze(["all"])
    student.expand(CLASSES_PER_TASK)
    student.freeze(cfg.freeze_task)
    return student, teacher


def measure(mode: str, tokens: int, kind: str, args: argparse.Namespace) -> dict:
    """Everything for one configuration, in this process."""
    settings = MODES[mode]
    if settings["retain"]:
        retain_freed_memory()
    torch.set_num_threads(args.threads)
    cfg = parse_config(OPTIONS)
    student, teacher = build(cfg, settings["fast"], tokens)
    precision = Precision(torch.device("cpu"), settings["amp"])
    training_loss = batch_loss_of(settings_of(LossSettings, cfg), mixup_on=False)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 32, 32, generator=generator)
    targets = torch.randint(student.nb_classes - CLASSES_PER_TASK, student.nb_classes, (args.batch,),
                            generator=generator)  # new-task labels, as in training
    batch = [(images, targets)]
    if kind == "train":
        optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)

        def step() -> None:
            train_one_epoch(student, teacher, batch, optimizer, training_loss, precision)
    else:
        def step() -> None:
            evaluate(student, batch, precision, student.nb_classes_per_task)

    resident_before = _resident_mib()
    with FlopCounterMode(display=False) as counter:
        if kind == "train":
            step()
        else:  # the counter's module hooks fail on parameters that require grad in inference mode
            trainable = [p for p in student.parameters() if p.requires_grad]
            student.requires_grad_(False)
            step()
            for param in trainable:
                param.requires_grad_(True)
    flops = counter.get_total_flops()
    seconds = []
    for i in range(args.warmup + args.runs):
        start = time.perf_counter()
        step()
        if i >= args.warmup:
            seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    matmul_rate = matmul_gflops()  # after the peak is read, so that its buffers do not count
    result = dict(mode=mode, tokens=tokens, kind=kind, images_per_s=[args.batch / s for s in seconds],
                  gflop_per_image=flops / args.batch / 1e9, gflops=flops / statistics.median(seconds) / 1e9,
                  matmul_gflops=matmul_rate, peak_rss_mib=peak, step_memory_mib=peak - resident_before)
    if args.profile:
        result["profile"] = profile_table(step)
    return result


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def profile_table(step) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def run_isolated(args: argparse.Namespace, mode: str, tokens: int, kind: str) -> dict:
    command = [sys.executable, __file__, "--one", mode, str(tokens), kind, "--batch", str(args.batch),
               "--runs", str(args.runs), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    if args.profile:
        command.append("--profile")
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def summarise(results: list[dict]) -> None:
    print(f"{'kind':5} {'tokens':>6} {'mode':8} {'img/s':>7} {'min-max':>11} {'speed-up':>8} "
          f"{'peak MiB':>8} {'step MiB':>8} {'mem ratio':>9} {'GFLOP/img':>9} {'GFLOP/s':>7} {'matmul':>6}")
    by_key = {(r["kind"], r["tokens"], r["mode"]): r for r in results}
    for r in results:
        median = statistics.median(r["images_per_s"])
        plain = by_key.get((r["kind"], r["tokens"], "plain"))
        speedup = median / statistics.median(plain["images_per_s"]) if plain else float("nan")
        memory = r["step_memory_mib"] / plain["step_memory_mib"] if plain else float("nan")
        spread = f"{min(r['images_per_s']):.1f}-{max(r['images_per_s']):.1f}"
        print(f"{r['kind']:5} {r['tokens']:>6} {r['mode']:8} {median:>7.1f} {spread:>11} {speedup:>7.2f}x "
              f"{r['peak_rss_mib']:>8.0f} {r['step_memory_mib']:>8.0f} {memory:>8.2f}x "
              f"{r['gflop_per_image']:>9.2f} "
              f"{r['gflops']:>7.1f} {r['matmul_gflops']:>6.0f}")
    for r in results:
        if "profile" in r:
            print(f"\n## profile: {r['kind']} {r['tokens']} tokens {r['mode']} (2 steps)\n{r['profile']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 3, 10, 50])
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["plain", "fast"])
    parser.add_argument("--kinds", nargs="+", choices=["train", "eval"], default=["train", "eval"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="print the top operators of each configuration")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "TOKENS", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])  # the option files are relative to the repository
    if args.one:
        mode, tokens, kind = args.one
        print(json.dumps(measure(mode, int(tokens), kind, args)))
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, batch {args.batch}, median of {args.runs} runs after {args.warmup} warm-up")
    results = []
    for kind in args.kinds:
        for tokens in args.tokens:
            for mode in args.modes:
                results.append(run_isolated(args, mode, tokens, kind))
                print(f"  done {kind} {tokens} {mode}", file=sys.stderr, flush=True)
    summarise(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
