"""The continual-learning task loop (SPEC §2), written once.

For each task: begin (teacher copy, expansion, freezing), train on the task's
data and the memory, update the memory, finetune on the balanced memory,
evaluate on all seen classes, log and checkpoint. Each phase is one function
of :class:`Run`, the state that lives across tasks.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from continuum.tasks import TaskSet
from timm.data import Mixup
from torch.utils.data import DataLoader, Dataset, Subset

from continual.state import checkpoints as checkpoint
from continual.config.options import (
    amp_enabled, config_to_dict, finetuning_lr, memory_mode, save_config, schedule_epochs, task_batch_size, task_epochs,
    task_lr,
)
from continual.runtime.distributed import (
    DistContext, all_reduce_sum, barrier, broadcast_object, gather_objects, shard, wrap_for_training,
)
from continual.model.dytox import DyTox, DyToxConfig, config_from_dict, grown_model
from continual.train.epoch import EpochProgress, EpochStats, LossSettings, Precision, SamPlan, evaluate, train_one_epoch
from continual.method.losses import build_criterion
from continual.method.metrics import (
    EvalCounts, TaskAccuracy, average_incremental_accuracy, backward_transfer, forgetting,
)
from continual.train.optim import build_optimizer, build_scheduler, current_lr, set_epoch_lr
from continual.runtime.preemption import Preempted, StopRequest
from continual.report.progress import bars_wanted, epoch_bar
from continual.method.rehearsal import Memory, extract_features, feature_kind, per_class_quota, select_exemplars
from continual.state.run_state import (
    Position, capture_rng, config_differences, find_run_to_resume, load_latest_state, memory_from_plain,
    memory_to_plain, restore_rng, save_state,
)
from continual.report.table import run_report, task_table
from continual.report.results import RunResults
from continual.report.run_log import JsonLinesLog, run_name
from continual.method.sam import SAM, sam_rho_for_task
from continual.data.samplers import build_eval_loader, build_train_loader, set_sampler_epoch
from continual.data.scenarios import build_scenarios, memory_taskset, taskset_with_memory


# Options of the published command line that this implementation parses but does not run yet.
NOT_IMPLEMENTED = {"sep_memory": False, "replay_memory": 0, "freeze_eval": False, "resplit": False}


def check_supported(cfg: argparse.Namespace, ctx: DistContext) -> None:
    """Refuse, before any long work, the options this implementation does not run."""
    problems = [f"--{name.replace('_', '-')} is not implemented yet (got {getattr(cfg, name)!r})"
                for name, default in NOT_IMPLEMENTED.items() if getattr(cfg, name) != default]
    if cfg.world_size not in (1, ctx.world_size):
        problems.append(f"--world-size {cfg.world_size} disagrees with the {ctx.world_size} process(es) torchrun "
                        f"started: the number of processes comes from train.sh / torchrun")
    if cfg.dist_url != "env://":
        problems.append(f"--dist-url {cfg.dist_url!r}: processes join through torchrun's environment (env://)")
    if not cfg.dytox:
        problems.append("only DyTox is implemented: set dytox: true (e.g. --options options/model/cifar_dytox.yaml)")
    if not cfg.class_attention:
        problems.append("DyTox's decoder is class attention: class_attention must be true")
    if cfg.class_order is not None and cfg.class_order and isinstance(cfg.class_order[0], list):
        problems.append("class_order holds several orders: one run takes one order "
                        "(main.py runs each order of the list, see continual.train.orders)")
    if problems:
        raise ValueError("unsupported configuration:\n  - " + "\n  - ".join(problems))


def model_config(cfg: argparse.Namespace) -> DyToxConfig:
    return DyToxConfig(
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, patch_size=cfg.patch_size,
        input_size=cfg.input_size, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
        local_up_to_layer=cfg.local_up_to_layer, locality_strength=cfg.locality_strength, drop=cfg.drop,
        attn_drop=cfg.attn_drop, drop_path=cfg.drop_path, ind_clf=cfg.ind_clf, head_div=cfg.head_div > 0,
        head_div_mode=tuple(cfg.head_div_mode), joint_tokens=cfg.joint_tokens,
        fused_attention=cfg.fused_attention,
    )


def precision_of(cfg: argparse.Namespace, device: torch.device) -> Precision:
    return Precision(device, amp_enabled(cfg), cfg.amp_dtype)


def loss_settings(cfg: argparse.Namespace, mixup_on: bool) -> LossSettings:
    return LossSettings(
        criterion=build_criterion(cfg.bce_loss, cfg.smoothing, mixup_on),
        auto_kd=cfg.auto_kd, kd_weight=cfg.kd, tau=cfg.distillation_tau, head_div=cfg.head_div,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """timm's RandAugment draws from numpy and random: seed both from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def mixup_active(cfg: argparse.Namespace) -> bool:
    return cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax is not None


