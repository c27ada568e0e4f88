"""Every check of a configuration, raising ConfigError.

``parse_config`` runs ``validate_config`` (consistency); ``settings_from`` runs
``check_runnable`` (what this implementation runs); ``check_world_size`` needs
the number of processes and runs once when a run starts.
"""
from __future__ import annotations

import argparse

from continual.config.errors import ConfigError
from continual.model.config import RESNET_EMBED_DIM, RESNET_NUM_HEADS
from continual.vocabulary import (
    BASELINE_FREEZE_NAMES,
    DYTOX_FREEZE_NAMES,
    FREEZE_NAMES,
    PHASE_OPTIONS,
    REHEARSAL_METHODS,
)

_POSITIVE = ("initial_increment", "increment", "batch_size", "grad_accum_steps", "world_size",
             "input_size", "embed_dim", "depth", "num_heads", "patch_size", "eval_every")
_NON_NEGATIVE = ("memory_size", "train_per_class", "num_workers", "epochs", "base_epochs",
                 "finetuning_epochs", "warmup_epochs", "start_task", "save_every_epoch",
                 "replay_memory", "look_sam_k", "sam_rho", "oversample_memory")
_AT_LEAST_ONE = ("oversample_memory_ft",)
_OPTIONAL_POSITIVE = ("incremental_batch_size", "max_task")
_NAME_LISTS = {"freeze_task": FREEZE_NAMES, "freeze_ft": FREEZE_NAMES,
               "head_div_mode": PHASE_OPTIONS, "sam_mode": PHASE_OPTIONS}


def _check_signs(cfg: argparse.Namespace) -> None:
    """Counts and sizes that must be positive, budgets that must be >= 0."""
    for dest in _POSITIVE:
        if getattr(cfg, dest) <= 0:
            raise ConfigError(f"option {dest!r} must be positive, got {getattr(cfg, dest)}")
    for dest in _NON_NEGATIVE:
        if getattr(cfg, dest) < 0:
            raise ConfigError(f"option {dest!r} must be >= 0, got {getattr(cfg, dest)}")
    for dest in _AT_LEAST_ONE:
        if getattr(cfg, dest) < 1:
            raise ConfigError(f"option {dest!r} must be >= 1, got {getattr(cfg, dest)}")
    for dest in _OPTIONAL_POSITIVE:
        value = getattr(cfg, dest)
        if value is not None and value <= 0:
            raise ConfigError(f"option {dest!r} must be positive when set, got {value}")


def _check_names(cfg: argparse.Namespace) -> None:
    """List options whose items must come from an explicit table."""
    for dest, table in _NAME_LISTS.items():
        unknown = [name for name in getattr(cfg, dest) if name not in table]
        if unknown:
            raise ConfigError(f"option {dest!r}: unknown name(s) {unknown}; "
                              f"expected names from {list(table)}")
    if cfg.rehearsal not in REHEARSAL_METHODS:
        raise ConfigError(f"option 'rehearsal': unknown method {cfg.rehearsal!r}; "
                          f"expected one of {list(REHEARSAL_METHODS)}")


def _check_one_order(order: list[int]) -> None:
    """A class order must be a permutation of 0..n-1 (no duplicate, no gap)."""
    duplicates = sorted({label for label in order if order.count(label) > 1})
    if duplicates:
        raise ConfigError(f"option 'class_order': duplicate classes {duplicates}")
    if sorted(order) != list(range(len(order))):
        raise ConfigError(f"option 'class_order': not a permutation of 0..{len(order) - 1}")


def _check_class_order(cfg: argparse.Namespace) -> None:
    """One order, or several orders (a list of lists), each a permutation."""
    if cfg.class_order is None:
        return
    if not cfg.class_order:
        raise ConfigError("option 'class_order': empty order")
    orders = cfg.class_order if isinstance(cfg.class_order[0], list) else [cfg.class_order]
    for order in orders:
        _check_one_order(order)
    lengths = sorted({len(order) for order in orders})
    if len(lengths) > 1:  # caught now rather than when a later order's run starts
        raise ConfigError(f"option 'class_order': the orders have different lengths {lengths}; "
                          f"each order must list every class of the dataset")


