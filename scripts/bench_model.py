"""Throughput of the published CIFAR DyTox model, plain baseline vs fast paths (docs/benchmarks.md).

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
- ``fast-amp``, ``plain-amp``: the same under autocast, as ``--amp`` trains: bfloat16 on
  the CPU, float16 with loss scaling (``torch.amp.GradScaler``) on CUDA.
- ``fast-model``: the model's fast paths with glibc's default allocator behaviour,
  to tell the two sources of speed apart.
- ``fast-compiled``, ``fast-amp-compiled``: ``fast`` (``fast-amp``) with ``--compile``: the model
  compiled by inductor as a phase compiles it (``continual.train.compilation``); the warm-up steps
  compile, the timed ones run the compiled code.

For each: images/s (median and min-max of the timed runs), peak memory and the
memory a step adds on top of the built model (peak minus the memory just before
the first step; resident memory on the CPU, the CUDA allocator's on ``--device
cuda``), FLOPs of a step (``torch.utils.flop_counter``) and the achieved GFLOP/s
next to a 2048x2048 float32 matrix-multiply rate measured in the same process
on the same device.

    python scripts/bench_model.py                                  # 1, 3, 10, 50 tokens, plain and fast
    python scripts/bench_model.py --tokens 10 --modes plain fast fast-amp --runs 7
    python scripts/bench_model.py --tokens 10 --modes fast --kinds train --profile   # top operators
    python scripts/bench_model.py --device cuda --tokens 1 10 50 --modes plain fast plain-amp fast-amp
    python scripts/bench_model.py --count-ops --tokens 1 10 50 --modes fast --batch 2   # operations, as JSON
    python scripts/bench_model.py --tokens 10 --modes fast --kinds train --batch 2 --embed-dim 8 --num-heads 1  # host

``--count-ops`` times nothing: for each configuration it prints, as JSON, the aten operations one step
dispatches (views apart) and its host synchronisations (``.item()``, data-dependent shapes, copies to the
host: ``scripts/lib/op_count.py``), counted on the step after a first one (the optimiser's state exists).
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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lib.op_count import CountedBatches, OpCounter  # noqa: E402

from continual.config import parse_config  # noqa: E402
from continual.config.settings import LossSettings, OptimizerSettings, model_config, settings_of  # noqa: E402
from continual.method.dytox_objective import batch_loss_of  # noqa: E402
from continual.model.build import grown_model  # noqa: E402
from continual.model.dytox import DyTox  # noqa: E402
from continual.runtime.device import attention_kernel_for, resolve_device  # noqa: E402
from continual.runtime.host_memory import retain_freed_memory  # noqa: E402
from continual.train.compilation import compiled_for_phase  # noqa: E402
from continual.train.epoch import Precision, StepOptions, evaluate, train_one_epoch  # noqa: E402
from continual.train.optim import build_optimizer  # noqa: E402

OPTIONS = ["--options", "options/model/cifar_dytox.yaml"]
MODES = {
    "plain": dict(fast=False, amp=False, retain=False),
    "plain-amp": dict(fast=False, amp=True, retain=False),
    "fast": dict(fast=True, amp=False, retain=True),
    "fast-amp": dict(fast=True, amp=True, retain=True),
    "fast-model": dict(fast=True, amp=False, retain=False),  # the model's fast paths alone
    "fast-compiled": dict(fast=True, amp=False, retain=True, compile=True),  # --compile (inductor)
    "fast-amp-compiled": dict(fast=True, amp=True, retain=True, compile=True),
}
CLASSES_PER_TASK = 2  # 50 tokens = the 50-step CIFAR-100 setting


class Clock:
    """Times and memory on one device. CUDA runs asynchronously, so a timing waits for the device before it
    starts and before it stops; its memory is the caching allocator's, not the process's resident memory.
    On the CPU the same code runs with nothing to wait for."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, step: Callable[[], object]) -> float:
        self.synchronize()
        start = time.perf_counter()
        step()
        self.synchronize()
        return time.perf_counter() - start

    def memory_mib(self) -> float:
        """Memory held now: tensors on the GPU, or this process's resident memory."""
        return torch.cuda.memory_allocated(self.device) / 2**20 if self.cuda else _resident_mib()

    def peak_mib(self) -> float:
        """The most held since the process started (ru_maxrss is in KiB on Linux)."""
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(clock: Clock, size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, device=clock.device), torch.randn(size, size, device=clock.device)
    clock.seconds(lambda: a @ b)  # warm-up (the first call also loads cuBLAS)
    seconds = [clock.seconds(lambda: a @ b) for _ in range(repeats)]
    return 2 * size**3 / statistics.median(seconds) / 1e9


