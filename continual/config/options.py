"""The option table: every option of the command line and of the YAML files, declared once.

The parser (``build_parser``) and the YAML checks (``continual.config.files``)
are both built from ``OPTION_GROUPS``, so they cannot disagree. The defaults
are the published parser's (pinned in tests/config/test_published_options.py).
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from continual.vocabulary import FREEZE_NAMES, HEAD_MODES, PHASE_OPTIONS, REHEARSAL_METHODS

NEVER_READ = "no effect: the published code parses it and never reads it"

# Explicit tables of accepted names: anything else is an error, never a fallback.
DATASETS = ("cifar", "imagenet100", "imagenet1000", "fashion_mnist", "digits")
ENCODERS = ("convit", "vit")
NORMS = ("layer", "scale")
SAM_BATCHES = ("main", "memory")
FINETUNING_MODES = ("", "balanced")
MIXUP_MODES = ("batch", "pair", "elem")

# --------------------------------------------------------------------------- #
# Value types shared by the command line and the YAML files
# --------------------------------------------------------------------------- #

def _lowercase(value: str) -> str:
    """Names such as datasets are matched case-insensitively (``CIFAR`` works)."""
    return str(value).lower()


def _optional_str(value: str) -> str | None:
    """``none`` (any case) unsets a string option, e.g. ``--aa none`` disables RandAugment."""
    text = str(value)
    return None if text.lower() == "none" else text


_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def _device(value: str) -> str:
    """Accept only device strings the runtime knows how to resolve."""
    text = str(value).lower()
    if not _DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return text


def _class_order_from_yaml(value: object) -> list[int] | list[list[int]]:
    """A YAML class order is one list of ints, or a list of such lists (several orders).

    The command line only takes one order (``--class-order 3 1 2 0``); files may
    list several, so this key gets its own check instead of argparse's.
    """
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of class indices, or a list of such lists")
    if all(isinstance(item, list) for item in value):
        return [_int_list(order) for order in value]
    return _int_list(value)


def _int_list(values: list[object]) -> list[int]:
    """Reject bools and floats, which Python would otherwise accept as ints."""
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"expected a non-empty list of integers, got {values!r}")
    return cast(list[int], list(values))


# --------------------------------------------------------------------------- #
# The option table
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Option:
    """One option: its parser declaration and how a YAML value for it is checked.

    ``type`` is None for booleans. ``nargs`` is '+' or '*' for lists.
    ``negatable`` False gives a plain ``--flag`` instead of ``--flag/--no-flag``
    (needed when ``--no-flag`` is already another option). ``yaml_value``
    replaces the generic YAML check for options whose file form differs from
    their command-line form. ``aliases`` are other spellings on the command line
    (the published scripts pass ``--num_workers``). ``no_effect`` marks options of
    the published command line that its code parses and never reads: they are
    accepted, and a run that sets one says that it has no effect.
    """

    dest: str
    default: object
    help: str
    type: Callable[[str], object] | None = None
    choices: tuple[object, ...] | None = None
    nargs: str | None = None
    nullable: bool = False
    negatable: bool = True
    yaml_value: Callable[[object], object] | None = None
    aliases: tuple[str, ...] = ()
    no_effect: bool = False

    @property
    def flag(self) -> str:
        """The command-line spelling: ``--`` + dest with dashes."""
        return "--" + self.dest.replace("_", "-")

    @property
    def accepts_null(self) -> bool:
        """YAML ``null`` is allowed when the option can be unset."""
        return self.nullable or self.default is None


def _bool(dest: str, default: bool | None, help: str, negatable: bool = True, **kwargs: Any) -> Option:
    """A boolean option (``--x`` / ``--no-x``); YAML gives true or false."""
    return Option(dest, default, help, negatable=negatable, **kwargs)


def _value(dest: str, type: Callable[[str], object], default: object, help: str,
           **kwargs: Any) -> Option:
    """A single-valued option."""
    return Option(dest, default, help, type=type, **kwargs)


def _list(dest: str, type: Callable[[str], object], default: object, help: str,
          nargs: str = "+", **kwargs: Any) -> Option:
    """A list option (``--x a b c``); YAML gives a list (a scalar is one item)."""
    return Option(dest, default, help, type=type, nargs=nargs, **kwargs)


RUN_OPTIONS = (
    _list("options", str, [], "YAML option files applied in order (later files win)"),
    _value("name", str, "", "run name, used in log and output paths"),
    _value("output_basedir", str, "./outputs", "where checkpoints and memories go"),
    _value("output_dir", str, "", "the run folder itself, without --name (as published, --name replaces it by "
           "a named folder under output_basedir)"),
    _value("log_dir", str, "./logs", "where metrics logs go", aliases=("--log-path",)),
    _value("log_category", str, "misc", "sub-folder of the logs, e.g. the setting 10-10"),
    _value("seed", int, 0, "random seed"),
    _value("device", _device, "auto", "auto, cpu, cuda or cuda:N"),
    _value("num_workers", int, 2, "data loader worker processes", aliases=("--num_workers",)),
    _bool("debug", False, "one epoch per task and one batch per epoch, finetuning included (the published --debug)"),
    _bool("pin_mem", True, "pin host memory in data loaders"),
    _bool("eval", False, "only evaluate a resumed model"),
    _value("eval_every", int, 50, "evaluate every N epochs within a task"),
    _value("max_task", int, None, "stop after this many tasks"),
    _value("save_every_epoch", int, 0, "also checkpoint every N epochs (0: at task ends only)"),
    _value("resume", str, "", "checkpoint directory to resume from"),
    _value("start_task", int, 0, "task to resume at"),
    _value("start_epoch", int, 0, NEVER_READ, no_effect=True),
    _bool("auto_resume", False, "resume from the latest checkpoint of this run if any"),
    _bool("deterministic", False, "request deterministic torch algorithms"),
    _bool("no_progress", False, "hide progress bars"),
    _bool("retain_freed_memory", True,
          "keep freed host memory for reuse (glibc): avoids a page fault per page of every large CPU tensor"),
    _bool("plots", True, "write PNG plots to the run folder after each task"),
    _bool("tensorboard", True, "write TensorBoard scalars under <run folder>/tensorboard"),
)

DATA_OPTIONS = (
    _value("data_set", _lowercase, "cifar", "dataset name", choices=DATASETS),
    _value("data_path", str, "./data", "dataset root folder"),
    _value("train_per_class", int, 0,
           "keep the first N training images of each class, in file order (0: all)"),
    _value("initial_increment", int, 10, "classes in the first task"),
    _value("increment", int, 10, "classes in each later task"),
    _list("class_order", int, None, "permutation of the class labels",
          yaml_value=_class_order_from_yaml),
    _value("input_size", int, 32, "image side after resizing, in pixels"),
    _value("validation", float, 0.0, "hold out this fraction of each task's training images and evaluate on them "
           "instead of the test set (0: the test set), as published"),
    _bool("validation_test_transform", False, "evaluate the held-out images with the test transform (published: "
          "the training augmentation)"),
)

MODEL_OPTIONS = (
    _value("model", str, "convit", "encoder: convit, or vit (timm's ViT; the baseline only)", choices=ENCODERS),
    _bool("resnet", False, "DyTox's encoder is a ResNet-18 (torchvision) whose 504-channel feature map gives the "
          "patch tokens, decoded by one TAB of 12 heads, as published", negatable=False),
    _value("embed_dim", int, 768, "token width"),
    _value("depth", int, 12, "number of blocks (encoder + decoder)"),
    _value("num_heads", int, 12, "attention heads"),
    _value("patch_size", int, 16, "patch side in pixels"),
    _value("mlp_ratio", float, 4.0, "MLP hidden width / embed_dim"),
    _bool("qkv_bias", False, "bias in the query/key/value projections"),
    _value("local_up_to_layer", int, 10, "number of encoder (SAB) blocks"),
    _value("locality_strength", float, 1.0, "GPSA local initialisation strength"),
    _bool("class_attention", False, "ConViT's blocks after the SABs are class attention (TABs; DyTox needs it); "
          "baseline: false is self-attention over [class token; patches]"),
    _value("drop", float, 0.0, "dropout rate"),
    _value("attn_drop", float, 0.0, "attention dropout rate"),
    _value("drop_path", float, 0.1, "stochastic depth rate"),
    _value("norm", str, "layer", "normalisation of the ConViT blocks: layer (LayerNorm) or scale (ScaleNorm)",
           choices=NORMS),
    _bool("fused_attention", True, "fast attention arithmetic (plain: the published step-by-step arithmetic)"),
    _bool("joint_tokens", True, "decode all task tokens in one masked pass (plain: one pass per task)"),
)

DYTOX_OPTIONS = (
    _bool("dytox", False, "dynamic task-token expansion; false (--no-dytox): the baseline, one classifier that grows "
          "by each task's classes, trained by the same loop"),
    _bool("exact_freeze", False, "baseline: each phase freezes exactly what freeze_task / freeze_ft name (published: "
          "what a phase froze stays frozen for every later task)"),
    _bool("retrain_scratch", False, "joint training: at each task the model is drawn afresh and trained on all the "
          "training images of the tasks seen so far"),
    _value("ind_clf", str, "1-1", "independent classifiers mode ('' for none)",
           choices=HEAD_MODES),
    _value("head_div", float, 0.0, "weight of the divergence head loss"),
    _list("head_div_mode", str, ["tr", "ft"], "phases using the divergence head",
          choices=PHASE_OPTIONS),
    _list("freeze_task", str, [], "what to freeze when a task is added (DyTox: all, old_task_tokens, task_tokens, "
          "sab, tab, old_heads, heads, head_div; baseline: all, backbone, sab, tab, heads)", nargs="*",
          choices=FREEZE_NAMES),
    _list("freeze_ft", str, [], "what to freeze during finetuning (the same names)", nargs="*",
          choices=FREEZE_NAMES),
    _bool("freeze_eval", False, NEVER_READ, no_effect=True),
)

OPTIMISER_OPTIONS = (
    _value("opt", str, "adamw", "optimiser name (timm)"),
    _value("opt_eps", float, 1e-8, "optimiser epsilon"),
    _list("opt_betas", float, None, "optimiser betas"),
    _value("clip_grad", float, None, "gradient norm clipping"),
    _value("momentum", float, 0.9, "SGD momentum"),
    _value("weight_decay", float, 0.05, "weight decay"),
    _value("sched", str, "cosine", "learning-rate schedule (timm)"),
    _value("lr", float, 5e-4, "base learning rate of the first task (before scaling)"),
    _value("incremental_lr", float, None, "base learning rate of later tasks (default: lr)"),
    _list("lr_noise", float, None, "learning-rate noise on/off epoch fractions"),
    _value("lr_noise_pct", float, 0.67, "learning-rate noise limit"),
    _value("lr_noise_std", float, 1.0, "learning-rate noise std"),
    _value("warmup_lr", float, 1e-6, "warm-up starting learning rate"),
    _value("incremental_warmup_lr", float, None, NEVER_READ,
           no_effect=True),
    _value("min_lr", float, 1e-5, "learning-rate floor"),
    _value("decay_epochs", float, 30.0, "epochs between step decays"),
    _value("warmup_epochs", int, 5, "warm-up epochs"),
    _value("cooldown_epochs", int, 10, "cool-down epochs"),
    _value("patience_epochs", int, 10, "plateau patience"),
    _value("decay_rate", float, 0.1, "step decay factor"),
    _bool("sched_step_fix", False,
          "step the schedule before each epoch (default: published off-by-one, SPEC §6b)"),
    _bool("sched_epochs_fix", False,
          "task 0's schedule spans base_epochs (default: epochs, as published, SPEC §6b)"),
    _value("batch_size", int, 128, "batch size per process of the first task"),
    _value("incremental_batch_size", int, None, "batch size of later tasks (default: batch_size)"),
    _value("epochs", int, 500, "epochs of each later task"),
    _value("base_epochs", int, 500, "epochs of the first task"),
    _value("grad_accum_steps", int, 1, "batches accumulated per optimiser step"),
    # --amp is not negatable: --no-amp is the published option below. no_amp is unset by default;
    # set to false (as the published ImageNet files do) it turns mixed precision on, as published.
    _bool("amp", False, "mixed precision (disabled anyway by --no-amp)", negatable=False),
    _bool("no_amp", None, "disable mixed precision; false (--no-no-amp, the published ImageNet files) "
          "enables it, as in the published code; unset: on only with --amp"),
    _value("amp_dtype", str, "auto", "autocast type with --amp: auto (float16 on CUDA, bfloat16 on CPU), "
           "float16 (CUDA only) or bfloat16", choices=("auto", "float16", "bfloat16")),
)

AUGMENTATION_OPTIONS = (
    _value("color_jitter", float, 0.4, "colour jitter strength"),
    _value("aa", _optional_str, "rand-m9-mstd0.5-inc1", "timm auto-augment policy, or none",
           nullable=True),
    _value("smoothing", float, 0.1, "label smoothing"),
    _value("train_interpolation", str, "bicubic", "resize interpolation"),
    _bool("repeated_aug", True, "repeated-augmentation sampler (3 repeats)"),
    _value("reprob", float, 0.25, "random erasing probability"),
    _value("remode", str, "pixel", "random erasing mode"),
    _value("recount", int, 1, "random erasing count"),
    _bool("resplit", False, NEVER_READ, no_effect=True),
)

MIXUP_OPTIONS = (
    _value("mixup", float, 0.8, "MixUp alpha (0: off)"),
    _value("cutmix", float, 1.0, "CutMix alpha (0: off)"),
    _list("cutmix_minmax", float, None, "CutMix min/max box ratio"),
    _value("mixup_prob", float, 1.0, "probability of mixing a batch"),
    _value("mixup_switch_prob", float, 0.5, "probability of CutMix instead of MixUp"),
    _value("mixup_mode", str, "batch", "how mixing parameters are drawn", choices=MIXUP_MODES),
)

DISTILLATION_OPTIONS = (
    _bool("auto_kd", False, "weight distillation by old classes / seen classes"),
    _value("kd", float, 0.0, "fixed distillation weight"),
    _value("distillation_tau", float, 1.0, "distillation temperature"),
    _bool("bce_loss", False, "binary cross-entropy classification loss"),
    _value("pod", float, None, "weight of PODNet's spatial distillation of the encoder's feature maps (DyTox, "
           "after the first task, with a teacher)"),
    _list("pod_scales", int, [1], "POD pyramid scales"),
    _bool("pod_scaling", False, "POD weight times sqrt(new classes / seen classes)", negatable=False),
    _bool("pod_tokens_as_maps", False, "POD pools the ConViT's tokens over the patch grid (published: over the "
          "grid's rows and the channels, where scales > 1 give NaN)"),
)

SAM_OPTIONS = (
    _value("sam_rho", float, 0.0, "SAM neighbourhood radius (0: off)"),
    _bool("sam_adaptive", False, "adaptive SAM (ASAM)"),
    _value("sam_first", str, "main", "batch of SAM's first step", choices=SAM_BATCHES),
    _value("sam_second", str, "main", "batch of SAM's second step", choices=SAM_BATCHES),
    _bool("sam_skip_first", False, "no SAM on the first task"),
    _value("sam_final", float, None, "SAM radius at the last task (linear from sam_rho)"),
    _list("sam_mode", str, ["tr", "ft"], "phases using SAM", choices=PHASE_OPTIONS),
    _value("look_sam_k", int, 0, "look-SAM: full SAM step every k steps (0: off)"),
    _value("look_sam_alpha", float, 0.7, "look-SAM: weight of the stored SAM direction between full steps"),
    _value("sam_div", str, "", "no effect: the published SAM stores it and never reads it", no_effect=True),
)

REHEARSAL_OPTIONS = (
    _value("memory_size", int, 0, "total rehearsal memory budget (images)"),
    _bool("fixed_memory", False, "per-class memory fixed from the start"),
    _value("rehearsal", str, "random", "exemplar selection method", choices=REHEARSAL_METHODS),
    _bool("rehearsal_test_trsf", False, "extract exemplar features with the test transform"),
    _bool("sep_memory", False, "keep the memory out of the task's training data (SAM's memory passes still use it)"),
    _bool("distributed_memory", False,
          "each process selects its own memory_size / world_size exemplars (the erratum's protocol)"),
    _bool("global_memory", False, "one selection of memory_size exemplars, identical on every process"),
    _bool("published_memory", False,
          "each process selects its own memory_size exemplars, as the published code did (the default "
          "with several processes)"),
    _value("replay_memory", int, 0, "batch size of the memory loader of SAM's memory passes (0: the task's)"),
    _value("oversample_memory", int, 1, "the memory is added this many times to a task's training data"),
    _value("rehearsal_modes", int, 1, "2: each class's exemplars are two selections of half the quota, as published",
           choices=(1, 2)),
)

FINETUNING_OPTIONS = (
    _value("finetuning", str, "", "finetuning after each task ('' or balanced)",
           choices=FINETUNING_MODES),
    _value("finetuning_epochs", int, 30, "finetuning epochs"),
    _value("finetuning_lr", float, 5e-5, "finetuning base learning rate (before scaling)"),
    _bool("finetuning_teacher", False, "distil from the teacher during finetuning"),
    _bool("ft_no_sampling", False, "read the memory in class order, unshuffled"),
    _value("oversample_memory_ft", int, 1, "finetuning repeats each exemplar of the old tasks this many times"),
    _bool("finetuning_resetclf", False, "draw the task heads again before finetuning"),
    _bool("only_ft", False, "after the first task, train on the balanced memory only (no new task data)"),
)

DISTRIBUTED_OPTIONS = (
    _value("dist_url", str, "env://", "process-group initialisation URL", aliases=("--dist_url",)),
    _value("world_size", int, 1, "number of processes", aliases=("--world_size",)),
    _bool("dist_eval", False, "no effect: evaluation is always shared by the processes, each image on one",
          no_effect=True),
    _value("local_rank", int, None, "no effect: torchrun gives each process its LOCAL_RANK", aliases=("--local_rank",),
           no_effect=True),
)

OPTION_GROUPS: dict[str, tuple[Option, ...]] = {
    "run": RUN_OPTIONS,
    "data": DATA_OPTIONS,
    "model": MODEL_OPTIONS,
    "method (DyTox or the baseline)": DYTOX_OPTIONS,
    "optimiser and schedule": OPTIMISER_OPTIONS,
    "augmentation": AUGMENTATION_OPTIONS,
    "mixup": MIXUP_OPTIONS,
    "distillation": DISTILLATION_OPTIONS,
    "SAM": SAM_OPTIONS,
    "rehearsal": REHEARSAL_OPTIONS,
    "finetuning": FINETUNING_OPTIONS,
    "distributed": DISTRIBUTED_OPTIONS,
}


def _index_options() -> dict[str, Option]:
    """dest -> Option, refusing a dest declared twice."""
    index: dict[str, Option] = {}
    for options in OPTION_GROUPS.values():
        for option in options:
            if option.dest in index:
                raise AssertionError(f"option {option.dest!r} declared twice")
            index[option.dest] = option
    return index


OPTIONS: dict[str, Option] = _index_options()


# --------------------------------------------------------------------------- #
# Parser
# --------------------------------------------------------------------------- #

class _BooleanAction(argparse.BooleanOptionalAction):
    """``--x`` / ``--no-x`` that also works for options named ``no_*``.

    argparse's own action sets False for any flag starting with ``--no-``, so
    ``--no-amp`` (the published option) would *clear* ``no_amp``. Here only
    the generated negative flag sets False.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, option_string == self.option_strings[0])


