"""Every check of a configuration, raising ConfigError (the notes that only inform are in ``notes``).

``parse_config`` runs ``validate_config`` (consistency); ``settings_from`` runs
``check_runnable`` (what this implementation runs); ``check_world_size`` needs
the number of processes and runs once when a run starts.
"""
from __future__ import annotations

import argparse

from continual.config.errors import ConfigError
from continual.config.options import record_violations
from continual.model.encoders import encoder_problem
from continual.vocabulary import BASELINE_FREEZE_NAMES, DYTOX_FREEZE_NAMES, TORCH_STEPPED_OPTIMISERS


def _check_records(cfg: argparse.Namespace) -> None:
    """Every value within its option record's bounds and choices (counts positive, budgets >= 0, names
    from their tables)."""
    problems = record_violations(cfg)
    if problems:
        raise ConfigError(problems[0])


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
    _check_records(cfg)
    _check_class_order(cfg)
    _check_run_request(cfg)
    chosen = [name for name in ("global_memory", "distributed_memory", "published_memory") if getattr(cfg, name)]
    if len(chosen) > 1:
        raise ConfigError(f"options {chosen} exclude each other: choose one memory mode")
    if cfg.grad_accum_steps > 1 and cfg.sam_rho > 0:
        raise ConfigError("options 'grad_accum_steps' > 1 and 'sam_rho' > 0 cannot be combined: "
                          "SAM's two passes are defined on one batch")
    _check_sam(cfg)
    if cfg.validation_test_transform and cfg.validation == 0.0:
        raise ConfigError("option 'validation_test_transform' needs validation > 0 (a held-out split)")
    _check_channels(cfg)
    _check_milestones(cfg)
    _check_opt_impl(cfg)


def _check_milestones(cfg: argparse.Namespace) -> None:
    """The multistep schedule decays at the epochs ``decay_milestones`` names; no other schedule reads them."""
    if cfg.sched == "multistep" and not cfg.decay_milestones:
        raise ConfigError("option 'sched' multistep needs decay_milestones: the epochs where the learning rate is "
                          "multiplied by decay_rate (e.g. --decay-milestones 49 63)")
    if cfg.decay_milestones and cfg.sched != "multistep":
        raise ConfigError(f"option 'decay_milestones' is read by sched multistep only, not {cfg.sched!r}")
    if list(cfg.decay_milestones) != sorted(set(cfg.decay_milestones)):
        raise ConfigError(f"option 'decay_milestones' must increase: {list(cfg.decay_milestones)}")


def _check_opt_impl(cfg: argparse.Namespace) -> None:
    """Only torch's own optimisers have a loop, a foreach and a fused step; timm's keep theirs (the default)."""
    if cfg.opt_impl not in ("auto", "foreach") and cfg.opt.lower() not in TORCH_STEPPED_OPTIMISERS:
        raise ConfigError(f"option 'opt_impl' {cfg.opt_impl} is for torch's {', '.join(TORCH_STEPPED_OPTIMISERS)}; "
                          f"opt {cfg.opt!r} steps its own way (leave opt_impl at auto)")


def _check_channels(cfg: argparse.Namespace) -> None:
    """``--mean`` and ``--std`` give one value per RGB channel."""
    for dest in ("mean", "std"):
        values = getattr(cfg, dest)
        if values is not None and len(values) != 3:
            raise ConfigError(f"option {dest!r} takes three values (R G B), got {len(values)}: {values}")


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


def encoder_of(cfg: argparse.Namespace) -> str:
    """The encoder the options name: ``encoder``, else resnet18 with ``resnet`` (DyTox), else ``model``."""
    if cfg.encoder is None:
        return "resnet18" if cfg.dytox and cfg.resnet else str(cfg.model)
    others = [flag for flag, differs in (("--resnet", cfg.resnet and cfg.encoder != "resnet18"),
                                         (f"--model {cfg.model}", cfg.model not in ("convit", cfg.encoder)))
              if differs]
    if others:
        raise ConfigError(f"option 'encoder' {cfg.encoder!r} and {others[0]} name different encoders: give one")
    return str(cfg.encoder)