def build(cfg: argparse.Namespace, fast: bool, tokens: int, device: torch.device) -> tuple[DyTox, DyTox | None]:
    """The model during task ``tokens - 1`` on ``device``, frozen as in training, and its teacher, as the task
    loop makes them: the teacher is a frozen copy of the model before it expands; the GPSA kernel is the
    device's (``attention_kernel_for``), as ``main.py`` picks it."""
    torch.manual_seed(0)
    config = dataclasses.replace(model_config(cfg), fused_attention=fast, joint_tokens=fast,
                                 gpsa_kernel=attention_kernel_for(device))
    student = grown_model(config, [CLASSES_PER_TASK] * max(tokens - 1, 1))
    assert isinstance(student, DyTox)  # the options are DyTox's
    if tokens == 1:
        return student.to(device), None
    teacher = copy.deepcopy(student)
    teacher.freeze(["all"])
    student.expand(CLASSES_PER_TASK)
    student.freeze(cfg.freeze_task)
    return student.to(device), teacher.to(device)


class Bench(NamedTuple):
    """What one configuration measures: ``step`` (an epoch of the one ``batch``), the ``epoch`` it runs (to count
    one step inside an epoch of several), the model and the optimiser (built as the loop builds it)."""

    step: Callable[[], None]
    eager_step: Callable[[], None]  # the step without --compile (FLOPs are counted on it)
    epoch: Callable[[Iterable], None]
    model: DyTox
    optimizer: torch.optim.Optimizer | None
    batch: tuple[torch.Tensor, torch.Tensor]


def make_step(cfg: argparse.Namespace, mode: str, tokens: int, kind: str, batch_size: int,
              device: torch.device, amp_dtype: str = "auto") -> Bench:
    """One training step (``train_one_epoch`` on one batch, loss-scaled under float16 as ``fit`` does) or one
    evaluation forward, on a fixed batch already on ``device``."""
    settings = MODES[mode]
    student, teacher = build(cfg, settings["fast"], tokens, device)
    precision = Precision(device, settings["amp"], amp_dtype)  # auto: bfloat16 on the CPU, float16 on CUDA
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, 32, 32, generator=generator)
    targets = torch.randint(student.nb_classes - CLASSES_PER_TASK, student.nb_classes, (batch_size,),
                            generator=generator)  # new-task labels, as in training
    batch = (images.to(device), targets.to(device))
    if kind == "eval":
        def evaluation(batches: Iterable) -> None:
            evaluate(lambda model, images: model(images).logits, student, batches, precision,
                     student.nb_classes_per_task)
        return Bench(lambda: evaluation([batch]), lambda: evaluation([batch]), evaluation, student, None, batch)
    training_loss = batch_loss_of(settings_of(LossSettings, cfg), mixup_on=False)
    optimizer = build_optimizer(student, settings_of(OptimizerSettings, cfg), lr=1e-4)
    options = StepOptions(scaler=precision.grad_scaler())  # one scaler for all steps, as in a phase

    trained = compiled_for_phase(student, settings.get("compile", False))

    def epoch(batches: Iterable, model: torch.nn.Module = trained) -> None:
        train_one_epoch(model, teacher, batches, optimizer, training_loss, precision, options)
    return Bench(lambda: epoch([batch]), lambda: epoch([batch], student), epoch, student, optimizer, batch)