def build_mixer(cfg: argparse.Namespace, nb_classes: int) -> Mixup | None:
    """timm's MixUp/CutMix over all classes seen so far (DyTox+), or None."""
    if not mixup_active(cfg):
        return None
    return Mixup(
        mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax, prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
        num_classes=nb_classes,
    )


def count_parameters(model: DyTox) -> dict[str, int]:
    params = list(model.named_parameters())
    return {
        "total": sum(p.numel() for _, p in params),
        "trainable": sum(p.numel() for _, p in params if p.requires_grad),
        "without_head_div": sum(p.numel() for n, p in params if not n.startswith("head_div.")),
    }


def endless(loader: DataLoader):
    """Batches of ``loader`` forever, with a new epoch (shuffle) each pass."""
    epoch = 0
    while True:
        set_sampler_epoch(loader, epoch)
        yield from loader
        epoch += 1


@contextmanager
def timed(timings: dict[str, float], phase: str):
    start = time.perf_counter()
    yield
    timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start


def begin_task(model: DyTox, cfg: argparse.Namespace, task_id: int, nb_new_classes: int) -> DyTox | None:
    """Start a task (SPEC §2.2-2.3): the teacher, a frozen copy taken before the expansion (when
    distilling), then the new token and heads, and ``freeze_task``. Returns the teacher."""
    teacher = None
    if task_id > 0:
        if cfg.auto_kd or cfg.kd > 0:
            teacher = copy.deepcopy(model)
            teacher.freeze(["all"])
        model.expand(nb_new_classes)
    model.set_phase("train")
    model.freeze(cfg.freeze_task if task_id > 0 else [])
    return teacher


def begin_finetuning(model: DyTox, cfg: argparse.Namespace) -> None:
    """Balanced finetuning (SPEC §2.7): the divergence head per ``head_div_mode`` and ``freeze_ft``,
    which (as published) makes everything it does not name trainable again, old heads included."""
    model.set_phase("finetune")
    model.freeze(cfg.freeze_ft)