def _check_encoder(cfg: argparse.Namespace, encoder: str) -> None:
    """A known encoder for the method; encoder arguments only where they are read; POD where there are maps."""
    if cfg.dytox and cfg.encoder is None and cfg.model != "convit":
        raise ConfigError(f"option 'model' {cfg.model!r}: DyTox's encoder is the ConViT (or --resnet); "
                          f"the ViT is the baseline's (dytox: false)")
    problem = encoder_problem(encoder, cfg.dytox)
    if problem is not None:
        raise ConfigError(problem)
    if cfg.encoder_args and encoder in ("convit", "resnet18", "vit", "resnet18_cifar"):
        raise ConfigError(f"option 'encoder_args' is read by timm and registered encoders; the {encoder} takes its "
                          f"sizes from the model options")
    if cfg.pretrained is not None and cfg.retrain_scratch:
        raise ConfigError("options 'pretrained' and 'retrain_scratch' exclude each other: joint training draws "
                          "every weight afresh at each task")


def _check_method(cfg: argparse.Namespace) -> None:
    """DyTox or the baseline: the encoders and freezing names each has."""
    encoder = encoder_of(cfg)
    if cfg.method == "wa" and cfg.dytox:
        raise ConfigError("--method wa aligns the rows of one growing classifier: give --no-dytox (the baseline's "
                          "network; options/model/baseline.yaml)")
    if cfg.method == "icarl" and cfg.dytox:
        raise ConfigError("--method icarl classifies by the nearest mean of one encoder's feature: give --no-dytox "
                          "(the baseline's network; options/model/baseline.yaml)")
    if cfg.method == "der" and cfg.dytox:
        raise ConfigError("--method der grows one baseline encoder per task: give --no-dytox (the baseline's "
                          "encoders; options/model/baseline.yaml)")
    if not cfg.dytox and cfg.resnet:
        raise ConfigError("option 'resnet' is DyTox's encoder (the published code ignores it without dytox)")
    _check_encoder(cfg, encoder)
    if cfg.dytox:
        names: tuple[str, ...] = DYTOX_FREEZE_NAMES
    else:
        if encoder == "vit" and cfg.norm != "layer":
            raise ConfigError("option 'norm' scale is for the ConViT blocks: the published ViT keeps LayerNorm")
        names = BASELINE_FREEZE_NAMES["timm" if encoder not in BASELINE_FREEZE_NAMES else encoder]
    mode = "DyTox" if cfg.dytox else f"the {encoder} baseline (dytox: false)"
    for dest in ("freeze_task", "freeze_ft"):
        unknown = [name for name in getattr(cfg, dest) if name not in names]
        if unknown:
            raise ConfigError(f"option {dest!r}: {unknown} are not parts of {mode}; expected names from "
                              f"{list(names)} (an empty list freezes nothing)")


def _check_pod(cfg: argparse.Namespace) -> None:
    """POD distils DyTox's encoder maps; the published token layout gives NaN at scales > 1."""
    if cfg.pod is None:
        return
    if not cfg.dytox:
        raise ConfigError("option 'pod' distils DyTox's encoder feature maps: the baseline has none "
                          "(the published code stops with an AttributeError)")
    encoder = encoder_of(cfg)
    if encoder not in ("convit", "resnet18"):
        raise ConfigError(f"option 'pod' distils the ConViT's SAB outputs or the ResNet's stages: encoder "
                          f"{encoder!r} gives tokens alone, no feature maps")
    if encoder == "convit" and cfg.local_up_to_layer < 2:
        raise ConfigError(f"option 'pod' distils every SAB's output but the last: it needs at least 2 SABs, "
                          f"local_up_to_layer is {cfg.local_up_to_layer} (the published code stops with an error)")
    if encoder == "convit" and not cfg.pod_tokens_as_maps and max(cfg.pod_scales) > 1:
        raise ConfigError(f"option 'pod_scales' {cfg.pod_scales}: on the ConViT's tokens the published layout "
                          f"pools the channels as a spatial axis and gives NaN at scales > 1; set "
                          f"pod_tokens_as_maps (--pod-tokens-as-maps) or pod_scales: [1]")


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
    if cfg.sam_first == "memory" and cfg.sam_second == "memory":
        raise ConfigError("options 'sam_first' and 'sam_second' cannot both be 'memory': "
                          "one of the two SAM passes uses the training batch")
    if cfg.look_sam_k > 0 and cfg.sam_first == "memory":
        raise ConfigError("look-SAM ('look_sam_k' > 0) takes its single passes on the training batch: "
                          "it cannot be combined with sam_first: memory")
