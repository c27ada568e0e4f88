"""The data loaders of a task: training (sampler per the options, seeded workers, kept for the whole phase)
and evaluation."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset, Subset

from continual.config.settings import LoaderSettings, RecipeSettings
from continual.data.epoch_loader import EpochLoader
from continual.data.samplers import build_eval_loader, build_feature_loader, build_train_loader
from continual.runtime.device import pin_memory_wanted
from continual.runtime.distributed import DistContext, shard
from continual.runtime.seeding import seed_worker


@dataclass(frozen=True)
class Loaders:
    """Loaders with the batch size of each task for this process."""

    settings: LoaderSettings
    recipe: RecipeSettings
    ctx: DistContext

    def train(self, dataset: Dataset, task_id: int, shuffle: bool, batch_size: int | None = None) -> EpochLoader:
        """A phase's loader, read once per epoch, its workers kept between epochs (``--persistent-workers``)
        until it is closed; ``batch_size``: instead of the task's (the memory loader of ``--replay-memory``)."""
        loader = build_train_loader(
            dataset, batch_size=batch_size or self.recipe.batch_size_of(task_id), shuffle=shuffle,
            repeated_aug=self.settings.repeated_aug, world_size=self.ctx.world_size, rank=self.ctx.rank,
            seed=self.settings.seed, num_workers=self.settings.num_workers, pin_memory=self.pin_memory,
            persistent_workers=self.settings.persistent_workers, prefetch_factor=self.settings.prefetch_factor,
        )
        loader.worker_init_fn = seed_worker
        return EpochLoader(loader)

    def eval(self, dataset: Dataset, task_id: int, sharded: bool = False) -> DataLoader:
        """Dataset order; ``sharded``: this process's share only, every sample on exactly one process."""
        if sharded and self.ctx.distributed:
            dataset = Subset(dataset, shard(len(dataset), self.ctx))  # type: ignore[arg-type]
        return build_eval_loader(dataset, batch_size=self.eval_batch_size(task_id),
                                 num_workers=self.settings.num_workers, pin_memory=self.pin_memory,
                                 prefetch_factor=self.settings.prefetch_factor)

    def features(self, dataset: Dataset, task_id: int, pass_index: int) -> DataLoader:
        """Herding's pass ``pass_index`` over a task's images, in dataset order, with seeded augmentations."""
        return build_feature_loader(dataset, batch_size=self.eval_batch_size(task_id),
                                    num_workers=self.settings.num_workers, pin_memory=self.pin_memory,
                                    seed=self.settings.seed, rank=self.ctx.rank, task_id=task_id,
                                    pass_index=pass_index, prefetch_factor=self.settings.prefetch_factor)

    @property
    def pin_memory(self) -> bool:
        """Batches in page-locked memory, which the training step copies to the GPU with ``non_blocking``."""
        return pin_memory_wanted(self.settings.pin_mem, self.ctx.device)

    def eval_batch_size(self, task_id: int) -> int:
        return int(1.5 * self.recipe.batch_size_of(task_id))  # as published: no gradients, larger batch


def endless(loader: EpochLoader) -> Iterator:
    """Batches of ``loader`` forever, with a new epoch (shuffle) each pass."""
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1