@dataclass
class Run:
    """State of a run across tasks."""

    cfg: argparse.Namespace
    ctx: DistContext
    run_dir: Path
    train_scenario: object
    test_scenario: object
    classes_per_task: list[int]
    model: DyTox
    memory: Memory = field(default_factory=Memory)
    rows: list[dict] = field(default_factory=list)  # one per finished task, on every process
    log: JsonLinesLog | None = None  # the main process's files
    epoch_log: JsonLinesLog | None = None
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    stop: StopRequest | None = None
    sequence: int = 0  # number of the last saved run state
    resumed: dict | None = None  # the run state being resumed, until the loop has caught up with it
    results: RunResults | None = None  # the main process's summary, plots and TensorBoard
    bars: bool = False  # progress bars on this process

    @property
    def precision(self) -> Precision:
        return precision_of(self.cfg, self.ctx.device)

    def say(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    # ------------------------------------------------------------------ loaders
    def train_loader(self, dataset: Dataset, task_id: int, shuffle: bool) -> DataLoader:
        loader = build_train_loader(
            dataset, batch_size=task_batch_size(self.cfg, task_id), shuffle=shuffle,
            repeated_aug=self.cfg.repeated_aug, world_size=self.ctx.world_size, rank=self.ctx.rank,
            seed=self.cfg.seed, num_workers=self.cfg.num_workers,
            pin_memory=self.cfg.pin_mem and self.ctx.device.type == "cuda",
        )
        loader.worker_init_fn = seed_worker
        return loader

    def eval_loader(self, dataset: Dataset, task_id: int, sharded: bool = False) -> DataLoader:
        """Dataset order; ``sharded``: this process's share only, every sample on exactly one process."""
        if sharded and self.ctx.distributed:
            dataset = Subset(dataset, shard(len(dataset), self.ctx))
        batch = int(1.5 * task_batch_size(self.cfg, task_id))  # as published: no gradients, larger batch
        return build_eval_loader(dataset, batch_size=batch, num_workers=self.cfg.num_workers,
                                 pin_memory=self.cfg.pin_mem and self.ctx.device.type == "cuda")

    # ------------------------------------------------------------------- phases
    def begin_task(self, task_id: int) -> DyTox | None:
        return begin_task(self.model, self.cfg, task_id, self.classes_per_task[task_id])

    def fit(self, task_id: int, phase: str, dataset: Dataset, *, lr: float, epochs: int, shuffle: bool,
            teacher: DyTox | None, schedule_length: int | None, start: Position | None = None) -> list[EpochStats]:
        """Train for ``epochs`` on ``dataset``: the training phase and the finetuning phase alike.

        ``schedule_length`` is the number of epochs the lr schedule spans (None: a constant lr).
        ``start`` resumes inside the phase from the saved run state (optimiser,
        schedule, scaler, SAM, and for a mid-epoch stop the epoch's random state
        and running sums). States are saved every ``save_every_epoch`` epochs and
        when a signal asks the run to stop.
        """
        loader = self.train_loader(dataset, task_id, shuffle)
        optimizer = build_optimizer(self.model, self.cfg, lr)
        scheduler = None if schedule_length is None else build_scheduler(optimizer, self.cfg, schedule_length)
        mixer = build_mixer(self.cfg, self.model.nb_classes)
        settings = loss_settings(self.cfg, mixer is not None)
        precision = self.precision
        scaler = precision.grad_scaler()
        sam = self.sam_plan(task_id, phase, optimizer)
        # The divergence head is the only part that can go unused (when head_div_mode skips this phase).
        unused = self.model.head_div is not None and not self.model.divergence_active()
        trained = wrap_for_training(self.model, self.ctx, find_unused=unused)
        saved = self.resumed["fit"] if start is not None else None
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(saved["scheduler"])
            if scaler is not None and saved["scaler"]:
                scaler.load_state_dict(saved["scaler"])
            if sam is not None and saved["sam"]:
                sam.sam.load_state_dict(saved["sam"])

        def fit_state(epoch_rng: dict | None = None, progress: EpochProgress | None = None) -> dict:
            return {
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "scaler": None if scaler is None else scaler.state_dict(),
                "sam": None if sam is None else sam.sam.state_dict(),
                "epoch_rng": epoch_rng,
                "progress": None if progress is None else dataclasses.asdict(progress),
            }

        history = []
        first_epoch = start.epoch if start is not None else 0
        for epoch in range(first_epoch, epochs):
            set_sampler_epoch(loader, epoch)
            if scheduler is not None:
                set_epoch_lr(scheduler, epoch, self.cfg.sched_step_fix)
            batches, first_step, progress, epoch_rng = loader, 0, None, capture_rng(self.rng)
            if start is not None and epoch == start.epoch and start.step > 0:
                batches, first_step, progress, epoch_rng = self.resume_mid_epoch(loader, start, saved)
            with epoch_bar(self.bars, f"task {task_id} {phase} {epoch + 1}/{epochs}", len(loader),
                           current_lr(optimizer)) as after_step:
                stats = train_one_epoch(
                    trained, teacher, batches, optimizer, settings, precision, scaler=scaler,
                    clip_grad=self.cfg.clip_grad, mixer=mixer, sam=sam, accum_steps=self.cfg.grad_accum_steps,
                    where=f"task {task_id}, {phase} epoch {epoch}", nb_batches=len(loader), start_step=first_step,
                    progress=progress, should_stop=self.stop_requested, after_step=after_step,
                )
            if stats.next_step is not None:  # a signal: save inside the epoch and stop
                self.save_state(Position(task_id, phase, epoch, stats.next_step), teacher,
                                fit_state(epoch_rng, stats.progress))
                self.preempted(f"in task {task_id}, {phase} epoch {epoch}, step {stats.next_step}")
            history.append(stats)
            self.log_epoch(task_id, phase, epoch, epochs, stats, current_lr(optimizer))
            every = self.cfg.save_every_epoch
            stopping = epoch + 1 < epochs and self.stop_requested()
            if epoch + 1 < epochs and (stopping or (every and (epoch + 1) % every == 0)):
                self.save_state(Position(task_id, phase, epoch + 1), teacher, fit_state())
                if stopping:
                    self.preempted(f"after task {task_id}, {phase} epoch {epoch}")
        return history

    def resume_mid_epoch(self, loader: DataLoader, start: Position, saved: dict):
        """Replay the saved epoch up to ``start.step``: same sampler order and augmentation seeds, then the
        random state of the step boundary. Returns (remaining batches, first step, progress, epoch RNG)."""
        restore_rng(saved["epoch_rng"], self.rng)
        batches = iter(loader)  # draws the workers' seeds from the restored state
        for _ in range(start.step):
            next(batches)
        restore_rng(self.resumed["rng"], self.rng)
        return batches, start.step, EpochProgress(**saved["progress"]), saved["epoch_rng"]

    def sam_plan(self, task_id: int, phase: str, optimizer: torch.optim.Optimizer) -> SamPlan | None:
        """SAM for this phase, when ``sam_rho`` > 0 and ``sam_mode`` / ``sam_skip_first`` allow it."""
        cfg = self.cfg
        mode = "tr" if phase == "train" else "ft"
        if cfg.sam_rho <= 0 or mode not in cfg.sam_mode or (cfg.sam_skip_first and task_id == 0):
            return None
        rho = sam_rho_for_task(cfg.sam_rho, cfg.sam_final, task_id, len(self.classes_per_task))
        sam = SAM(optimizer, rho, adaptive=cfg.sam_adaptive, look_k=cfg.look_sam_k, look_alpha=cfg.look_sam_alpha)
        memory_batches = None
        if "memory" in (cfg.sam_first, cfg.sam_second) and task_id > 0 and len(self.memory):
            memory_batches = endless(self.train_loader(memory_taskset(self.train_scenario, *self.memory.get()),
                                                       task_id, shuffle=True))
        return SamPlan(sam, cfg.sam_first == "memory", cfg.sam_second == "memory", memory_batches)

    def log_epoch(self, task_id: int, phase: str, epoch: int, epochs: int, stats: EpochStats, lr: float) -> None:
        losses = " ".join(f"{k} {v:.4f}" for k, v in stats.losses.items())
        self.say(f"  task {task_id} {phase} epoch {epoch + 1}/{epochs}: {losses} lr {lr:.2e} "
                 f"{stats.images_per_second:.0f} img/s")
        if self.epoch_log is not None:
            self.epoch_log.append({
                "task": task_id, "phase": phase, "epoch": epoch, "lr": lr, **stats.losses,
                "images_per_s": stats.images_per_second, "seconds": stats.seconds, "data_seconds": stats.data_seconds,
                "data_wait_fraction": stats.data_seconds / stats.seconds,
            })
            if self.results is not None:
                self.results.epoch_done(len(self.epoch_log.rows) - 1, self.epoch_log.rows[-1])
        if self.cfg.eval_every and (epoch + 1) % self.cfg.eval_every == 0 and epoch + 1 < epochs:
            accuracy = self.evaluate(task_id)
            self.say(f"  task {task_id} {phase} epoch {epoch + 1}: top-1 {accuracy.top1:.2f}")

    def train_phase(self, task_id: int, teacher: DyTox | None, start: Position | None = None) -> None:
        dataset = self.train_scenario[task_id]
        if task_id > 0 and len(self.memory):
            dataset = taskset_with_memory(dataset, *self.memory.get())
        self.say(f"task {task_id}: training on {len(dataset)} images "
                 f"({len(self.memory)} from memory), classes {self.classes_seen(task_id)}")
        self.fit(task_id, "train", dataset, lr=task_lr(self.cfg, task_id, self.ctx.world_size),
                 epochs=task_epochs(self.cfg, task_id), shuffle=True, teacher=teacher,
                 schedule_length=schedule_epochs(self.cfg, task_id), start=start)

    def herding_set(self, task_id: int) -> TaskSet:
        """The task's images with the transform features are extracted with (train by default, as published)."""
        taskset = self.train_scenario[task_id]
        if not self.cfg.rehearsal_test_trsf:
            return taskset
        test_transform = self.test_scenario[0].trsf
        return TaskSet(*taskset.get_raw_samples(), trsf=test_transform, data_type=taskset.data_type)

    @property
    def memory_mode(self) -> str:
        return memory_mode(self.cfg, self.ctx.world_size)

    def memory_budget(self) -> int:
        """Exemplars this process keeps: the whole budget, or its share with distributed memory."""
        if self.memory_mode == "distributed":
            return self.cfg.memory_size // self.ctx.world_size
        return self.cfg.memory_size

    def herd(self, task_id: int, quota: int) -> np.ndarray:
        """Indices of the exemplars of the new classes, herded on this process's features."""
        taskset = self.herding_set(task_id)
        y = taskset.get_raw_samples()[1]
        kind = feature_kind(self.cfg.rehearsal)
        features = None
        if kind is not None:
            features, targets = extract_features(self.model, self.eval_loader(taskset, task_id), kind,
                                                 self.ctx.device)
            assert np.array_equal(targets, y), "feature extraction must keep the task set's order"
        return select_exemplars(y, features, quota, self.cfg.rehearsal, self.rng)

    def memory_phase(self, task_id: int) -> None:
        """Select exemplars of the new classes, shrink old classes to the new quota.

        Global memory: process 0 selects and every process receives the same
        indices. Distributed and published memory: each process selects on its
        own augmented features, within its own budget.
        """
        if self.cfg.memory_size == 0:
            return
        quota = per_class_quota(self.memory_budget(), self.classes_seen(task_id), sum(self.classes_per_task),
                                self.cfg.fixed_memory)
        self.say(f"task {task_id}: memory update, {quota} exemplars per class ({self.cfg.rehearsal})")
        if self.memory_mode == "global":
            indices = self.herd(task_id, quota) if self.ctx.is_main else None
            indices = broadcast_object(indices)
        else:
            indices = self.herd(task_id, quota)
        self.memory.trim(quota)
        self.memory.add(*self.train_scenario[task_id].get_raw_samples(), indices)

    def total_memory(self) -> int:
        """Exemplars held across processes (counted once in global mode)."""
        if self.memory_mode == "global":
            return len(self.memory)
        return int(all_reduce_sum(torch.tensor([len(self.memory)], device=self.ctx.device)).item())

    def finetune_phase(self, task_id: int, teacher: DyTox | None, start: Position | None = None) -> bool:
        """Balanced finetuning on the memory, with ``freeze_ft`` (SPEC §2.7). Returns whether it ran."""
        single_task = len(self.classes_per_task) == 1
        if self.cfg.finetuning != "balanced" or not len(self.memory) or not (task_id > 0 or single_task):
            return False
        begin_finetuning(self.model, self.cfg)
        dataset = memory_taskset(self.train_scenario, *self.memory.get())
        self.fit(task_id, "finetune", dataset, lr=finetuning_lr(self.cfg, task_id, self.ctx.world_size),
                 epochs=self.cfg.finetuning_epochs, shuffle=not self.cfg.ft_no_sampling,
                 teacher=teacher if self.cfg.finetuning_teacher else None, schedule_length=None, start=start)
        self.model.set_phase("train")
        return True

    def evaluate(self, task_id: int) -> TaskAccuracy:
        """Accuracy on the test images of all seen classes, each image evaluated on exactly one process."""
        accuracy, _ = self.evaluate_counted(task_id)
        return accuracy

    def evaluate_counted(self, task_id: int) -> tuple[TaskAccuracy, int]:
        loader = self.eval_loader(self.test_scenario[: task_id + 1], task_id, sharded=True)
        counts = evaluate(self.model, loader, self.precision, self.classes_per_task[: task_id + 1])
        counts = EvalCounts.from_tensor(all_reduce_sum(counts.as_tensor()))
        return TaskAccuracy.from_counts(counts), int(counts.total.sum())

    def memory_rank(self) -> int | None:
        """The rank in the memory file name: each process has its own memory unless it is global."""
        return self.ctx.rank if self.ctx.distributed and self.memory_mode != "global" else None

    def classes_seen(self, task_id: int) -> int:
        return sum(self.classes_per_task[: task_id + 1])

    # --------------------------------------------------------- saving and stopping
    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.requested(self.ctx.device)

    def preempted(self, where: str) -> None:
        raise Preempted(self.stop.signal_name if self.stop and self.stop.signal_name else "SIGTERM", where)

    def save_state(self, position: Position, teacher: DyTox | None, fit: dict | None = None,
                   timings: dict[str, float] | None = None) -> None:
        """Everything this process needs to continue at ``position`` exactly (see continual.state.run_state)."""
        self.sequence += 1
        state = {
            "sequence": self.sequence,
            "position": position.as_dict(),
            "world_size": self.ctx.world_size,
            "config": config_to_dict(self.cfg),
            "model": self.model.state_dict(),
            "model_config": dataclasses.asdict(self.model.config),
            "nb_classes_per_task": list(self.model.nb_classes_per_task),
            "teacher": None if teacher is None else teacher.state_dict(),
            "memory": memory_to_plain(*self.memory.get()),
            "rng": capture_rng(self.rng),
            "rows": self.rows,
            "epoch_rows": self.epoch_log.rows if self.epoch_log is not None else [],
            "timings": timings or {},
            "fit": fit,
        }
        save_state(self.run_dir, self.sequence, self.ctx.rank, state)
        barrier()

    def boundary(self, position: Position, teacher: DyTox | None, timings: dict[str, float]) -> None:
        """End of a phase: save the run state, then stop here if a signal asked for it."""
        self.save_state(position, teacher, timings=timings)
        if self.stop_requested():
            self.preempted(f"before {position.phase} of task {position.task}")

    # ---------------------------------------------------------------- one task
    def run_task(self, task_id: int, start: Position | None = None) -> dict:
        """Run the phases of a task; ``start`` resumes it from a saved run state."""
        start = start or Position(task_id)
        timings: dict[str, float] = dict(self.resumed["timings"]) if start.phase != "begin" else {}
        if start.phase == "begin":
            teacher = self.begin_task(task_id)
        else:  # the model (expanded) and teacher come from the run state; requires_grad is not saved
            teacher = self.resumed["teacher_model"]
            self.model.freeze(self.cfg.freeze_task if task_id > 0 else [])
        params = count_parameters(self.model)
        if start.reached(task_id, "train"):
            with timed(timings, "train"):
                self.train_phase(task_id, teacher, start if start.phase == "train" else None)
            self.boundary(Position(task_id, "memory"), teacher, timings)
        if start.reached(task_id, "memory"):
            with timed(timings, "memory"):
                self.memory_phase(task_id)
            self.boundary(Position(task_id, "finetune"), teacher, timings)
        if start.reached(task_id, "finetune"):
            with timed(timings, "finetune"):
                self.finetune_phase(task_id, teacher, start if start.phase == "finetune" else None)
            self.boundary(Position(task_id, "eval"), teacher, timings)
        self.resumed = None
        with timed(timings, "eval"):
            accuracy, nb_images = self.evaluate_counted(task_id)
        row = self.task_row(task_id, accuracy, params, timings)
        row.update(eval_images=nb_images, world_size=self.ctx.world_size, memory_mode=self.memory_mode,
                   memory_total=self.total_memory(), memory_fingerprints=gather_objects(self.memory.fingerprint()))
        self.rows.append(row)
        if self.ctx.is_main:
            self.log.append(row)
            checkpoint.save_task_checkpoint(self.run_dir, task_id, self.model, config_to_dict(self.cfg))
            if self.results is not None:  # after the checkpoint: a plotting failure must not lose the model
                self.results.task_done(self.log.rows, self.epoch_log.rows)
        if self.ctx.is_main or (self.ctx.distributed and self.memory_mode != "global"):
            checkpoint.save_memory(self.run_dir, task_id, self.memory, self.memory_rank())
        self.say(f"task {task_id}: top-1 {accuracy.top1:.2f} top-5 {accuracy.top5:.2f} "
                 f"old {accuracy.old:.2f} new {accuracy.new:.2f} task-IL {accuracy.task_incremental:.2f} "
                 f"task-pred {accuracy.task_prediction:.2f} | Avg {row['avg_acc']:.2f} "
                 f"forgetting {row['forgetting']:.2f} BWT {row['backward_transfer']:.2f} | "
                 f"{self.memory_mode} memory, {row['memory_total']} exemplars over {self.ctx.world_size} process(es)")
        self.boundary(Position(task_id + 1), None, {})
        return row

    def task_row(self, task_id: int, accuracy: TaskAccuracy, params: dict[str, int],
                 timings: dict[str, float]) -> dict:
        previous = [r for r in self.rows if r["task"] < task_id]
        matrix = [r["acc_per_task"] for r in previous] + [accuracy.per_task]
        top1s = [r["acc1"] for r in previous] + [accuracy.top1]
        return {
            "task": task_id,
            "classes_seen": self.classes_seen(task_id),
            "acc1": accuracy.top1,
            "acc5": accuracy.top5,
            "acc_per_task": accuracy.per_task,
            "acc_old": accuracy.old,
            "acc_new": accuracy.new,
            "acc_task_incremental": accuracy.task_incremental,
            "acc_task_prediction": accuracy.task_prediction,
            "avg_acc": average_incremental_accuracy(top1s),
            "forgetting": forgetting(matrix),
            "backward_transfer": backward_transfer(matrix),
            "params_total": params["total"],
            "params_trainable": params["trainable"],
            "params_without_head_div": params["without_head_div"],
            "memory_size": len(self.memory),
            "memory_per_class": self.memory.counts_per_class(),
            "seconds": timings,
        }


def resume_folder(cfg: argparse.Namespace) -> Path | None:
    """The run folder to continue: ``--resume DIR``, or with ``--auto-resume`` the newest saved run of this name."""
    if cfg.resume:
        run_dir = Path(cfg.resume)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume {run_dir}: no such run folder")
        return run_dir
    if cfg.auto_resume:
        return find_run_to_resume(Path(cfg.output_basedir), cfg.data_set, cfg.log_category, cfg.name)
    return None


def prepare_run_dir(cfg: argparse.Namespace) -> tuple[Path, Path, bool]:
    """(run folder, mirrored log path, whether it continues an earlier run)."""
    run_dir = resume_folder(cfg)
    if run_dir is not None:
        relative = Path(cfg.data_set) / cfg.log_category / run_dir.name
    else:
        relative = run_name(cfg.data_set, cfg.log_category, cfg.name)
        run_dir = Path(cfg.output_basedir) / relative
    return run_dir, Path(cfg.log_dir) / relative.with_suffix(".jsonl"), run_dir.exists()


def restore_state(run: Run) -> Position:
    """Load the newest complete run state of the run folder; return where to continue."""
    def all_ok(ok: bool) -> bool:
        failures = torch.tensor([0.0 if ok else 1.0], device=run.ctx.device)
        return all_reduce_sum(failures).item() == 0

    loaded = load_latest_state(run.run_dir, run.ctx.rank, run.ctx.world_size, say=print, all_ok=all_ok)
    if loaded is None:
        raise FileNotFoundError(
            f"no saved run state (checkpoints/state_*_rank*.pth for {run.ctx.world_size} process(es)) in "
            f"{run.run_dir}; to restart from the end of a task use --resume DIR --start-task K")
    run.sequence, state = loaded
    differences = config_differences(state["config"], config_to_dict(run.cfg))
    if state["world_size"] != run.ctx.world_size:
        differences.insert(0, f"world_size ({state['world_size']} saved, {run.ctx.world_size} now)")
    if differences:
        raise ValueError(f"refusing to resume {run.run_dir}: these options differ from the saved run: "
                         f"{', '.join(differences)}")
    classes = state["nb_classes_per_task"]
    config = config_from_dict(state["model_config"])
    run.model = grown_model(config, classes, state["model"]).to(run.ctx.device)
    teacher = None
    if state["teacher"] is not None:  # built now: building draws random numbers, restored afterwards
        teacher = grown_model(config, classes[:-1], state["teacher"]).to(run.ctx.device)
        teacher.freeze(["all"])
    state["teacher_model"] = teacher
    run.memory.load_state_dict(memory_from_plain(state["memory"]))
    run.rows = list(state["rows"])
    if run.log is not None:
        run.log.reset(state["rows"])
        run.epoch_log.reset(state["epoch_rows"])
    run.resumed = state
    position = Position(**state["position"])
    run.model.set_phase("finetune" if position.phase == "finetune" else "train")
    return position


def restore(run: Run, start_task: int) -> None:
    """Load the model and memory saved after task ``start_task - 1`` of the run folder."""
    previous = start_task - 1
    model, _ = checkpoint.load_task_checkpoint(checkpoint.checkpoint_path(run.run_dir, previous), run.ctx.device)
    if model.nb_classes_per_task != run.classes_per_task[:start_task]:
        raise ValueError(f"checkpoint of task {previous} has classes per task {model.nb_classes_per_task}, "
                         f"the scenario {run.classes_per_task[:start_task]}")
    run.model = model
    mem_file = checkpoint.memory_path(run.run_dir, previous, run.memory_rank())
    if run.cfg.memory_size:
        run.memory = checkpoint.load_memory(mem_file)
    if run.log is not None:
        run.log.keep_before_task(start_task)
    run.rows = list(broadcast_object(run.log.rows if run.log is not None else None))  # a copy, not the log's list


def latest_task_checkpoint(run_dir: Path) -> int:
    """Task id of the last checkpoint in a run folder."""
    tasks = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("checkpoint_*.pth"))
    if not tasks:
        raise FileNotFoundError(f"no checkpoint_<task>.pth in {run_dir / 'checkpoints'}")
    return tasks[-1]


