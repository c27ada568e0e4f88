"""Every script in scripts/ starts (its --help): a script nothing imports cannot break unseen."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT

SCRIPTS_DIR = REPO_ROOT / "scripts"
# The entry points in scripts/, and the helpers in scripts/lib/ that also run on their own (gpu_check.sh runs
# lib/gpu_resume_check.py); the helpers that are only imported (lib/bench_common.py) have no __main__.
SCRIPTS = sorted(p for pattern in ("*.py", "lib/*.py") for p in SCRIPTS_DIR.glob(pattern)
                 if "__main__" in p.read_text())


def test_the_scripts_are_found() -> None:
    found = {p.relative_to(SCRIPTS_DIR).as_posix() for p in SCRIPTS}
    assert found >= {"bench_fashion.py", "bench_fidelity.py", "bench_model.py", "compare_methods.py",
                     "compare_runs.py", "code_shape.py", "lib/gpu_resume_check.py"}
    assert not found & {"lib/__init__.py", "lib/bench_common.py"}  # imported by the scripts, not run


@pytest.mark.parametrize("helper", ["bench_common.py", "gpu_resume_check.py"])
def test_the_helpers_in_lib_find_the_repository(helper: str) -> None:
    """They moved one folder down: their REPO (where main.py and the option files are) is still the root."""
    spec = importlib.util.spec_from_file_location(f"lib_{helper[:-3]}", SCRIPTS_DIR / "lib" / helper)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.REPO == REPO_ROOT and (module.REPO / "main.py").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(SCRIPTS_DIR).as_posix())
def test_a_script_starts(script: Path) -> None:
    result = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_bench_model_refuses_cuda_without_a_gpu_in_one_line() -> None:
    result = subprocess.run([sys.executable, str(SCRIPTS_DIR / "bench_model.py"), "--device", "cuda",
                             "--tokens", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "bench_model.py: error: --device cuda: CUDA is not available on this machine\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs its checks (minutes)")
def test_the_gpu_check_skips_at_once_without_cuda(tmp_path: Path) -> None:
    """scripts/gpu_check.sh asks torch for CUDA before anything else: here it says why it skips and exits 0,
    having written nothing (its temporary folder is made only after the check)."""
    start = time.perf_counter()
    result = subprocess.run(["bash", str(SCRIPTS_DIR / "gpu_check.sh")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "GPU_CHECK_OUT": str(tmp_path / "out")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("gpu_check: skipped: CUDA is not available") and result.stderr == ""
    assert time.perf_counter() - start < 10  # one python start and torch import, nothing else
    assert not (tmp_path / "out").exists()


def test_compare_methods_trains_each_method_under_each_memory_protocol_and_rebuilds_the_same_numbers(
        tmp_path: Path) -> None:
    """scripts/compare_methods.py on the demo, two tasks of one epoch, 2 processes, global and distributed memory:
    a rehearsal method (WA) trained under each protocol, naive finetuning once; figure, tables, --from-runs."""
    import matplotlib.image
    import yaml

    script = [sys.executable, str(SCRIPTS_DIR / "compare_methods.py"), "--setting", "demo",
              "--work-dir", str(tmp_path), "--methods", "wa", "finetuning", "--processes", "2",
              "--memory", "global", "distributed"]
    tiny = ["--jobs", "2", "--extra", "--epochs", "1", "--base-epochs", "1", "--finetuning-epochs", "1",
            "--max-task", "2", "--train-per-class", "32", "--no-plots", "--no-tensorboard"]
    trained = subprocess.run([*script, *tiny], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    png = tmp_path / "comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert matplotlib.image.imread(png).ndim == 3
    report = json.loads((tmp_path / "comparison.json").read_text())
    methods = report["methods"]
    assert list(methods) == ["wa (global)", "wa (distributed)", "finetuning"]
    assert report["machine"]["cpu_count"] > 0 and report["processes"] == 2
    for result in methods.values():
        (run,) = result["runs"]
        folder = Path(run["run_dir"])
        method, memory = result["method"], result["memory"]
        assert folder.parents[2] == tmp_path / memory / method / "seed0" / "outputs"
        assert folder.name.endswith(f"_{method}_seed0")
        summary = json.loads((folder / "summary.json").read_text())
        assert result["avg_acc"]["mean"] == run["avg_acc"] == summary["avg_acc"]
        assert result["last_acc"]["mean"] == run["last_acc"] == summary["last_acc"]
        assert run["acc1"] == [task["acc1"] for task in summary["tasks"]] and run["classes_seen"] == [2, 4]
        assert run["command"] in report["commands"]
        assert run["command"].startswith("OMP_NUM_THREADS=1 bash train.sh cpu 2 --options")
        last = json.loads((folder / "log.jsonl").read_text().splitlines()[-1])
        assert last["world_size"] == 2 and (memory == "none" or last["memory_mode"] == memory)
    # 32 training images per class, 200 exemplars: one selection keeps all 128, two processes 100 each
    assert methods["wa (global)"]["protocol"] == "global, 128 exemplars, 2 processes"
    assert methods["wa (distributed)"]["protocol"] == "distributed, 200 exemplars, 2 processes"
    assert methods["finetuning"]["protocol"] == "none, 2 processes"
    config = {name: yaml.safe_load((Path(r["runs"][0]["run_dir"]) / "config.yaml").read_text())
              for name, r in methods.items()}
    assert config["wa (global)"]["global_memory"] and not config["wa (global)"]["distributed_memory"]
    assert config["wa (distributed)"]["method"] == "wa" and config["wa (distributed)"]["distributed_memory"]
    assert not config["wa (global)"]["dytox"] and config["wa (global)"]["memory_size"] == 200
    assert (config["finetuning"]["memory_size"], config["finetuning"]["kd"], config["finetuning"]["auto_kd"]) == \
        (0, 0.0, False)
    table = (tmp_path / "comparison.md").read_text()
    rows = table.split("\n\n")[0].splitlines()[2:]  # the first table, below its header and rule
    assert [row.split(" | ")[:2] for row in rows] == [[f"| {name}", methods[name]["protocol"]] for name in methods]
    assert table.split("\n\n")[0] in trained.stdout

    runs_before = sorted(tmp_path.glob("*/*/seed0/outputs/*/*/*"))
    start = time.perf_counter()
    rebuilt = subprocess.run([*script, "--from-runs", "--out-dir", str(tmp_path / "rebuilt")], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert time.perf_counter() - start < 20  # nothing trained: a fraction of one main.py start-up
    assert len(runs_before) == 3 and sorted(tmp_path.glob("*/*/seed0/outputs/*/*/*")) == runs_before
    assert json.loads((tmp_path / "rebuilt" / "comparison.json").read_text())["methods"] == methods
    assert (tmp_path / "rebuilt" / "comparison.md").read_text() == table


def test_the_options_page_is_the_option_table_s_and_the_check_sees_a_change(tmp_path: Path) -> None:
    """docs/options.md is generated: it is current, and --check fails (exit 1, one line) once it differs."""
    import dataclasses

    sys.path.insert(0, str(SCRIPTS_DIR))
    try:
        import options_doc
    finally:
        sys.path.remove(str(SCRIPTS_DIR))
    page = options_doc.page()
    assert (REPO_ROOT / "docs" / "options.md").read_text(encoding="utf-8") == page
    assert "| `--memory-size` | `0` | >= 0 |" in page and "| `--progress`, `--no-progress` | `on` |" in page
    option = options_doc.OPTIONS["memory_size"]
    options_doc.OPTIONS["memory_size"] = dataclasses.replace(option, help="changed")
    try:
        assert options_doc.page() != page
    finally:
        options_doc.OPTIONS["memory_size"] = option
    stale = tmp_path / "repo"  # a copy whose page is stale: the check refuses it
    (stale / "docs").mkdir(parents=True)
    (stale / "scripts").mkdir()
    (stale / "scripts" / "options_doc.py").write_text((SCRIPTS_DIR / "options_doc.py").read_text())
    (stale / "docs" / "options.md").write_text(page.replace("`0` | >= 0", "`1` | >= 0", 1))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, str(stale / "scripts" / "options_doc.py"), "--check"], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 1 and result.stderr == "docs/options.md is stale: run python scripts/options_doc.py\n"


def test_compare_runs_compares_a_state_dict_s_extra_state_by_value() -> None:
    """The baseline's checkpoints hold its frozen parts as ``_extra_state`` (a dict), beside the tensors."""
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPTS_DIR / "compare_runs.py")
    assert spec is not None and spec.loader is not None
    compare_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_runs)
    assert compare_runs.same_entry({"frozen": ["sab"]}, {"frozen": ["sab"]})
    assert not compare_runs.same_entry({"frozen": ["sab"]}, {"frozen": []})
    assert compare_runs.same_entry(torch.ones(2), torch.ones(2)) and not compare_runs.same_entry(torch.ones(2),
                                                                                                  torch.zeros(2))


