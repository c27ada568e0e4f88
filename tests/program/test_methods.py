"""The baseline (dytox: false, ConViT or ViT), the ResNet-18 encoder, POD and joint training end to end on the
offline digits, with python main.py and bash train.sh cpu 2; and --output-dir."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
import torch
from program.test_multi_process import TIMEOUT, environment

import main
from conftest import REPO_ROOT
from continual.config import parse_config, settings_from
from continual.model.baseline import IncrementalClassifier
from continual.model.build import count_parameters
from continual.model.der import ExpandableNetwork
from continual.model.dytox import DyTox
from continual.runtime.distributed import setup
from continual.state import checkpoints as checkpoint
from continual.train.session import run

OPTIONS = REPO_ROOT / "options"
DEMO_FILES = [str(OPTIONS / "data/digits_demo.yaml"), str(OPTIONS / "model/demo_tiny.yaml")]
BASELINE_FILES = [*DEMO_FILES, str(OPTIONS / "model/baseline.yaml")]
SHORT = ["--max-task", "3", "--base-epochs", "2", "--epochs", "1", "--finetuning-epochs", "1", "--warmup-epochs", "0",
         "--train-per-class", "32", "--num-workers", "0", "--no-plots", "--no-tensorboard", "--no-progress"]

MODES = {
    "baseline": (BASELINE_FILES, []),
    "baseline_self_attention_scale_norm": (BASELINE_FILES, ["--no-class-attention", "--norm", "scale"]),
    "baseline_vit": (BASELINE_FILES, ["--model", "vit", "--freeze-ft", "backbone"]),
    "resnet_pod": (DEMO_FILES, ["--resnet", "--pod", "0.5", "--pod-scales", "1", "2", "--pod-scaling",
                                "--train-per-class", "16"]),
    "joint": (BASELINE_FILES, ["--retrain-scratch", "--memory-size", "0", "--no-auto-kd", "--finetuning="]),
    "er": (DEMO_FILES, ["--method", "er"]),
    "wa": (BASELINE_FILES, ["--method", "wa", "--distillation-tau", "2"]),
    "icarl": (BASELINE_FILES, ["--method", "icarl"]),
    "der": (BASELINE_FILES, ["--method", "der", "--train-per-class", "16"]),
}


def run_mode(mode: str, base: Path, extra: list[str] = ()) -> Path:  # type: ignore[assignment]
    files, flags = MODES[mode]
    argv = ["--options", *files, *SHORT, *flags, *extra, "--name", mode, "--output-basedir", str(base),
            "--log-dir", str(base / "logs")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main.main(argv) == 0
    return next(base.glob(f"digits/demo/*_{mode}"))


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_mode_runs_end_to_end_and_its_checkpoints_rebuild_the_model(tmp_path: Path, mode: str) -> None:
    folder = run_mode(mode, tmp_path)
    rows = rows_of(folder / "log.jsonl")
    assert [r["classes_seen"] for r in rows] == [2, 4, 6]
    model, _ = checkpoint.load_task_checkpoint(checkpoint.checkpoint_path(folder, 2))
    kind = {"resnet_pod": DyTox, "er": DyTox, "der": ExpandableNetwork}.get(mode, IncrementalClassifier)
    assert isinstance(model, kind)
    assert rows[-1]["params_total"] == count_parameters(model)["total"]
    files, flags = MODES[mode]
    evaluated = run(settings_from(parse_config(["--options", *files, *SHORT, *flags, "--eval", "--resume",
                                                str(folder)])), setup("cpu"))
    assert evaluated[0].to_row()["acc_per_task"] == pytest.approx(rows[-1]["acc_per_task"])  # --eval of the checkpoint
    epochs = rows_of(folder / "epochs.jsonl")
    if mode == "resnet_pod":  # POD after the first task, with the teacher; the TAB on 504 channels
        assert all(("pod" in e) == (e["task"] > 0 and e["phase"] == "train") for e in epochs)
        assert all(e["pod"] > 0 for e in epochs if "pod" in e) and model.task_tokens[0].shape[-1] == 504
    elif mode == "er":  # cross-entropy on the task and the memory: no teacher, no divergence head, no finetuning
        assert {e["phase"] for e in epochs} == {"train"} and [r["memory_total"] for r in rows] == [64, 128, 192]
        assert all(set(e) >= {"classification", "total"} and not set(e) & {"kd", "div", "pod"} for e in epochs)
        images = [round(e["images_per_s"] * e["seconds"]) for e in epochs if e["epoch"] == 0]
        assert images == [64, 64 + 64, 64 + 128]  # 32 per class (all kept: the quota is 100), and the memory once
    elif mode == "wa":  # distillation from task 1; the last task's rows aligned to the old ones'; weights >= 0
        assert {e["phase"] for e in epochs} == {"train"} and all(("kd" in e) == (e["task"] > 0) for e in epochs)
        norms = model.head.head.weight.detach().norm(dim=1)
        assert float(norms[4:].mean()) == pytest.approx(float(norms[:4].mean()), rel=1e-5)
        assert float(model.head.head.weight.detach().min()) >= 0.0
    elif mode == "icarl":  # distillation from task 1; the head's top-1 beside the nearest mean's (top-1, --eval)
        assert {e["phase"] for e in epochs} == {"train"} and all(("kd" in e) == (e["task"] > 0) for e in epochs)
        assert all(list(r["acc1_other"]) == ["head"] and 0 <= r["acc1_other"]["head"] <= 100 for r in rows)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["other_predictions"]["head"]["last_acc"] == rows[-1]["acc1_other"]["head"]
    elif mode == "der":  # the auxiliary loss and the classifier's finetuning from task 1; an extractor per task
        assert [e["task"] for e in epochs if e["phase"] == "finetune"] == [1, 2]
        assert all(("div" in e) == (e["task"] > 0 and e["phase"] == "train") for e in epochs)
        extractor, dim = sum(p.numel() for p in model.extractors[0].parameters()), 64
        classifier = [dim * 2 + 2, 2 * dim * 4 + 4, 3 * dim * 6 + 6]  # (T*D + 1) weights per seen class
        auxiliary = [0, dim * 3 + 3, dim * 3 + 3]  # (D + 1) per new class and "old"
        assert [r["params_total"] - r["params_without_head_div"] for r in rows] == auxiliary
        expected = [(t + 1) * extractor + classifier[t] + auxiliary[t] for t in range(3)]
        assert [r["params_total"] for r in rows] == expected
        before, after = (torch.load(checkpoint.checkpoint_path(folder, task), weights_only=True)["model"]
                         for task in (1, 2))
        old = [name for name in before if name.startswith(("extractors.0.", "extractors.1."))]
        assert old and all(torch.equal(before[name], after[name]) for name in old)  # frozen, statistics included
        newest = "blocks.0.mlp.fc1.weight"  # trained in task 2 from a copy of extractor 1
        assert not torch.equal(after[f"extractors.2.{newest}"], after[f"extractors.1.{newest}"])
    elif mode == "joint":  # every task trains from scratch on all its classes' images, without memory
        assert [r["memory_total"] for r in rows] == [0, 0, 0] and {e["phase"] for e in epochs} == {"train"}
        images = [round(e["images_per_s"] * e["seconds"]) for e in epochs if e["epoch"] == 0]
        assert images == [64, 128, 192]
    else:  # the baseline: the classifier gains (D + 1) parameters per new class, nothing else grows
        dim = 64
        growth = [b["params_total"] - a["params_total"] for a, b in zip(rows, rows[1:], strict=False)]
        assert growth == [2 * (dim + 1)] * 2
        last_training = [e for e in epochs if e["phase"] == "train"][-1]
        assert "kd" in last_training and "div" not in last_training


def sab_weights(folder: Path, task: int) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint.checkpoint_path(folder, task), weights_only=True)["model"]
    return {name: value for name, value in state.items() if name.startswith("encoder.blocks.0.")}


def test_what_the_baseline_finetuning_froze_stays_frozen_as_published_unless_exact_freeze(tmp_path: Path) -> None:
    """Published ConViT.freeze never unfreezes: after task 1's finetuning (freeze_ft: [sab]) the GPSA blocks
    stay frozen for task 2; with --exact-freeze task 2 trains them again."""
    published = run_mode("baseline", tmp_path / "published")
    exact = run_mode("baseline", tmp_path / "exact", ["--exact-freeze"])
    before, after = sab_weights(published, 1), sab_weights(published, 2)
    assert before and all(torch.equal(after[name], value) for name, value in before.items())
    before, after = sab_weights(exact, 1), sab_weights(exact, 2)
    assert not any(torch.equal(after[name], value) for name, value in before.items() if "norm" not in name)
    published_rows, exact_rows = rows_of(published / "log.jsonl"), rows_of(exact / "log.jsonl")
    assert published_rows[2]["params_trainable"] < exact_rows[2]["params_trainable"] == exact_rows[2]["params_total"]


# WA's two-process runs on the baseline's network, under global and distributed memory, are
# tests/test_scripts.py's comparison; ER shares its memory hooks (RehearsalLearner's) with iCaRL and DER.
@pytest.mark.parametrize("mode", ["resnet_pod", "icarl", "der"])
def test_two_processes_run_the_new_modes(tmp_path: Path, mode: str) -> None:
    """Global memory: both processes hold the same exemplars. iCaRL with distributed memory: each process its own
    exemplars, the class means of both (one --eval process holding the union of the two memories finds the
    accuracy logged)."""
    files, flags = MODES[mode]
    memory = "--distributed-memory" if mode == "icarl" else "--global-memory"
    argv = ["bash", str(REPO_ROOT / "train.sh"), "cpu", "2", "--options", *files, *SHORT, "--max-task", "2", *flags,
            memory, "--name", mode, "--output-basedir", str(tmp_path), "--log-dir", str(tmp_path / "logs")]
    result = subprocess.run(argv, capture_output=True, text=True, env=environment(), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = next(tmp_path.glob(f"digits/demo/*_{mode}"))
    rows = rows_of(folder / "log.jsonl")
    assert [r["world_size"] for r in rows] == [2, 2] and rows[1]["classes_seen"] == 4
    assert all((r["memory_fingerprints"][0] == r["memory_fingerprints"][1]) == (mode != "icarl") for r in rows)
    if mode == "icarl":
        evaluated = run(settings_from(parse_config(["--options", *files, *SHORT, "--max-task", "2", *flags, memory,
                                                    "--eval", "--resume", str(folder)])), setup("cpu"))
        assert evaluated[0].to_row()["acc_per_task"] == pytest.approx(rows[-1]["acc_per_task"])


def test_output_dir_is_the_run_folder_unless_a_name_is_given(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--options", *DEMO_FILES, "--debug", "--max-task", "1", "--no-progress",
            "--log-dir", str(tmp_path / "logs")]
    target = tmp_path / "exactly_here"
    assert main.main(argv + ["--output-dir", str(target)]) == 0
    assert (target / "log.jsonl").is_file() and (target / "checkpoints" / "checkpoint_0.pth").is_file()
    assert main.main(argv + ["--output-dir", str(target)]) == 2  # a finished run is not overwritten
    assert f"--output-dir {target}: the folder exists and is not empty" in capsys.readouterr().err
    named = argv + ["--output-dir", str(tmp_path / "unused"), "--name", "named", "--output-basedir", str(tmp_path)]
    assert main.main(named) == 0
    assert "replaced by the run folder of --name 'named'" in capsys.readouterr().err
    assert not (tmp_path / "unused").exists() and len(list(tmp_path.glob("digits/demo/*_named/log.jsonl"))) == 1


def test_an_unknown_method_is_refused_in_one_line_before_any_folder(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    argv = ["--options", *DEMO_FILES, *SHORT, "--method", "ewc", "--output-basedir", str(tmp_path)]
    assert main.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --method ewc: unknown method; the methods are dytox, er, icarl, wa, der "
                   "(continual/method/registry.py)"]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["cifar_icarl", "cifar_wa", "cifar_der"])
def test_the_rivals_cifar_option_files_train_the_reduced_resnet18_on_cifar_s_layout(
        tmp_path: Path, cifar_root: Path, name: str) -> None:
    """The README's command for a rival on CIFAR-100 (synthetic images in the torchvision layout, 3 per class),
    the first task, one epoch: the ResNet-18 of the CIFAR baselines trains with the paper's SGD and schedule (the
    methods' later tasks run on the demo above)."""
    argv = ["--options", str(OPTIONS / "data/cifar100_10-10.yaml"), str(OPTIONS / "data/cifar100_order1.yaml"),
            str(OPTIONS / f"model/{name}.yaml"), "--data-path", str(cifar_root), "--max-task", "1", "--epochs", "1",
            "--base-epochs", "1", "--finetuning-epochs", "1", "--batch-size", "16", "--incremental-batch-size", "16",
            "--memory-size", "40", "--num-workers", "0", "--no-plots", "--no-tensorboard", "--no-progress",
            "--name", name, "--output-basedir", str(tmp_path), "--log-dir", str(tmp_path / "logs")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main.main(argv) == 0
    folder = next(tmp_path.glob(f"cifar/10-10/*_{name}"))
    rows = rows_of(folder / "log.jsonl")
    assert [(r["classes_seen"], r["memory_total"]) for r in rows] == [(10, 30)]  # 3 images per class, all kept
    model, _ = checkpoint.load_task_checkpoint(checkpoint.checkpoint_path(folder, 0))
    extractor = model.extractors[0] if name == "cifar_der" else model.encoder
    assert type(extractor).__name__ == "ReducedResNet18"
    epochs = rows_of(folder / "epochs.jsonl")
    # the paper's lr scaled to this batch of 16 (DER: its warm-up's first, unscaled, value)
    assert epochs[0]["lr"] == pytest.approx({"cifar_icarl": 2.0 * 16 / 128, "cifar_wa": 0.1 * 16 / 32,
                                             "cifar_der": 0.00005}[name])