def validate_config(cfg: argparse.Namespace) -> None:
    """Check consistency between options; raise ConfigError naming the option(s)."""
    _check_signs(cfg)
    _check_names(cfg)
    _check_class_order(cfg)
    _check_run_request(cfg)
    chosen = [name for name in ("global_memory", "distributed_memory", "published_memory") if getattr(cfg, name)]
    if len(chosen) > 1:
        raise ConfigError(f"options {chosen} exclude each other: choose one memory mode")
    if cfg.grad_accum_steps > 1 and cfg.sam_rho > 0:
        raise ConfigError("options 'grad_accum_steps' > 1 and 'sam_rho' > 0 cannot be combined: "
                          "SAM's two passes are defined on one batch")
    _check_sam(cfg)
    if not 0.0 <= cfg.validation < 1.0:
        raise ConfigError(f"option 'validation' is the held-out fraction of each task, in [0, 1), got {cfg.validation}")
    if cfg.validation_test_transform and cfg.validation == 0.0:
        raise ConfigError("option 'validation_test_transform' needs validation > 0 (a held-out split)")


def check_runnable(cfg: argparse.Namespace) -> None:
    """Refuse the published options this implementation does not run yet. A configuration can be valid
    and not runnable: the parser's defaults are the published parser's, where dytox is off."""
    problems = []
    if cfg.dist_url != "env://":
        problems.append(f"--dist-url {cfg.dist_url!r}: processes join through torchrun's environment (env://)")
    if cfg.dytox and not cfg.class_attention:
        problems.append("DyTox's decoder is class attention: class_attention must be true")
    if problems:
        raise ConfigError("unsupported configuration: " + "; ".join(problems))
    _check_method(cfg)
    _check_pod(cfg)


def _check_method(cfg: argparse.Namespace) -> None:
    """DyTox or the baseline: the encoders and freezing names each has."""
    if cfg.dytox:
        if cfg.model != "convit":
            raise ConfigError(f"option 'model' {cfg.model!r}: DyTox's encoder is the ConViT (or --resnet); "
                              f"the ViT is the baseline's (dytox: false)")
        names: tuple[str, ...] = DYTOX_FREEZE_NAMES
    else:
        if cfg.resnet:
            raise ConfigError("option 'resnet' is DyTox's encoder (the published code ignores it without dytox)")
        if cfg.model == "vit" and cfg.norm != "layer":
            raise ConfigError("option 'norm' scale is for the ConViT blocks: the published ViT keeps LayerNorm")
        names = BASELINE_FREEZE_NAMES[cfg.model]
    mode = "DyTox" if cfg.dytox else f"the {cfg.model} baseline (dytox: false)"
    for dest in ("freeze_task", "freeze_ft"):
        unknown = [name for name in getattr(cfg, dest) if name not in names]
        if unknown:
            raise ConfigError(f"option {dest!r}: {unknown} are not parts of {mode}; expected names from "
                              f"{list(names)} (an empty list freezes nothing)")


def _check_pod(cfg: argparse.Namespace) -> None:
    """POD distils DyTox's encoder maps; the published token layout gives NaN at scales > 1."""
    if cfg.pod is None:
        return
    if cfg.pod < 0:
        raise ConfigError(f"option 'pod' is a loss weight, >= 0, got {cfg.pod}")
    if not cfg.dytox:
        raise ConfigError("option 'pod' distils DyTox's encoder feature maps: the baseline has none "
                          "(the published code stops with an AttributeError)")
    if not cfg.resnet and cfg.local_up_to_layer < 2:
        raise ConfigError(f"option 'pod' distils every SAB's output but the last: it needs at least 2 SABs, "
                          f"local_up_to_layer is {cfg.local_up_to_layer} (the published code stops with an error)")
    if any(scale < 1 for scale in cfg.pod_scales):
        raise ConfigError(f"option 'pod_scales' must be positive integers, got {cfg.pod_scales}")
    if not cfg.resnet and not cfg.pod_tokens_as_maps and max(cfg.pod_scales) > 1:
        raise ConfigError(f"option 'pod_scales' {cfg.pod_scales}: on the ConViT's tokens the published layout "
                          f"pools the channels as a spatial axis and gives NaN at scales > 1; set "
                          f"pod_tokens_as_maps (--pod-tokens-as-maps) or pod_scales: [1]")


