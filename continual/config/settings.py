"""Typed, frozen settings per component, made once from the parsed options.

Nothing below the task loop sees the argparse namespace: each component takes
its own settings object, whose fields carry the option names (``lr``,
``memory_size``, ...). Per-task values (scaled learning rate, batch size,
epochs) are methods: the settings are never changed during a run.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from continual.config.errors import ConfigError
from continual.config.files import config_to_dict
from continual.config.options import encoder_argument
from continual.config.validate import check_runnable, encoder_of
from continual.model.config import RESNET_EMBED_DIM, RESNET_NUM_HEADS, ModelConfig
from continual.model.encoders import fit_to_encoder

# Reference batch of the linear learning-rate scaling rule.
LR_REFERENCE_BATCH = 512.0

T = TypeVar("T")


def settings_of(cls: type[T], cfg: argparse.Namespace, **values: Any) -> T:
    """``cls`` with each field read from the option of the same name (lists become tuples), or from
    ``values`` where given; a field that is no option keeps its default."""
    fields = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in values:
            value = values[field.name]
        elif field.default is not dataclasses.MISSING and not hasattr(cfg, field.name):
            continue
        else:
            value = getattr(cfg, field.name)
        fields[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**fields)


def scaled_lr(base_lr: float, batch_size: int, world_size: int, accum_steps: int = 1) -> float:
    """Linear scaling rule: base_lr * effective batch / 512."""
    return base_lr * batch_size * world_size * accum_steps / LR_REFERENCE_BATCH


@dataclass(frozen=True)
class DataSettings:
    """The dataset, its split into tasks and the training augmentation (continual.data.scenarios)."""

    data_set: str
    data_path: str
    train_per_class: int
    input_size: int
    initial_increment: int
    increment: int
    class_order: tuple[int, ...] | None
    color_jitter: float
    aa: str | None
    train_interpolation: str
    reprob: float
    remode: str
    recount: int
    validation: float = 0.0
    validation_test_transform: bool = False
    mean: tuple[float, ...] | None = None  # --mean / --std: None is the dataset's normalisation
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class RecipeSettings:
    """Per-task batch size, epochs and learning rates (linear scaling rule)."""

    batch_size: int
    incremental_batch_size: int | None
    base_epochs: int
    epochs: int
    sched_epochs_fix: bool
    lr: float
    incremental_lr: float | None
    finetuning_lr: float
    finetuning_epochs: int
    grad_accum_steps: int
    batches_per_epoch: int | None = None  # --debug: 1 (the published debug mode), else every batch

    def batch_size_of(self, task_id: int) -> int:
        """Batch size per process: ``incremental_batch_size`` after the first task if set."""
        if task_id > 0 and self.incremental_batch_size is not None:
            return self.incremental_batch_size
        return self.batch_size

    def epochs_of(self, task_id: int) -> int:
        """``base_epochs`` for the first task, ``epochs`` for the later ones."""
        return self.base_epochs if task_id == 0 else self.epochs

    def schedule_epochs(self, task_id: int) -> int:
        """Length of a task's learning-rate schedule: ``epochs`` for every task, as published (task 0
        then trains ``base_epochs`` epochs on it); ``sched_epochs_fix`` gives task 0 ``base_epochs``."""
        return self.epochs_of(task_id) if self.sched_epochs_fix else self.epochs

    def lr_of(self, task_id: int, world_size: int) -> float:
        """Scaled learning rate of a task: ``lr`` first, then ``incremental_lr`` (or ``lr``)."""
        base = self.lr if task_id == 0 or self.incremental_lr is None else self.incremental_lr
        return self.scaled(base, task_id, world_size)

    def finetuning_lr_of(self, task_id: int, world_size: int) -> float:
        """Scaled learning rate of the balanced finetuning after a task."""
        return self.scaled(self.finetuning_lr, task_id, world_size)

    def scaled(self, base_lr: float, task_id: int, world_size: int) -> float:
        return scaled_lr(base_lr, self.batch_size_of(task_id), world_size, self.grad_accum_steps)


@dataclass(frozen=True)
class OptimizerSettings:
    """timm's optimiser (``create_optimizer_v2``) and gradient clipping."""

    opt: str
    opt_impl: str
    opt_eps: float | None
    opt_betas: tuple[float, ...] | None
    momentum: float
    weight_decay: float
    clip_grad: float | None