def evaluate_checkpoint(cfg: argparse.Namespace, ctx: DistContext) -> list[dict]:
    """``--eval --resume DIR [--start-task K]``: accuracy of the model saved after task K-1 (default: the last)."""
    run_dir = Path(cfg.resume)
    task_id = cfg.start_task - 1 if cfg.start_task else latest_task_checkpoint(run_dir)
    train_scenario, test_scenario = build_scenarios(cfg)
    model, _ = checkpoint.load_task_checkpoint(checkpoint.checkpoint_path(run_dir, task_id), ctx.device)
    state = Run(cfg, ctx, run_dir, train_scenario, test_scenario, [int(n) for n in train_scenario.increments], model)
    accuracy, nb_images = state.evaluate_counted(task_id)
    row = {
        "task": task_id, "classes_seen": state.classes_seen(task_id), "acc1": accuracy.top1, "acc5": accuracy.top5,
        "acc_per_task": accuracy.per_task, "acc_old": accuracy.old, "acc_new": accuracy.new,
        "acc_task_incremental": accuracy.task_incremental, "acc_task_prediction": accuracy.task_prediction,
        "eval_images": nb_images,
    }
    state.say(f"checkpoint of task {task_id} ({state.classes_seen(task_id)} classes, {nb_images} test images), "
              f"{run_dir}:\n{task_table([row])}\naccuracy per task {[round(a, 2) for a in accuracy.per_task]}")
    return [row]


