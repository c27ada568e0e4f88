"""Throughput of the DyTox network alone: plain reference arithmetic vs the fast paths.

Each (path, task tokens, step kind) runs in a fresh process so that its peak
resident memory is its own. A training step is forward, BCE loss on all logits
plus the divergence loss, backward and an AdamW step, with old task tokens and
old heads frozen as in the task loop; an eval step is a forward under
``torch.inference_mode``.

    python scripts/bench_model.py                       # published CIFAR model, 1/10/50 tokens
    python scripts/bench_model.py --tokens 10 --runs 7 --batch 64
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continual.dytox import DyTox, DyToxConfig  # noqa: E402

PATHS = {"plain": dict(fused_attention=False, joint_tokens=False), "fast": dict(fused_attention=True, joint_tokens=True)}


def build_model(tokens: int, path: str, classes_per_task: int) -> DyTox:
    config = dataclasses.replace(DyToxConfig(head_div=True, head_div_mode=("tr",), drop_path=0.1), **PATHS[path])
    model = DyTox(config, classes_per_task)
    for _ in range(tokens - 1):
        model.expand(classes_per_task)
    model.freeze(["old_task_tokens", "old_heads"] if tokens > 1 else [])
    return model


def train_step(model: DyTox, optimizer: torch.optim.Optimizer, images: torch.Tensor, targets: torch.Tensor) -> None:
    out = model(images)
    loss = F.binary_cross_entropy_with_logits(out.logits, F.one_hot(targets, out.logits.shape[1]).float())
    if out.div_logits is not None:
        div_targets = F.one_hot(targets % out.div_logits.shape[1], out.div_logits.shape[1]).float()
        loss = loss + 0.1 * F.binary_cross_entropy_with_logits(out.div_logits, div_targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(path: str, tokens: int, kind: str, batch: int, runs: int, warmup: int, threads: int) -> dict:
    """Images/s of each timed run and the process's peak RSS, in this process."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(tokens, path, classes_per_task=2)
    images = torch.randn(batch, 3, 32, 32)
    targets = torch.randint(0, model.nb_classes, (batch,))
    if kind == "train":
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        step = lambda: train_step(model, optimizer, images, targets)  # noqa: E731
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(images)

    timings = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        step()
        if i >= warmup:
            timings.append(time.perf_counter() - start)
    rate = [batch / t for t in timings]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(path=path, tokens=tokens, kind=kind, images_per_s=rate, peak_rss_mib=peak_mib)


def run_isolated(args: argparse.Namespace, path: str, tokens: int, kind: str) -> dict:
    command = [
        sys.executable, __file__, "--one", path, str(tokens), kind, "--batch", str(args.batch),
        "--runs", str(args.runs), "--warmup", str(args.warmup), "--threads", str(args.threads),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def summarise(results: list[dict]) -> None:
    print(f"{'kind':6} {'tokens':>6} {'path':6} {'img/s median':>13} {'min-max':>15} {'peak MiB':>9} {'speed-up':>8}")
    by_key = {(r["kind"], r["tokens"], r["path"]): r for r in results}
    for r in results:
        median = statistics.median(r["images_per_s"])
        plain = by_key.get((r["kind"], r["tokens"], "plain"))
        ratio = median / statistics.median(plain["images_per_s"]) if plain else float("nan")
        spread = f"{min(r['images_per_s']):.1f}-{max(r['images_per_s']):.1f}"
        print(f"{r['kind']:6} {r['tokens']:>6} {r['path']:6} {median:>13.1f} {spread:>15} "
              f"{r['peak_rss_mib']:>9.0f} {ratio:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=["plain", "fast"])
    parser.add_argument("--kinds", nargs="+", choices=["train", "eval"], default=["train", "eval"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--one", nargs=3, metavar=("PATH", "TOKENS", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        path, tokens, kind = args.one
        print(json.dumps(measure(path, int(tokens), kind, args.batch, args.runs, args.warmup, args.threads)))
        return
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch}, float32, median of {args.runs} runs after {args.warmup} warm-up")
    results = []
    for kind in args.kinds:
        for tokens in args.tokens:
            for path in args.paths:
                results.append(run_isolated(args, path, tokens, kind))
                print(f"  done {kind} {tokens} {path}", file=sys.stderr, flush=True)
    summarise(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
