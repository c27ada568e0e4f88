"""An image error raised in a DataLoader worker reaches the main process and prints as one line."""
from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
from support import corrupt, write_image
from torch.utils.data import DataLoader
from torchvision import transforms

from continual.data.errors import DatasetError, ImageReadError
from continual.data.images import DecodingPathTaskSet


def test_an_image_error_from_a_loader_worker_keeps_its_type_and_its_line(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.png", "L", (6, 6), 50)
    bad = corrupt(write_image(tmp_path / "bad.png", "L", (6, 6), 50))
    paths = np.array([str(good), str(bad)])
    taskset = DecodingPathTaskSet(paths, np.zeros(2), np.zeros(2), trsf=transforms.ToTensor(), target_trsf=None)
    try:
        list(DataLoader(taskset, batch_size=1, num_workers=1))
    except ImageReadError as error:  # as main.py does: free the loader's worker now
        raised: ImageReadError | None = error
        traceback.clear_frames(error.__traceback__)
    else:
        raised = None
    assert raised is not None and isinstance(raised, DatasetError)
    message = str(raised)
    assert "Caught ImageReadError in DataLoader worker process 0" in message  # torch re-created the type
    assert "Traceback" in message and len(message.splitlines()) > 5
    line = raised.line
    assert line.startswith(f"cannot decode image {bad}: UnidentifiedImageError: ") and "\n" not in line


def test_a_dataset_error_prints_its_message() -> None:
    assert DatasetError("folder x not found").line == "folder x not found"
    assert ImageReadError("no prefix\nat all").line == "no prefix at all"