def set_deterministic(device: torch.device) -> None:
    """Deterministic kernels, so that a resumed run equals an uninterrupted one (``--deterministic``)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


@dataclass(frozen=True)
class Outcome:
    """What a training run leaves: its folder, its task rows and (main process) its summary."""

    run_dir: Path
    rows: list[dict]
    summary: dict | None


def run(cfg: argparse.Namespace, ctx: DistContext) -> list[dict]:
    """Run every task of the scenario (up to ``max_task``), or ``--eval`` a checkpoint; return the task rows."""
    check_supported(cfg, ctx)
    if cfg.start_task and not cfg.resume:
        raise ValueError("--start-task needs --resume DIR (the run folder whose checkpoints to start from)")
    if cfg.eval:
        if not cfg.resume:
            raise ValueError("--eval needs --resume DIR (the run folder whose checkpoint to evaluate)")
        return evaluate_checkpoint(cfg, ctx)
    return train(cfg, ctx).rows


def train(cfg: argparse.Namespace, ctx: DistContext) -> Outcome:
    """Train task after task in a new or resumed run folder; print the summary at the end."""
    started = time.perf_counter()
    check_supported(cfg, ctx)
    if cfg.deterministic:
        set_deterministic(ctx.device)
    seed_everything(cfg.seed + ctx.rank)
    for note in precision_of(cfg, ctx.device).warnings(amp_requested_but_disabled=cfg.amp and cfg.no_amp):
        if ctx.is_main:
            print(f"warning: {note}", file=sys.stderr, flush=True)
    train_scenario, test_scenario = build_scenarios(cfg)  # fails fast on missing or malformed data
    classes_per_task = [int(n) for n in train_scenario.increments]
    run_dir, mirror, continuing = broadcast_object(prepare_run_dir(cfg))  # rank 0's names
    model = DyTox(model_config(cfg), classes_per_task[0]).to(ctx.device)
    state = Run(cfg, ctx, run_dir, train_scenario, test_scenario, classes_per_task, model,
                rng=np.random.default_rng(cfg.seed + ctx.rank))
    last_task = len(classes_per_task) if cfg.max_task is None else min(cfg.max_task, len(classes_per_task))
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / ("config.yaml" if not continuing else f"config_resume_{time.strftime('%Y%m%d-%H%M%S')}.yaml"))
        state.log = JsonLinesLog(run_dir / "log.jsonl", mirror)
        state.epoch_log = JsonLinesLog(run_dir / "epochs.jsonl")
    start = Position(cfg.start_task)
    if continuing and cfg.start_task:
        restore(state, cfg.start_task)
    elif continuing:
        start = restore_state(state)
    if ctx.is_main:  # only once the resume is accepted: this rebuilds tensorboard/ from the restored logs
        state.results = RunResults(run_dir, cfg, last_task, started)
        state.results.resume_from(state.log.rows, state.epoch_log.rows)
    state.bars = bars_wanted(cfg.no_progress, ctx.is_main)
    state.say(f"run folder {run_dir}: {len(classes_per_task)} tasks {classes_per_task}, "
              f"running from task {start.task} ({start.phase}) to {last_task - 1} on {ctx.world_size} process(es), "
              f"{ctx.device}; {state.memory_mode} memory of {state.memory_budget()} exemplars per process")
    if state.resumed is not None:
        restore_rng(state.resumed["rng"], state.rng)
    state.stop = StopRequest().install()
    try:
        for task_id in range(start.task, last_task):
            state.run_task(task_id, start if task_id == start.task else None)
    except Preempted as stopped:
        state.say(f"{stopped}; checkpoint saved. Resume with the same command and --resume {run_dir}")
        raise
    finally:
        state.stop.uninstall()
        if state.results is not None:
            state.results.close()
    summary = None
    if state.results is not None and state.log.rows:
        summary = state.results.write_summary(state.log.rows)  # the final wall time
        state.say(f"\nresults of {run_dir} (summary.json, plots and tensorboard/ in that folder):\n"
                  f"{run_report(summary)}")
    return Outcome(run_dir, state.rows, summary)