def load_script_module(relative: str) -> object:
    """A module of scripts/ imported as the script imports it (scripts/ on sys.path for its ``lib``)."""
    if str(SCRIPTS_DIR) not in sys.path:
        sys.path.insert(0, str(SCRIPTS_DIR))
    spec = importlib.util.spec_from_file_location(f"script_{Path(relative).stem}", SCRIPTS_DIR / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_operation_counter_counts_views_apart_and_the_reads_that_wait_for_the_device() -> None:
    """lib/op_count.py (bench_model.py --count-ops): forward, backward and the host synchronisations."""
    op_count = load_script_module("lib/op_count.py")
    x = torch.randn(4, 3, requires_grad=True)

    def step() -> None:
        total = x.view(12).sum()  # a view, then one kernel
        total.backward()
        total.item()  # a scalar read: the host waits
        torch.nonzero(x > 0)  # a shape that depends on the data: the host waits

    counts = op_count.count_ops(step)  # type: ignore[attr-defined]
    assert counts["host_syncs"] == 2 and counts["syncs_by_op"] == {"_local_scalar_dense": 1, "nonzero": 1}
    by_name = counts["ops_by_name"]
    assert by_name["sum"] == 1 and by_name["gt"] == 1 and "view" not in by_name
    assert counts["views"] >= 1 and counts["ops"] == sum(counts["ops_by_name"].values())


def test_the_counter_tells_host_memory_reads_and_non_blocking_copies_from_synchronisations() -> None:
    op_count = load_script_module("lib/op_count.py")
    counter_in_host_memory, on_device = torch.zeros(()), torch.ones(())
    with op_count.OpCounter([counter_in_host_memory]) as counter:  # type: ignore[attr-defined]
        counter_in_host_memory.item()  # an optimiser's step counter: host memory even on a CUDA run
        on_device.item()
    summary = counter.summary()
    assert (summary["host_reads"], summary["host_syncs"]) == (1, 1)


def test_counted_batches_count_the_work_of_one_batch_only() -> None:
    op_count = load_script_module("lib/op_count.py")
    counter = op_count.OpCounter()  # type: ignore[attr-defined]
    for index, value in enumerate(op_count.CountedBatches([torch.ones(2)] * 3, 1, counter)):  # type: ignore[attr-defined]
        for _ in range(index + 1):  # batch i does i + 1 additions
            value = value + 1
    assert counter.ops["add"] == 2


def test_bench_model_counts_the_operations_of_dytox_s_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """--count-ops on the CIFAR model at 2 task tokens, batch 2: neither an evaluation step nor a training step
    (forward of student and teacher, DyTox loss, backward, AdamW) makes the host wait for the device; the
    training step's only host reads are AdamW's step counters (host memory on CUDA too), none when fused."""
    bench = load_script_module("bench_model.py")
    monkeypatch.chdir(REPO_ROOT)  # the option files are relative to the repository, as bench_model.main() sets
    args = argparse.Namespace(count_ops=True, threads=2, batch=2, opt_impl="foreach")
    evaluation = bench.measure("fast-model", 2, "eval", args, torch.device("cpu"))  # type: ignore[attr-defined]
    training = bench.measure("fast-model", 2, "train", args, torch.device("cpu"))  # type: ignore[attr-defined]
    assert evaluation["host_syncs"] == 0 and evaluation["ops"] > 0
    assert training["host_syncs"] == 0 and training["syncs_by_op"] == {}
    assert training["ops"] > evaluation["ops"] and training["host_reads"] > 0
    fused = bench.measure("fast-model", 2, "train", argparse.Namespace(**{**vars(args), "opt_impl": "fused"}),  # type: ignore[attr-defined]
                          torch.device("cpu"))
    assert (fused["host_syncs"], fused["host_reads"]) == (0, 0) and fused["ops"] < training["ops"]