def context_notes(cfg: argparse.Namespace) -> list[str]:
    """Options that the chosen mode does not read, so that a user does not believe they acted."""
    notes = []
    if not cfg.dytox:
        dytox_only = [f"{dest} {getattr(cfg, dest)!r}" for dest, unused in (
            ("head_div", cfg.head_div > 0), ("ind_clf", cfg.ind_clf not in ("", "1-1")),
        ) if unused]
        if dytox_only:
            notes.append(f"{', '.join(dytox_only)}: no effect without DyTox (the baseline has one classifier)")
    elif cfg.resnet:
        notes.append(f"--resnet: the decoder is one TAB of {RESNET_NUM_HEADS} heads on {RESNET_EMBED_DIM} channels, as "
                     f"published; embed_dim, "
                     f"num_heads, depth, local_up_to_layer, patch_size and the dropouts of the options are not used")
    if cfg.output_dir and cfg.name:
        notes.append(f"--output-dir {cfg.output_dir!r}: replaced by the run folder of --name {cfg.name!r}, "
                     f"as published")
    if cfg.pod is not None and not (cfg.auto_kd or cfg.kd > 0):
        notes.append("--pod: no effect without a teacher (auto_kd or kd > 0), as published")
    return notes


def _check_run_request(cfg: argparse.Namespace) -> None:
    """``--start-task`` and ``--eval`` work on one existing run folder."""
    orders = cfg.class_order if cfg.class_order and isinstance(cfg.class_order[0], list) else []
    taken = [flag for flag, used in (("--resume", bool(cfg.resume)), ("--start-task", bool(cfg.start_task)),
                                     ("--eval", cfg.eval)) if used]
    if len(orders) > 1 and taken:
        raise ConfigError(
            f"{', '.join(taken)} work(s) on one run folder, but class_order holds {len(orders)} orders: "
            f"use --auto-resume to continue each order's newest folder (<name>_order<i>), or give one order "
            f"with --class-order to resume or evaluate that order's folder")
    if cfg.start_task and not cfg.resume:
        raise ConfigError("--start-task needs --resume DIR (the run folder whose checkpoints to start from)")
    if cfg.eval and not cfg.resume:
        raise ConfigError("--eval needs --resume DIR (the run folder whose checkpoint to evaluate)")


def check_world_size(option: int, world_size: int) -> None:
    """``--world-size`` (``option``) may only repeat the number of processes torchrun started."""
    if option not in (1, world_size):
        raise ConfigError(f"--world-size {option} disagrees with the {world_size} process(es) torchrun "
                          f"started: the number of processes comes from train.sh / torchrun")


def _check_sam(cfg: argparse.Namespace) -> None:
    """SAM options only mean something with sam_rho > 0, and only in the combinations the paper uses."""
    if cfg.sam_rho == 0:
        set_without_rho = [name for name, is_set in (
            ("sam_adaptive", cfg.sam_adaptive), ("look_sam_k", cfg.look_sam_k > 0),
            ("sam_final", cfg.sam_final is not None), ("sam_skip_first", cfg.sam_skip_first),
            ("sam_first", cfg.sam_first != "main"), ("sam_second", cfg.sam_second != "main"),
        ) if is_set]
        if set_without_rho:
            raise ConfigError(f"option(s) {set_without_rho} need sharpness-aware minimisation: set sam_rho > 0")
        return
    if cfg.sam_final is not None and cfg.sam_final < 0:
        raise ConfigError(f"option 'sam_final' must be >= 0, got {cfg.sam_final}")
    if cfg.sam_first == "memory" and cfg.sam_second == "memory":
        raise ConfigError("options 'sam_first' and 'sam_second' cannot both be 'memory': "
                          "one of the two SAM passes uses the training batch")
    if cfg.look_sam_k > 0 and cfg.sam_first == "memory":
        raise ConfigError("look-SAM ('look_sam_k' > 0) takes its single passes on the training batch: "
                          "it cannot be combined with sam_first: memory")