class _ArgumentAdder(Protocol):
    """A parser or an argument group: anything with ``add_argument``."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action: ...


def _add_option(group: _ArgumentAdder, option: Option) -> None:
    """Declare one table entry on the parser."""
    if option.type is None:
        action = _BooleanAction if option.negatable else "store_true"
        group.add_argument(option.flag, dest=option.dest, action=action,
                           default=option.default, help=option.help)
        return
    group.add_argument(option.flag, *option.aliases, dest=option.dest, type=option.type,
                       default=option.default, help=option.help,
                       choices=option.choices, nargs=option.nargs)


def build_parser() -> argparse.ArgumentParser:
    """A fresh parser with every option, grouped by family.

    Abbreviations are off: ``--opt`` must never be read as ``--options``.
    """
    parser = argparse.ArgumentParser(
        prog="main.py", allow_abbrev=False,
        description="DyTox: transformers for continual learning with dynamic token expansion.",
    )
    for title, options in OPTION_GROUPS.items():
        group = parser.add_argument_group(title)
        for option in options:
            _add_option(group, option)
    return parser


# Options accepted for the published command line that change nothing (they may differ on a resume).
NO_EFFECT_OPTIONS = frozenset(dest for dest, option in OPTIONS.items() if option.no_effect)


def no_effect_notes(cfg: argparse.Namespace) -> list[str]:
    """One line per option set that has no effect, so that a user does not believe it acted."""
    return [f"{OPTIONS[dest].flag} {getattr(cfg, dest)!r}: {OPTIONS[dest].help}" for dest in sorted(NO_EFFECT_OPTIONS)
            if getattr(cfg, dest) != OPTIONS[dest].default]
