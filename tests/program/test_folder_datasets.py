"""Runs of main.py on image folders: a 2-task run of your own folder (imagefolder) stopped by an image that
cannot be decoded and resumed once it is fixed, a 2-task ImageNet-R run whose recorded split refuses a resume
on a changed folder, a 2-process run of a timm encoder on a folder, and each malformed folder or option refused
in one line before anything is written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from program.test_multi_process import TIMEOUT, environment
from support import corrupt, write_class_folder, write_image, write_image_folder

import main
from conftest import REPO_ROOT

OPTIONS = REPO_ROOT / "options"
CLASSES = ("ant", "bee", "cat", "dog")  # tasks (ant, bee) and (cat, dog)
TINY = ["--input-size", "16", "--embed-dim", "32", "--depth", "2", "--local-up-to-layer", "1",
        "--initial-increment", "2", "--increment", "2", "--base-epochs", "1", "--epochs", "1",
        "--finetuning-epochs", "1", "--warmup-epochs", "0", "--batch-size", "8", "--memory-size", "8",
        "--no-plots", "--no-tensorboard", "--no-progress", "--seed", "0"]


def folder_run(data_set: str, root: Path, base: Path, *flags: str) -> list[str]:
    data_file = OPTIONS / "data/imagefolder.yaml"
    return ["--options", str(data_file), str(OPTIONS / "model/demo_tiny.yaml"), *TINY, "--data-set", data_set,
            "--data-path", str(root), "--output-basedir", str(base / "out"), "--log-dir", str(base / "logs"),
            "--name", data_set, *flags]


def error_lines(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if line.startswith("error: ")]


def files_of(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*")}


def test_an_undecodable_image_stops_the_run_in_one_line_and_it_resumes_once_fixed(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_image_folder(tmp_path / "mine", CLASSES, train_per_class=4, test_per_class=2)
    broken = corrupt(write_image(root / "train" / "dog" / "9_broken.png", "L", (8, 8), 0))
    argv = folder_run("imagefolder", root, tmp_path, "--num-workers", "1")  # read in a DataLoader worker
    stopped = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *argv], capture_output=True, text=True,
                             env=environment(), timeout=TIMEOUT, cwd=REPO_ROOT)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert error_lines(stopped.stderr) == [
        f"error: cannot decode image {broken}: UnidentifiedImageError: cannot identify image file '{broken}'"]
    run_dir = next((tmp_path / "out" / "imagefolder" / "5-5").glob("*_imagefolder"))
    assert "task 0: top-1" in stopped.stdout and (run_dir / "checkpoints" / "checkpoint_0.pth").is_file()

    write_image(broken, "L", (8, 8), 0)  # fixed: the same command with --resume continues at task 1
    assert main.main(argv + ["--resume", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "running from task 1 (begin)" in printed and "Avg " in printed and "Last " in printed
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [row["classes_seen"] for row in rows] == [2, 4] and rows[1]["eval_images"] == 8


def test_two_processes_train_a_timm_encoder_on_an_image_folder_with_one_memory(tmp_path: Path) -> None:
    """train.sh cpu 2, global memory: both processes read the folder lazily and keep the same exemplars; the
    checkpoint records the timm encoder."""
    root = write_image_folder(tmp_path / "mine", CLASSES, train_per_class=4, test_per_class=2)
    encoder = ["--encoder", "timm:resnet10t", "--encoder-args", "stem_width=8", "channels=[8,16,24,32]"]
    argv = ["bash", str(REPO_ROOT / "train.sh"), "cpu", "2",
            *folder_run("imagefolder", root, tmp_path, "--num-workers", "0", "--global-memory", *encoder)]
    result = subprocess.run(argv, capture_output=True, text=True, env=environment(), timeout=TIMEOUT, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "out" / "imagefolder" / "5-5").glob("*_imagefolder"))
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [(row["world_size"], row["classes_seen"]) for row in rows] == [(2, 2), (2, 4)]
    assert all(row["memory_fingerprints"][0] == row["memory_fingerprints"][1] for row in rows)
    assert "timm:resnet10t" in (run_dir / "config.yaml").read_text()


def test_imagenet_r_records_its_split_and_refuses_a_resume_on_a_changed_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    for index, name in enumerate(CLASSES):
        write_class_folder(root / "imagenet-r" / f"n0{index}_{name}", 5, first=index)
    argv = folder_run("imagenet_r", root, tmp_path, "--num-workers", "0")
    assert main.main(argv) == 0
    assert "Avg " in capsys.readouterr().out
    run_dir = next((tmp_path / "out" / "imagenet_r" / "5-5").glob("*_imagenet_r"))
    split = json.loads((run_dir / "split.json").read_text())
    assert (len(split["train"]), len(split["test"])) == (16, 4)
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["eval_images"] == 4

    added = write_image(root / "imagenet-r" / "n00_ant" / "new.png", "L", (8, 8), 3)
    before = files_of(run_dir)
    assert main.main(argv + ["--resume", str(run_dir)]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and f"differs from the one saved in {run_dir / 'split.json'}" in errors[0]
    assert added.name in errors[0] and files_of(run_dir) == before  # nothing written by the refused resume


def bad_folder(kind: str, root: Path) -> tuple[list[str], str]:
    """A malformed image folder (or the flags of a bad option, to put after the option files) and the start of
    the error line it gives."""
    write_image_folder(root, ("a", "b", "c", "d"), train_per_class=1, test_per_class=1)
    flags: list[str] = []
    if kind == "empty class folder":
        (root / "train" / "e").mkdir()
        return flags, f"error: class folder {root / 'train' / 'e'} holds no image"
    if kind == "test class missing from train":
        write_class_folder(root / "val" / "zebra", 1)
        return flags, f"error: class folder {root / 'val' / 'zebra'} has no training folder in {root / 'train'}"
    if kind == "no image at all":
        for image in root.rglob("*.*"):
            image.unlink()
        return flags, f"error: no image in the 4 class folders of {root / 'train'}"
    if kind == "missing test folder":
        for image in (root / "val").rglob("*.*"):
            image.unlink()
        for folder in sorted((root / "val").rglob("*"), reverse=True) + [root / "val"]:
            folder.rmdir()
        return flags, f"error: test images not found: neither {root / 'val'} nor {root / 'test'} exists"
    if kind == "class order of another dataset":
        order = root.parent / "order.yaml"
        order.write_text(f"class_order: {list(range(12))}\n")
        return [str(order)], "error: option 'class_order' must be a permutation of the dataset's 4 classes 0..3"
    return ["--mean", "0.5", "0.5"], "error: option 'mean' takes three values (R G B), got 2: [0.5, 0.5]"


BAD_INPUTS = ["empty class folder", "test class missing from train", "no image at all", "missing test folder",
              "class order of another dataset", "mean of two values"]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_a_bad_folder_or_option_is_one_line_before_anything_is_written(
        tmp_path: Path, kind: str, capsys: pytest.CaptureFixture) -> None:
    flags, expected = bad_folder(kind, tmp_path / "mine")
    argv = folder_run("imagefolder", tmp_path / "mine", tmp_path)
    assert main.main(argv[:3] + flags + argv[3:]) == 2  # an option file joins the list, a flag follows it
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith(expected), errors
    assert not (tmp_path / "out").exists() and not (tmp_path / "logs").exists()


def test_a_bad_folder_through_python_main_py(tmp_path: Path) -> None:
    _, expected = bad_folder("empty class folder", tmp_path / "mine")
    argv = [sys.executable, str(REPO_ROOT / "main.py"), *folder_run("imagefolder", tmp_path / "mine", tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, env=environment(), timeout=TIMEOUT)
    assert result.returncode == 2 and result.stderr.startswith(expected) and "Traceback" not in result.stderr
    assert len(error_lines(result.stderr)) == 1 and not (tmp_path / "out").exists()