@dataclass(frozen=True)
class ScheduleSettings:
    """timm's per-epoch learning-rate schedule (``create_scheduler_v2``)."""

    sched: str
    decay_epochs: float
    cooldown_epochs: int
    patience_epochs: int
    decay_rate: float
    min_lr: float
    warmup_lr: float
    warmup_epochs: int
    lr_noise: tuple[float, ...] | None
    lr_noise_pct: float
    lr_noise_std: float
    seed: int
    sched_step_fix: bool
    decay_milestones: tuple[int, ...] = ()


@dataclass(frozen=True)
class LoaderSettings:
    """Data loaders: workers (kept through a phase, prefetching), pinned memory, the repeated-augmentation
    sampler and its seed."""

    num_workers: int
    pin_mem: bool
    repeated_aug: bool
    seed: int
    persistent_workers: bool
    prefetch_factor: int


@dataclass(frozen=True)
class LossSettings:
    """The classification loss, the distillation and the divergence head's weight."""

    bce_loss: bool
    smoothing: float
    auto_kd: bool
    kd: float
    distillation_tau: float
    head_div: float
    pod: float | None
    pod_scales: tuple[int, ...]
    pod_scaling: bool
    pod_tokens_as_maps: bool

    @property
    def distills(self) -> bool:
        """Whether a teacher is needed."""
        return self.auto_kd or self.kd > 0


@dataclass(frozen=True)
class MixupSettings:
    """timm's MixUp / CutMix (DyTox+)."""

    mixup: float
    cutmix: float
    cutmix_minmax: tuple[float, ...] | None
    mixup_prob: float
    mixup_switch_prob: float
    mixup_mode: str
    smoothing: float

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None


@dataclass(frozen=True)
class SamSettings:
    """Sharpness-aware minimisation (DyTox++)."""

    sam_rho: float
    sam_adaptive: bool
    sam_first: str
    sam_second: str
    sam_skip_first: bool
    sam_final: float | None
    sam_mode: tuple[str, ...]
    look_sam_k: int
    look_sam_alpha: float


@dataclass(frozen=True)
class MemorySettings:
    """The rehearsal memory: budget, selection and how processes share it."""

    memory_size: int
    fixed_memory: bool
    rehearsal: str
    rehearsal_test_trsf: bool
    global_memory: bool
    distributed_memory: bool
    published_memory: bool
    sep_memory: bool
    replay_memory: int
    rehearsal_modes: int

    def mode(self, world_size: int) -> str:
        """'global', 'distributed' or 'published' (several processes, none chosen: the published one)."""
        if self.global_memory:
            return "global"
        if self.distributed_memory:
            return "distributed"
        return "published" if world_size > 1 or self.published_memory else "global"

    def budget(self, world_size: int) -> int:
        """Exemplars one process keeps: the whole budget, or its share with distributed memory."""
        return self.memory_size // world_size if self.mode(world_size) == "distributed" else self.memory_size


@dataclass(frozen=True)
class LearnerSettings:
    """The method (``continual.method.registry``), what DyTox freezes and how it finetunes."""

    method: str
    freeze_task: tuple[str, ...]
    freeze_ft: tuple[str, ...]
    finetuning: str
    finetuning_teacher: bool
    ft_no_sampling: bool
    finetuning_resetclf: bool
    only_ft: bool
    oversample_memory: int
    oversample_memory_ft: int
    retrain_scratch: bool
    finetuning_temperature: float = 5.0  # DER's balanced finetuning: cross-entropy of logits / temperature


@dataclass(frozen=True)
class PrecisionSettings:
    """Mixed precision: ``amp`` resolved from ``--amp`` and the published ``no_amp``."""

    amp: bool
    amp_dtype: str
    amp_overridden: bool  # amp and no_amp both true (in option files): the user should be told
    compile: bool = False
    compile_backend: str = "inductor"


@dataclass(frozen=True)
class RunSettings:
    """The run folder, resuming, reporting and the seed."""

    name: str
    options: tuple[str, ...]
    output_basedir: str
    output_dir: str
    log_dir: str
    log_category: str
    seed: int
    eval: bool
    eval_every: int
    max_task: int | None
    save_every_epoch: int
    resume: str
    start_task: int
    auto_resume: bool
    deterministic: bool
    progress: bool
    plots: bool
    tensorboard: bool
    world_size: int  # as given by --world-size (the processes come from torchrun)
    pretrained: str | None = None  # the encoder's weights before task 0 (continual.state.pretrained)