def host_counters(optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """The step counters a non-fused torch optimiser keeps in host memory (on CUDA too): reading them is no
    synchronisation with the device."""
    if optimizer is None or optimizer.defaults.get("fused") or optimizer.defaults.get("capturable"):
        return []
    return [state["step"] for state in optimizer.state.values() if isinstance(state.get("step"), torch.Tensor)]


def count_step(bench: Bench) -> dict:
    """The operations of the middle step of a three-step epoch, after a first epoch (the optimiser's state
    exists): the per-step cost, without the reads that end an epoch."""
    bench.step()
    counter = OpCounter(host_counters(bench.optimizer))
    bench.epoch(CountedBatches([bench.batch] * 3, 1, counter))
    return counter.summary()


def count_flops(step: Callable[[], None], model: DyTox, kind: str) -> int:
    """FLOPs of one step; the step runs once."""
    with FlopCounterMode(display=False) as counter:
        if kind == "train":
            step()
        else:  # the counter's module hooks fail on parameters that require grad in inference mode
            trainable = [p for p in model.parameters() if p.requires_grad]
            model.requires_grad_(False)
            step()
            for param in trainable:
                param.requires_grad_(True)
    return counter.get_total_flops()


def measure(mode: str, tokens: int, kind: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Everything for one configuration, in this process."""
    if MODES[mode]["retain"]:
        retain_freed_memory()
    if device.type == "cpu":  # on CUDA the work is the GPU's; torch keeps its own host threads
        torch.set_num_threads(args.threads)
    clock = Clock(device)
    width = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in ("embed_dim", "num_heads")
             if getattr(args, name, None) is not None]
    cfg = parse_config([*OPTIONS, "--opt-impl", args.opt_impl, *width])
    bench = make_step(cfg, mode, tokens, kind, args.batch, device, getattr(args, "amp_dtype", "auto"))
    step, model = bench.step, bench.model
    if args.count_ops and MODES[mode].get("compile"):
        raise SystemExit("bench_model.py: --count-ops counts the aten operations of eager modes, not compiled code")
    if args.count_ops:
        return dict(mode=mode, tokens=tokens, kind=kind, device=device.type, batch=args.batch,
                    opt_impl=args.opt_impl, **count_step(bench))
    memory_before = clock.memory_mib()
    flops = count_flops(bench.eager_step, model, kind)
    for _ in range(args.warmup):
        clock.seconds(step)
    seconds = [clock.seconds(step) for _ in range(args.runs)]
    peak = clock.peak_mib()
    matmul_rate = matmul_gflops(clock)  # after the peak is read, so that its buffers do not count
    result = dict(mode=mode, tokens=tokens, kind=kind, device=device.type, batch=args.batch,
                  amp_dtype=str(Precision(device, True, args.amp_dtype).dtype).removeprefix("torch.")
                  if MODES[mode]["amp"] else "float32", opt_impl=args.opt_impl,
                  step_ms=[s * 1e3 for s in seconds], images_per_s=[args.batch / s for s in seconds],
                  gflop_per_image=flops / args.batch / 1e9,
                  gflops=flops / statistics.median(seconds) / 1e9, matmul_gflops=matmul_rate, peak_mib=peak,
                  step_memory_mib=peak - memory_before)
    if args.profile:
        result["profile"] = profile_table(step, device)
    return result


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def profile_table(step: Callable[[], None], device: torch.device) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=15)


def run_isolated(args: argparse.Namespace, mode: str, tokens: int, kind: str) -> dict:
    command = [sys.executable, __file__, "--one", mode, str(tokens), kind, "--batch", str(args.batch),
               "--runs", str(args.runs), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--device", args.device]
    if args.profile:
        command.append("--profile")
    if args.count_ops:
        command.append("--count-ops")
    command += ["--opt-impl", args.opt_impl, "--amp-dtype", args.amp_dtype]
    command += [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in ("embed_dim", "num_heads")
                if getattr(args, name) is not None]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def summarise(results: list[dict]) -> None:
    print(f"{'kind':5} {'tokens':>6} {'mode':10} {'img/s':>7} {'min-max':>11} {'speed-up':>8} "
          f"{'peak MiB':>8} {'step MiB':>8} {'mem ratio':>9} {'GFLOP/img':>9} {'GFLOP/s':>7} {'matmul':>6}")
    by_key = {(r["kind"], r["tokens"], r["mode"]): r for r in results}
    for r in results:
        median = statistics.median(r["images_per_s"])
        plain = by_key.get((r["kind"], r["tokens"], "plain"))
        speedup = median / statistics.median(plain["images_per_s"]) if plain else float("nan")
        memory = r["step_memory_mib"] / plain["step_memory_mib"] if plain else float("nan")
        spread = f"{min(r['images_per_s']):.1f}-{max(r['images_per_s']):.1f}"
        print(f"{r['kind']:5} {r['tokens']:>6} {r['mode']:10} {median:>7.1f} {spread:>11} {speedup:>7.2f}x "
              f"{r['peak_mib']:>8.0f} {r['step_memory_mib']:>8.0f} {memory:>8.2f}x "
              f"{r['gflop_per_image']:>9.2f} "
              f"{r['gflops']:>7.1f} {r['matmul_gflops']:>6.0f}")
    for r in results:
        if "profile" in r:
            print(f"\n## profile: {r['kind']} {r['tokens']} tokens {r['mode']} (2 steps)\n{r['profile']}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 3, 10, 50])
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["plain", "fast"])
    parser.add_argument("--kinds", nargs="+", choices=["train", "eval"], default=["train", "eval"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the model and the batches live (cuda: the first GPU)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (ignored with cuda)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of each configuration")
    parser.add_argument("--count-ops", action="store_true",
                        help="time nothing: print, as JSON, the operations and host synchronisations of one step")
    parser.add_argument("--opt-impl", choices=["auto", "foreach", "loop", "fused"], default="auto",
                        help="how the optimiser steps (main.py's --opt-impl; auto: fused on CUDA, foreach on the "
                        "CPU; loop: as before the host-sync work)")
    parser.add_argument("--amp-dtype", choices=["auto", "float16", "bfloat16"], default="auto",
                        help="autocast type of the -amp modes (main.py's --amp-dtype; auto: float16 on CUDA)")
    parser.add_argument("--embed-dim", type=int, help="token width instead of the model's 384: the same operations "
                        "with less arithmetic (with --num-heads 1 and 8: the host's share of a step, as on a fast GPU)")
    parser.add_argument("--num-heads", type=int, help="attention heads instead of the model's 12 (the same operations)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "TOKENS", "KIND"), help=argparse.SUPPRESS)
    return parser.parse_args()


def device_or_exit(option: str) -> torch.device:
    """The device of ``--device``; without CUDA, ``--device cuda`` is a one-line error (exit 2, as argparse's)."""
    try:
        return resolve_device(option, local_rank=0)
    except RuntimeError as error:
        print(f"{Path(__file__).name}: error: {error}", file=sys.stderr)
        sys.exit(2)


def machine_line(args: argparse.Namespace, device: torch.device) -> str:
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, memory of the CUDA allocator"
    else:
        where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, " \
                f"resident memory"
    return (f"# {where}, torch {torch.__version__}, batch {args.batch}, "
            f"median of {args.runs} runs after {args.warmup} warm-up")


def main() -> None:
    args = parse_args()
    device = device_or_exit(args.device)
    os.chdir(Path(__file__).resolve().parents[1])  # the option files are relative to the repository
    if args.one:
        mode, tokens, kind = args.one
        print(json.dumps(measure(mode, int(tokens), kind, args, device)))
        return
    print(machine_line(args, device), file=sys.stderr if args.count_ops else sys.stdout)  # stdout: JSON alone
    results = []
    for kind in args.kinds:
        for tokens in args.tokens:
            for mode in args.modes:
                results.append(run_isolated(args, mode, tokens, kind))
                print(f"  done {kind} {tokens} {mode}", file=sys.stderr, flush=True)
    if args.count_ops:
        print(json.dumps([{k: v for k, v in r.items() if k != "ops_by_name"} for r in results], indent=1))
    else:
        summarise(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
