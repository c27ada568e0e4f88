"""scripts/gpu_check.sh's resume check: a ``--deterministic`` demo run on CUDA, stopped by SIGTERM inside an
epoch and resumed with ``--resume``, ends exactly like the same run left alone.

Three runs of ``main.py`` on the offline demo (two tasks): one uninterrupted; one that sends itself SIGTERM
after a training step of task 1 (tests/helpers/sigterm_at_step.py), which saves inside the epoch and exits
143; and its resume. Compared: every row of log.jsonl and epochs.jsonl without its timings, the last
memory file, and every tensor of the last task checkpoint, bit for bit. tests/program/test_resume.py does
the same on the CPU (and more stops); this script is how the check runs on a GPU, where the kernels, the
CUDA random state and the float16 loss scaler (``--amp``) are other code.

    python scripts/lib/gpu_resume_check.py --work-dir /tmp/resume --amp        # on CUDA
    python scripts/lib/gpu_resume_check.py --work-dir /tmp/resume --device cpu # the same check on the CPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]  # scripts/lib/ -> the repository
SIGTERM_AT_STEP = REPO / "tests" / "helpers" / "sigterm_at_step.py"
TASKS = 2
RUN_ARGS = [
    "--options", str(REPO / "options/data/digits_demo.yaml"), str(REPO / "options/model/demo_tiny.yaml"),
    "--max-task", str(TASKS), "--base-epochs", "2", "--epochs", "2", "--finetuning-epochs", "1",
    "--save-every-epoch", "1", "--deterministic", "--num-workers", "0", "--train-per-class", "48",
    "--no-progress", "--no-plots", "--no-tensorboard", "--name", "resume",
]
# Task 1 trains on 96 new images and 96 exemplars, 6 batches of 32: step 3 is inside its second epoch.
STOP_AT = "task 1, train epoch 1, step 3"
SIGTERM_EXIT = 143  # 128 + SIGTERM, how main.py exits after saving on the signal
TIMINGS = {"seconds", "data_seconds", "images_per_s", "data_wait_fraction"}


def run_main(base: Path, extra: list[str], script: Path = REPO / "main.py", env: dict | None = None,
             ) -> subprocess.CompletedProcess:
    """main.py (or a wrapper of it) with the demo's arguments, writing under ``base``."""
    command = [sys.executable, str(script), *RUN_ARGS, "--output-basedir", str(base),
               "--log-dir", str(base / "logs"), *extra]
    return subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True)


def expect(result: subprocess.CompletedProcess, code: int, what: str) -> None:
    """Stop with the run's last output when it did not exit with ``code``."""
    if result.returncode != code:
        sys.exit(f"{what}: exit {result.returncode}, expected {code}\n{(result.stdout + result.stderr)[-3000:]}")


def run_folder(base: Path) -> Path:
    (folder,) = base.glob("digits/demo/*_resume")
    return folder


def rows(path: Path) -> list[dict]:
    """A JSON-lines log without the keys that measure time (they differ between any two runs)."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in path.read_text().splitlines()]


def outputs(folder: Path) -> dict:
    """What the comparison reads: the two logs, the last memory and the last checkpoint's tensors."""
    last = TASKS - 1
    with np.load(folder / f"memory/memory_{last}.npz") as memory:
        arrays = {key: memory[key] for key in memory.files}
    model = torch.load(folder / f"checkpoints/checkpoint_{last}.pth", map_location="cpu", weights_only=True)["model"]
    return {"log": rows(folder / "log.jsonl"), "epochs": rows(folder / "epochs.jsonl"), "memory": arrays,
            "model": model}


def differences(got: dict, expected: dict) -> list[str]:
    """Each way the resumed run differs from the uninterrupted one; empty when they are the same."""
    found = [f"{name}.jsonl row {i}: {row} != {other}" for name in ("log", "epochs")
             for i, (row, other) in enumerate(zip(got[name], expected[name], strict=False)) if row != other]
    found += [f"{name}.jsonl has {len(got[name])} rows, expected {len(expected[name])}"
              for name in ("log", "epochs") if len(got[name]) != len(expected[name])]
    found += [f"memory {key} differs" for key in expected["memory"]
              if key not in got["memory"] or not np.array_equal(got["memory"][key], expected["memory"][key])]
    if got["model"].keys() != expected["model"].keys():
        return [*found, f"checkpoint keys differ: {sorted(got['model'].keys() ^ expected['model'].keys())}"]
    for name, value in expected["model"].items():
        ours = got["model"][name]
        same = torch.equal(ours, value) if isinstance(value, torch.Tensor) else ours == value
        if not same:
            found.append(f"checkpoint {name} differs" + (f" (max |diff| {(ours - value).abs().max().item():.3g})"
                                                         if isinstance(value, torch.Tensor) else ""))
    return found


def timed(what: str, run: Callable[[], subprocess.CompletedProcess]) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    result = run()
    print(f"  {what}: {time.perf_counter() - start:.1f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True, help="the three runs are written under it")
    parser.add_argument("--device", default="cuda", help="main.py's --device (cpu to check this script)")
    parser.add_argument("--amp", action="store_true", help="mixed precision: float16 and its loss scaler on CUDA")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available on this machine")
    extra = ["--device", args.device, *(["--amp"] if args.amp else [])]
    straight, stopped = args.work_dir / "uninterrupted", args.work_dir / "stopped"
    expect(timed("uninterrupted run", lambda: run_main(straight, extra)), 0, "the uninterrupted run")
    result = timed(f"run stopped by SIGTERM after '{STOP_AT}'", lambda: run_main(
        stopped, extra, SIGTERM_AT_STEP, {"DYTOX_TEST_SIGTERM_AT": STOP_AT}))
    expect(result, SIGTERM_EXIT, "the run meant to stop on SIGTERM")
    if "stopped by SIGTERM in task 1, train epoch 1" not in result.stdout + result.stderr:
        sys.exit(f"the run did not stop inside the epoch:\n{(result.stdout + result.stderr)[-3000:]}")
    folder = run_folder(stopped)
    expect(timed("resumed run", lambda: run_main(stopped, [*extra, "--resume", str(folder)])), 0, "the resume")
    found = differences(outputs(folder), outputs(run_folder(straight)))
    if found:
        sys.exit("the resumed run differs from the uninterrupted one:\n  " + "\n  ".join(found[:20]))
    print(f"resumed on {args.device} = uninterrupted: log rows, epoch rows, memory and every checkpoint tensor")


if __name__ == "__main__":
    main()