@dataclass(frozen=True)
class Settings:
    """Everything a run computes with, by component; ``options`` is the resolved configuration as
    plain data (saved as config.yaml, compared on resume)."""

    model: ModelConfig
    data: DataSettings
    recipe: RecipeSettings
    optimizer: OptimizerSettings
    schedule: ScheduleSettings
    loader: LoaderSettings
    loss: LossSettings
    mixup: MixupSettings
    sam: SamSettings
    memory: MemorySettings
    learner: LearnerSettings
    precision: PrecisionSettings
    run: RunSettings
    options: Mapping[str, object]


def amp_enabled(cfg: argparse.Namespace) -> bool:
    """Mixed precision: off with ``no_amp`` true, on with ``no_amp`` false (the published meaning
    of ``no_amp: false``), otherwise (unset) on only with ``--amp``."""
    if cfg.no_amp is None:
        return bool(cfg.amp)
    return not cfg.no_amp


def model_config(cfg: argparse.Namespace) -> ModelConfig:
    """The architecture of the options' model: DyTox (ConViT, ResNet-18 with ``resnet``, any encoder with
    ``encoder``) or, with ``dytox`` false, the baseline (ConViT, ViT or a timm model). The ResNet's decoder has
    the published fixed size; embed_dim is the width a timm encoder gives (built on the meta device to read it).
    The divergence head is DyTox's: another method (``--method``) would build it and never train it. DER
    (``--method der``) has its own network: an extractor per task (continual.model.der)."""
    encoder = encoder_of(cfg)
    resnet = cfg.dytox and encoder == "resnet18"
    divergence_head = cfg.head_div > 0 and cfg.method == "dytox"
    return fit_to_encoder(ModelConfig(
        embed_dim=RESNET_EMBED_DIM if resnet else cfg.embed_dim, depth=cfg.depth,
        num_heads=RESNET_NUM_HEADS if resnet else cfg.num_heads, patch_size=cfg.patch_size,
        input_size=cfg.input_size, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
        local_up_to_layer=cfg.local_up_to_layer, locality_strength=cfg.locality_strength, drop=cfg.drop,
        attn_drop=cfg.attn_drop, drop_path=cfg.drop_path, ind_clf=cfg.ind_clf, head_div=divergence_head,
        head_div_mode=tuple(cfg.head_div_mode), joint_tokens=cfg.joint_tokens,
        fused_attention=cfg.fused_attention, dytox=cfg.dytox, encoder=encoder,
        encoder_args=tuple(encoder_argument(text) for text in cfg.encoder_args or ()),
        class_attention=cfg.class_attention, norm=cfg.norm, exact_freeze=cfg.exact_freeze,
        extractor_per_task=cfg.method == "der",
    ))


def recipe_of(cfg: argparse.Namespace) -> RecipeSettings:
    """The recipe; ``--debug`` trains one epoch per task (its schedule spans one epoch) and one batch per
    epoch, finetuning included, as the published code's debug mode does."""
    if cfg.debug:
        return settings_of(RecipeSettings, cfg, base_epochs=1, epochs=1, batches_per_epoch=1)
    return settings_of(RecipeSettings, cfg)


def settings_from(cfg: argparse.Namespace) -> Settings:
    """The typed settings of one run (one class order) of a validated configuration."""
    check_runnable(cfg)
    if cfg.class_order and isinstance(cfg.class_order[0], list):
        raise ConfigError("class_order holds several orders: one run takes one order "
                          "(continual.train.orders runs each order of the list)")
    try:
        model = model_config(cfg)
    except ValueError as error:  # the architecture's own checks, e.g. embed_dim and num_heads
        raise ConfigError(f"model options: {error}") from error
    return Settings(
        model=model,
        data=settings_of(DataSettings, cfg),
        recipe=recipe_of(cfg),
        optimizer=settings_of(OptimizerSettings, cfg),
        schedule=settings_of(ScheduleSettings, cfg),
        loader=settings_of(LoaderSettings, cfg),
        loss=settings_of(LossSettings, cfg),
        mixup=settings_of(MixupSettings, cfg),
        sam=settings_of(SamSettings, cfg),
        memory=settings_of(MemorySettings, cfg),
        learner=settings_of(LearnerSettings, cfg),
        precision=PrecisionSettings(amp_enabled(cfg), cfg.amp_dtype, bool(cfg.amp and cfg.no_amp), cfg.compile,
                                     cfg.compile_backend),
        run=settings_of(RunSettings, cfg),
        options=config_to_dict(cfg),
    )
