"""The ImageNet-R split a run draws is written to its folder and checked when the run is continued."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import write_class_folder

from continual.config import ConfigError, parse_config, settings_from
from continual.config.settings import DataSettings
from continual.state.data_split import SPLIT_FILE, check_split, record_split


def data_settings(data_set: str, root: Path) -> DataSettings:
    return settings_from(parse_config(["--data-set", data_set, "--data-path", str(root)])).data


def test_the_split_is_recorded_once_and_a_changed_folder_is_refused(tmp_path: Path) -> None:
    root, run_dir = tmp_path / "imagenet-r", tmp_path / "run"
    for name in ("n01", "n02"):
        write_class_folder(root / name, 5)
    data = data_settings("imagenet_r", tmp_path)
    record_split(run_dir, data)
    saved = json.loads((run_dir / SPLIT_FILE).read_text())
    assert saved["data_set"] == "imagenet_r" and (len(saved["train"]), len(saved["test"])) == (8, 2)
    assert all(name.startswith("imagenet-r/n0") for name in saved["train"] + saved["test"])  # relative to ROOT
    check_split(run_dir, data)  # the same folder: accepted
    (run_dir / SPLIT_FILE).write_text(json.dumps({**saved, "train": saved["train"][1:]}))
    record_split(run_dir, data)  # a continued run keeps the split it started with
    with pytest.raises(ConfigError) as refused:
        check_split(run_dir, data)
    assert str(refused.value) == (
        f"{run_dir}: refused, the dataset's train/test split differs from the one saved in {run_dir / SPLIT_FILE} "
        f"(train files: 1 added ['{saved['train'][0]}']): restore --data-path {tmp_path} as it was when the run "
        f"started, or start a new run")


def test_datasets_with_their_own_split_record_nothing(tmp_path: Path) -> None:
    record_split(tmp_path, data_settings("imagefolder", tmp_path / "anywhere"))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / SPLIT_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=f"{tmp_path / SPLIT_FILE}: unreadable"):
        check_split(tmp_path, data_settings("imagenet_r", tmp_path))
