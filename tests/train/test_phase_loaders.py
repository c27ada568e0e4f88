"""A phase trained by ``PhaseTrainer.fit`` with two persistent loader workers, stopped inside an epoch and
resumed, ends with the weights of the phase trained without workers, and leaves no worker behind."""
from __future__ import annotations

import dataclasses
import multiprocessing
import random

import numpy as np
import torch
from support import TINY, PhaseControl, Stopped
from torch.utils.data import Dataset

from continual.config import parse_config, settings_from
from continual.method.dytox_objective import batch_loss_of
from continual.model.dytox import DyTox
from continual.runtime.distributed import DistContext
from continual.state.saved_runs import Position
from continual.train.fit import Phase, PhaseTrainer, Resume
from continual.train.loaders import Loaders


class AugmentedImages(Dataset):
    """24 images of 5 classes, each read with noise from the three streams augmentations draw from."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(24, 3, 8, 8, generator=generator)

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        noise = 0.1 * torch.rand(3, 8, 8) + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        return self.images[index] + noise, index % 5, 0


def train_phase(workers: int, stop_at: int | None = None, resume: dict | None = None) -> dict:
    """Two epochs of 6 batches (repeated augmentation, batches of 4); when stopped, the saved state and the
    live child processes, else the final weights."""
    settings = settings_from(parse_config(["--batch-size", "4", "--num-workers", str(workers), "--no-pin-mem",
                                           "--mixup", "0", "--cutmix", "0", "--warmup-epochs", "0"]))
    assert settings.loader.persistent_workers and settings.loader.repeated_aug
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    torch.manual_seed(0)
    model = DyTox(dataclasses.replace(TINY, drop_path=0.2), 5)  # stochastic depth: draws from torch's stream
    if resume is not None:
        model.load_state_dict(resume["model"])
    rng = np.random.default_rng(0)
    control = PhaseControl(model, rng, stop_at)
    trainer = PhaseTrainer(settings, ctx, Loaders(settings.loader, settings.recipe, ctx), rng, 1, control)
    phase = Phase(0, "train", AugmentedImages(), batch_loss_of(settings.loss, False, model.nb_classes_per_task),
                  1e-3, 2, True, None, 2)
    try:
        trainer.fit(model, phase, None if resume is None else Resume(resume["position"], resume["fit"],
                                                                     resume["rng"]))
    except Stopped:  # as the loop handles a stop: the stopped phase's frames are still alive here
        assert control.saved is not None
        return {**control.saved, "children": set(multiprocessing.active_children())}
    return model.state_dict()


def test_a_phase_with_persistent_workers_resumed_inside_an_epoch_trains_as_without_workers() -> None:
    before = set(multiprocessing.active_children())
    without_workers = train_phase(0)
    stopped = train_phase(2, stop_at=4)
    assert stopped["position"] == Position(0, "train", 0, 4)  # inside the first of the two epochs
    assert stopped["children"] == before  # the stop ended the workers
    resumed = train_phase(2, resume=stopped)
    assert set(multiprocessing.active_children()) == before
    assert without_workers.keys() == resumed.keys()
    assert all(torch.equal(without_workers[name], resumed[name]) for name in without_workers)
    assert any(not torch.equal(resumed[name], stopped["model"][name]) for name in resumed)  # trained on
