"""The option table: one record per option, from which everything else about it is derived.

Each ``Option`` holds an option's group, help, type, default, bounds, choices,
whether it may change on a resume and whether it has no effect. The parser and
``--help`` (``continual.config.parser``), the YAML checks
(``continual.config.files``), the bounds check (``continual.config.validate``),
the resume rule (``config_differences``) and ``docs/options.md``
(``scripts/options_doc.py``) all read these records, so they cannot disagree.
The defaults are the published parser's (pinned in tests/config/test_published_options.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import yaml

from continual.vocabulary import FREEZE_NAMES, HEAD_MODES, OPT_IMPLEMENTATIONS, PHASE_OPTIONS, REHEARSAL_METHODS

NEVER_READ = "no effect: the published code parses it and never reads it"

# Explicit tables of accepted names: anything else is an error, never a fallback.
DATASETS = ("cifar", "imagenet100", "imagenet1000", "fashion_mnist", "digits", "cifar10", "imagefolder",
            "tinyimagenet200", "imagenet_r")
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


_SCALARS = (int, float, bool, str)


def encoder_argument(text: str) -> tuple[str, object]:
    """``key=value`` -> (key, value), the value read as YAML: ``2`` an int, ``0.1`` a float, ``true`` a bool,
    anything else text; a YAML list of such values (``[1, 1]``) is a tuple."""
    key, equals, value = str(text).partition("=")
    if not equals or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected key=value with a Python name as key, got {text!r}")
    parsed = yaml.safe_load(value) if value else ""
    if isinstance(parsed, list) and all(isinstance(item, _SCALARS) for item in parsed):
        return key, tuple(parsed)
    if not isinstance(parsed, _SCALARS):
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be an int, a float, a bool or text (or a list "
                                         f"of them), got {type(parsed).__name__}")
    return key, parsed


def _encoder_argument_text(text: str) -> str:
    """A checked ``key=value``, kept as text (so config.yaml shows it as given)."""
    encoder_argument(text)
    return str(text)


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
# The record of an option
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Bounds:
    """The values a number may take: ``low`` .. ``high``, each end included unless marked open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: object) -> bool:
        number = cast(float, value)
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            return False
        return self.high is None or not (number > self.high or (self.high_open and number == self.high))

    def __str__(self) -> str:
        """``>= 1``, ``> 0``, ``[0, 1)``: how the docs and the errors state it."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Bounds(1)  # counts and sizes (integers)
NON_NEGATIVE = Bounds(0)
ABOVE_ZERO = Bounds(0, low_open=True)
RATE = Bounds(0, 1)  # probabilities and drop rates
FRACTION = Bounds(0, 1, high_open=True)


@dataclass(frozen=True)
class Option:
    """One option: how it is parsed, checked, documented and treated on a resume.

    ``type`` is None for booleans. ``nargs`` is '+' or '*' for lists; ``bounds`` then
    holds for every item. ``negatable`` False gives a plain ``--flag`` instead of
    ``--flag/--no-flag``. ``resets`` names options that this one, given on the
    command line, puts back to their default: two spellings of one switch, where
    the last one given wins (``--amp`` / the published ``--no-amp``). ``yaml_value``
    replaces the generic YAML check for options whose file form differs from their
    command-line form. ``aliases`` are other spellings on the command line (the
    published scripts pass ``--num_workers``). ``resume_safe``: the option may
    differ when a run is resumed (where files go, how often things are reported);
    every other option must be the saved run's. ``no_effect``: the published code
    parses the option and never reads it; it is accepted, a run that sets it says
    so (``help`` says why), and it may differ on a resume. ``group`` is the heading
    it is listed under, filled in from ``OPTION_GROUPS``.
    """

    dest: str
    default: object
    help: str
    type: Callable[[str], object] | None = None
    choices: tuple[object, ...] | None = None
    nargs: str | None = None
    bounds: Bounds | None = None
    nullable: bool = False
    negatable: bool = True
    resets: tuple[str, ...] = ()
    yaml_value: Callable[[object], object] | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    resume_safe: bool = False
    no_effect: bool = False
    group: str = ""

    @property
    def flag(self) -> str:
        """The command-line spelling: ``--`` + dest with dashes."""
        return "--" + self.dest.replace("_", "-")

    @property
    def flags(self) -> tuple[str, ...]:
        """Every command-line spelling, the negative one of a boolean included."""
        if self.type is None and self.negatable:
            return (self.flag, "--no-" + self.flag[2:])
        return (self.flag, *self.aliases)

    @property
    def accepts_null(self) -> bool:
        """YAML ``null`` is allowed when the option can be unset."""
        return self.nullable or self.default is None

    @property
    def may_change_on_resume(self) -> bool:
        return self.resume_safe or self.no_effect


def _bool(dest: str, default: bool | None, help: str, negatable: bool = True, **kwargs: Any) -> Option:
    """A boolean option (``--x`` / ``--no-x``); YAML gives true or false."""
    return Option(dest, default, help, negatable=negatable, **kwargs)


def _value(dest: str, type: Callable[[str], object], default: object, help: str, **kwargs: Any) -> Option:
    """A single-valued option."""
    return Option(dest, default, help, type=type, **kwargs)


def _list(dest: str, type: Callable[[str], object], default: object, help: str, nargs: str = "+",
          **kwargs: Any) -> Option:
    """A list option (``--x a b c``); YAML gives a list (a scalar is one item)."""
    return Option(dest, default, help, type=type, nargs=nargs, **kwargs)


# --------------------------------------------------------------------------- #
# The option table
# --------------------------------------------------------------------------- #

RUN_OPTIONS = (
    _list("options", str, [], "YAML option files applied in order (later files win; command-line flags win over "
          "every file)", metavar="FILE", resume_safe=True),
    _value("name", str, "", "run name, the end of the run folder's name", metavar="NAME", resume_safe=True),
    _value("output_basedir", str, "./outputs", "where run folders (checkpoints, memory, logs) go", metavar="DIR",
           resume_safe=True),
    _value("output_dir", str, "", "the run folder itself, without --name (as published, --name replaces it by "
           "a named folder under output_basedir)", metavar="DIR"),
    _value("log_dir", str, "./logs", "where a copy of each run's log.jsonl goes", aliases=("--log-path",),
           metavar="DIR", resume_safe=True),
    _value("log_category", str, "misc", "sub-folder of the run folders and logs, e.g. the setting 10-10",
           metavar="NAME"),
    _value("seed", int, 0, "random seed (each process adds its rank)"),
    _value("device", _device, "auto", "auto, cpu, cuda or cuda:N", metavar="DEVICE", resume_safe=True),
    _value("num_workers", int, 2, "data loader worker processes (the results do not depend on it)",
           aliases=("--num_workers",), bounds=NON_NEGATIVE, resume_safe=True),
    _bool("debug", False, "one epoch per task and one batch per epoch, finetuning included (the published --debug)"),
    _bool("pin_mem", True, "pin host memory in data loaders (on CUDA only; the batches are then copied to the "
          "GPU without blocking)", resume_safe=True),
    _bool("persistent_workers", True, "keep the training loader's workers from one epoch of a phase to the next "
          "(ended when the phase ends); the results do not depend on it; unused with --num-workers 0",
          resume_safe=True),
    _value("prefetch_factor", int, 2, "batches each loader worker prepares ahead (torch's default 2); unused with "
           "--num-workers 0, where the main process reads each batch when the step asks for it",
           bounds=POSITIVE, resume_safe=True, metavar="N"),
    _bool("eval", False, "only evaluate the checkpoint of a run folder (with --resume DIR)", resume_safe=True),
    _value("eval_every", int, 50, "also evaluate every N epochs within a task", bounds=POSITIVE, resume_safe=True),
    _value("max_task", int, None, "stop after this many tasks (unset: all)", bounds=POSITIVE, resume_safe=True),
    _value("save_every_epoch", int, 0, "also save the run state every N epochs (0: at phase ends only)",
           bounds=NON_NEGATIVE, resume_safe=True),
    _value("resume", str, "", "run folder to continue (or to evaluate with --eval)", metavar="DIR", resume_safe=True),
    _value("start_task", int, 0, "with --resume: restart at this task from the model and memory saved after the "
           "previous one", bounds=NON_NEGATIVE, resume_safe=True),
    _value("start_epoch", int, 0, NEVER_READ, no_effect=True),
    _bool("auto_resume", False, "continue the newest run folder of this --name if any, else start one",
          resume_safe=True),
    _bool("deterministic", False, "deterministic torch algorithms (a run killed and resumed then ends bit for bit "
          "like an uninterrupted one on the CPU)"),
    _bool("progress", True, "progress bars, on a terminal, main process only", resume_safe=True),
    _bool("retain_freed_memory", True,
          "keep freed host memory for reuse (glibc): avoids a page fault per page of every large CPU tensor",
          resume_safe=True),
    _bool("plots", True, "write PNG plots to the run folder after each task", resume_safe=True),
    _bool("tensorboard", True, "write TensorBoard scalars under <run folder>/tensorboard", resume_safe=True),
)

DATA_OPTIONS = (
    _value("data_set", _lowercase, "cifar", "dataset name", choices=DATASETS),
    _value("data_path", str, "./data", "dataset root folder", metavar="DIR", resume_safe=True),
    _value("train_per_class", int, 0, "keep the first N training images of each class, in file order (0: all)",
           bounds=NON_NEGATIVE),
    _value("initial_increment", int, 10, "classes in the first task", bounds=POSITIVE),
    _value("increment", int, 10, "classes in each later task", bounds=POSITIVE),
    _list("class_order", int, None, "permutation of the class labels (a file may list several orders)",
          yaml_value=_class_order_from_yaml, metavar="CLASS"),
    _value("input_size", int, 32, "image side after resizing, in pixels", bounds=POSITIVE),
    _list("mean", float, None, "per-channel mean (R G B, in [0, 1] units) of the normalisation, instead of the "
          "dataset's (imagefolder: ImageNet's)", metavar="V"),
    _list("std", float, None, "per-channel standard deviation (R G B) of the normalisation, instead of the "
          "dataset's", bounds=ABOVE_ZERO, metavar="V"),
    _value("validation", float, 0.0, "hold out this fraction of each task's training images and evaluate on them "
           "instead of the test set (0: the test set), as published", bounds=FRACTION),
    _bool("validation_test_transform", False, "evaluate the held-out images with the test transform (published: "
          "the training augmentation)"),
)

MODEL_OPTIONS = (
    _value("model", str, "convit", "encoder: convit, or vit (timm's ViT; the baseline only)", choices=ENCODERS),
    _bool("resnet", False, "DyTox's encoder is a ResNet-18 (torchvision) whose 504-channel feature map gives the "
          "patch tokens, decoded by one TAB of 12 heads, as published", negatable=False),
    _value("encoder", str, None, "the encoder, in place of model / resnet: convit, resnet18 (DyTox), vit or "
           "resnet18_cifar (the baseline's; resnet18_cifar: the CIFAR baselines' ResNet-18, 3x3 stem, no max-pool) "
           "or timm:NAME, any timm model (pretrained=False, num_classes=0; DyTox decodes its tokens, the baseline "
           "classifies its pooled feature)", metavar="NAME"),
    _list("encoder_args", _encoder_argument_text, None, "keyword arguments of a timm encoder's create_model, as "
          "key=value, the value read as YAML (2, 0.1, true, text, [1, 1]); e.g. depth=2", metavar="KEY=VALUE"),
    _value("pretrained", str, None, "load the encoder's weights from this local file before task 0: a state dict "
           "of the encoder, a timm checkpoint or a published DyTox checkpoint (its sha256 is recorded; a resume "
           "must give the same file, same content)", metavar="FILE"),
    _value("embed_dim", int, 768, "token width", bounds=POSITIVE),
    _value("depth", int, 12, "number of blocks (encoder + decoder)", bounds=POSITIVE),
    _value("num_heads", int, 12, "attention heads", bounds=POSITIVE),
    _value("patch_size", int, 16, "patch side in pixels", bounds=POSITIVE),
    _value("mlp_ratio", float, 4.0, "MLP hidden width / embed_dim", bounds=ABOVE_ZERO),
    _bool("qkv_bias", False, "bias in the query/key/value projections"),
    _value("local_up_to_layer", int, 10, "number of encoder (SAB) blocks", bounds=NON_NEGATIVE),
    _value("locality_strength", float, 1.0, "GPSA local initialisation strength"),
    _bool("class_attention", False, "ConViT's blocks after the SABs are class attention (TABs; DyTox needs it); "
          "baseline: false is self-attention over [class token; patches]"),
    _value("drop", float, 0.0, "dropout rate", bounds=RATE),
    _value("attn_drop", float, 0.0, "attention dropout rate", bounds=RATE),
    _value("drop_path", float, 0.1, "stochastic depth rate (of the last block; linear from 0)", bounds=RATE),
    _value("norm", str, "layer", "normalisation of the ConViT blocks: layer (LayerNorm) or scale (ScaleNorm)",
           choices=NORMS),
    _bool("fused_attention", True, "fast attention arithmetic (off: the published step-by-step arithmetic)"),
    _bool("joint_tokens", True, "decode all task tokens in one masked pass (off: one pass per task, as published)"),
)

DYTOX_OPTIONS = (
    _value("method", _lowercase, "dytox", "the continual-learning method, a name of continual/method/registry.py: "
           "dytox (DyTox; with --no-dytox the baseline of its ablation), er (experience replay: the memory and "
           "cross-entropy; no teacher, no finetuning), wa (weight aligning, Zhao et al. 2020, with --no-dytox: "
           "distillation, the new classes' weights aligned to the old ones', non-negative weights), icarl (iCaRL, "
           "Rebuffi et al. 2017, with --no-dytox: sigmoid cross-entropy distilling the old classes, the nearest mean "
           "of exemplars) or der (DER, Yan et al. 2021, with --no-dytox: a new encoder per task, the old ones frozen, "
           "an auxiliary classifier, balanced finetuning of the classifier)",
           metavar="NAME"),
    _bool("dytox", False, "dynamic task-token expansion; off (--no-dytox): the baseline, one classifier that grows "
          "by each task's classes, trained by the same loop"),
    _bool("exact_freeze", False, "baseline: each phase freezes exactly what freeze_task / freeze_ft name (published: "
          "what a phase froze stays frozen for every later task)"),
    _bool("retrain_scratch", False, "joint training: at each task the model is drawn afresh and trained on all the "
          "training images of the tasks seen so far"),
    _value("ind_clf", str, "1-1", "independent classifiers mode ('' for one head over all task embeddings)",
           choices=HEAD_MODES),
    _value("head_div", float, 0.0, "weight of the divergence head's loss (0: no divergence head)",
           bounds=NON_NEGATIVE),
    _list("head_div_mode", str, ["tr", "ft"], "phases using the divergence head (tr: training, ft: finetuning)",
          choices=PHASE_OPTIONS),
    _list("freeze_task", str, [], "what to freeze when a task is added (DyTox: all, old_task_tokens, task_tokens, "
          "sab, tab, old_heads, heads, head_div; baseline: all, backbone, sab, tab, heads)", nargs="*",
          choices=FREEZE_NAMES, metavar="PART"),
    _list("freeze_ft", str, [], "what to freeze during finetuning (the same names)", nargs="*",
          choices=FREEZE_NAMES, metavar="PART"),
    _bool("freeze_eval", False, NEVER_READ, no_effect=True),
)

OPTIMISER_OPTIONS = (
    _value("opt", str, "adamw", "optimiser name (timm's create_optimizer_v2)"),
    _value("opt_impl", str, "auto", "how torch's adam, adamw, sgd, momentum and nesterov step: foreach (one "
           "multi-tensor operation per update term, the same numbers as loop), loop (one parameter at a time, as "
           "the published code), fused (one kernel, no host reads; rounding differs in the last bit), auto "
           "(fused on CUDA, foreach elsewhere)", choices=OPT_IMPLEMENTATIONS),
    _value("opt_eps", float, 1e-8, "optimiser epsilon", bounds=NON_NEGATIVE),
    _list("opt_betas", float, None, "optimiser betas (unset: the optimiser's)"),
    _value("clip_grad", float, None, "gradient norm clipping (unset: none)", bounds=NON_NEGATIVE),
    _value("momentum", float, 0.9, "SGD momentum", bounds=NON_NEGATIVE),
    _value("weight_decay", float, 0.05, "weight decay", bounds=NON_NEGATIVE),
    _value("sched", str, "cosine", "learning-rate schedule (timm's create_scheduler_v2)"),
    _value("lr", float, 5e-4, "base learning rate of the first task (scaled by the global batch / 512)",
           bounds=NON_NEGATIVE),
    _value("incremental_lr", float, None, "base learning rate of later tasks (unset: lr)", bounds=NON_NEGATIVE),
    _list("lr_noise", float, None, "learning-rate noise on/off epoch fractions"),
    _value("lr_noise_pct", float, 0.67, "learning-rate noise limit"),
    _value("lr_noise_std", float, 1.0, "learning-rate noise std"),
    _value("warmup_lr", float, 1e-6, "warm-up starting learning rate", bounds=NON_NEGATIVE),
    _value("incremental_warmup_lr", float, None, NEVER_READ, no_effect=True),
    _value("min_lr", float, 1e-5, "learning-rate floor", bounds=NON_NEGATIVE),
    _value("decay_epochs", float, 30.0, "epochs between step decays"),
    _list("decay_milestones", int, [], "epochs at which the multistep schedule (sched: multistep) multiplies the "
          "learning rate by decay_rate", bounds=NON_NEGATIVE),
    _value("warmup_epochs", int, 5, "warm-up epochs", bounds=NON_NEGATIVE),
    _value("cooldown_epochs", int, 10, "cool-down epochs", bounds=NON_NEGATIVE),
    _value("patience_epochs", int, 10, "plateau patience", bounds=NON_NEGATIVE),
    _value("decay_rate", float, 0.1, "step decay factor"),
    _bool("sched_step_fix", False, "epoch e trains at the schedule's value for e (published: for e - 1)"),
    _bool("sched_epochs_fix", False, "task 0's schedule spans base_epochs (published: epochs)"),
    _value("batch_size", int, 128, "batch size per process of the first task", bounds=POSITIVE),
    _value("incremental_batch_size", int, None, "batch size per process of later tasks (unset: batch_size)",
           bounds=POSITIVE),
    _value("epochs", int, 500, "epochs of each later task", bounds=NON_NEGATIVE),
    _value("base_epochs", int, 500, "epochs of the first task", bounds=NON_NEGATIVE),
    _value("grad_accum_steps", int, 1, "batches accumulated per optimiser step", bounds=POSITIVE),
    # One switch, two spellings: the last of --amp / --no-amp on the command line wins, and either wins over the
    # files. In a file, no_amp: true (the published CIFAR files) is float32 and no_amp: false (the published
    # ImageNet files) mixed precision, as published; unset, mixed precision is on only with amp.
    _bool("amp", False, "mixed precision: bfloat16 autocast on the CPU, float16 with loss scaling on CUDA",
          negatable=False, resets=("no_amp",)),
    _bool("no_amp", None, "float32 (the published option; in a file, no_amp: false turns mixed precision on, as "
          "in the published ImageNet files)", negatable=False, resets=("amp",)),
    _value("amp_dtype", str, "auto", "autocast type with mixed precision: auto (float16 on CUDA, bfloat16 on CPU), "
           "float16 (CUDA only) or bfloat16", choices=("auto", "float16", "bfloat16")),
    _bool("compile", False, "torch.compile the model each phase trains, compiled again after each growth (random "
          "draws as in eager mode: the same numbers, faster steps once compiled)", resume_safe=True),
    _value("compile_backend", str, "inductor", "torch.compile backend with --compile (aot_eager traces without "
           "generating code, to check a model compiles)", choices=("inductor", "aot_eager", "eager"),
           resume_safe=True),
)

AUGMENTATION_OPTIONS = (
    _value("color_jitter", float, 0.4, "colour jitter strength (dropped by timm when RandAugment is set)",
           bounds=NON_NEGATIVE),
    _value("aa", _optional_str, "rand-m9-mstd0.5-inc1", "timm auto-augment policy, or none", nullable=True,
           metavar="POLICY"),
    _value("smoothing", float, 0.1, "label smoothing", bounds=FRACTION),
    _value("train_interpolation", str, "bicubic", "resize interpolation"),
    _bool("repeated_aug", True, "repeated-augmentation sampler (3 repeats; off: a shuffled sampler)"),
    _value("reprob", float, 0.25, "random erasing probability", bounds=RATE),
    _value("remode", str, "pixel", "random erasing mode"),
    _value("recount", int, 1, "random erasing count", bounds=NON_NEGATIVE),
    _bool("resplit", False, NEVER_READ, no_effect=True),
)

MIXUP_OPTIONS = (
    _value("mixup", float, 0.8, "MixUp alpha (0: off)", bounds=NON_NEGATIVE),
    _value("cutmix", float, 1.0, "CutMix alpha (0: off)", bounds=NON_NEGATIVE),
    _list("cutmix_minmax", float, None, "CutMix min/max box ratio", bounds=RATE),
    _value("mixup_prob", float, 1.0, "probability of mixing a batch", bounds=RATE),
    _value("mixup_switch_prob", float, 0.5, "probability of CutMix instead of MixUp", bounds=RATE),
    _value("mixup_mode", str, "batch", "how mixing parameters are drawn", choices=MIXUP_MODES),
)

DISTILLATION_OPTIONS = (
    _bool("auto_kd", False, "weight distillation by old classes / seen classes"),
    _value("kd", float, 0.0, "fixed distillation weight", bounds=NON_NEGATIVE),
    _value("distillation_tau", float, 1.0, "distillation temperature", bounds=ABOVE_ZERO),
    _bool("bce_loss", False, "binary cross-entropy classification loss (off: cross-entropy)"),
    _value("pod", float, None, "weight of PODNet's spatial distillation of the encoder's feature maps (DyTox, "
           "after the first task, with a teacher; unset: off)", bounds=NON_NEGATIVE),
    _list("pod_scales", int, [1], "POD pyramid scales", bounds=POSITIVE),
    _bool("pod_scaling", False, "POD weight times sqrt(new classes / seen classes)", negatable=False),
    _bool("pod_tokens_as_maps", False, "POD pools the ConViT's tokens over the patch grid (published: over the "
          "grid's rows and the channels, where scales > 1 give NaN)"),
)

SAM_OPTIONS = (
    _value("sam_rho", float, 0.0, "SAM neighbourhood radius (0: off)", bounds=NON_NEGATIVE),
    _bool("sam_adaptive", False, "adaptive SAM (ASAM)"),
    _value("sam_first", str, "main", "batch of SAM's first step", choices=SAM_BATCHES),
    _value("sam_second", str, "main", "batch of SAM's second step", choices=SAM_BATCHES),
    _bool("sam_skip_first", False, "no SAM on the first task"),
    _value("sam_final", float, None, "SAM radius at the last task (linear from sam_rho; unset: sam_rho)",
           bounds=NON_NEGATIVE),
    _list("sam_mode", str, ["tr", "ft"], "phases using SAM (tr: training, ft: finetuning)", choices=PHASE_OPTIONS),
    _value("look_sam_k", int, 0, "look-SAM: full SAM step every k steps (0: off)", bounds=NON_NEGATIVE),
    _value("look_sam_alpha", float, 0.7, "look-SAM: weight of the stored SAM direction between full steps"),
    _value("sam_div", str, "", "no effect: the published SAM stores it and never reads it", no_effect=True),
)

REHEARSAL_OPTIONS = (
    _value("memory_size", int, 0, "rehearsal memory budget in images: per process with the published memory, "
           "in total with the global and distributed memories", bounds=NON_NEGATIVE),
    _bool("fixed_memory", False, "per-class memory fixed from the start (memory_size // all classes)"),
    _value("rehearsal", str, "random", "exemplar selection method", choices=REHEARSAL_METHODS),
    _bool("rehearsal_test_trsf", False, "extract exemplar features with the test transform (published: the "
          "training one)"),
    _bool("sep_memory", False, "keep the memory out of the task's training data (SAM's memory passes still use it)"),
    _bool("distributed_memory", False,
          "each process herds its own memory_size / world_size exemplars (the erratum's distributed memory)"),
    _bool("global_memory", False, "one selection of memory_size exemplars, the same on every process (the "
          "erratum's global memory)"),
    _bool("published_memory", False, "each process herds its own memory_size exemplars, world_size x memory_size "
          "in all, as the published code did (the default with several processes; the protocol the erratum "
          "withdrew)"),
    _value("replay_memory", int, 0, "batch size of the memory loader of SAM's memory passes (0: the task's)",
           bounds=NON_NEGATIVE),
    _value("oversample_memory", int, 1, "the memory is added this many times to a task's training data",
           bounds=NON_NEGATIVE),
    _value("rehearsal_modes", int, 1, "2: each class's exemplars are two selections of half the quota, as published",
           choices=(1, 2)),
)

FINETUNING_OPTIONS = (
    _value("finetuning", str, "", "finetuning after each task ('' or balanced)", choices=FINETUNING_MODES),
    _value("finetuning_epochs", int, 30, "finetuning epochs", bounds=NON_NEGATIVE),
    _value("finetuning_lr", float, 5e-5, "finetuning base learning rate (scaled like lr)", bounds=NON_NEGATIVE),
    _bool("finetuning_teacher", False, "distil from the teacher during finetuning"),
    _bool("ft_no_sampling", False, "read the memory in class order, unshuffled"),
    _value("oversample_memory_ft", int, 1, "finetuning repeats each exemplar of the old tasks this many times",
           bounds=POSITIVE),
    _bool("finetuning_resetclf", False, "draw the task heads again before finetuning"),
    _value("finetuning_temperature", float, 5.0, "--method der: the balanced finetuning's cross-entropy is of the "
           "logits divided by this temperature (the official DER code's 5); DyTox's finetuning does not read it",
           bounds=ABOVE_ZERO),
    _bool("only_ft", False, "after the first task, train on the balanced memory only (no new task data)"),
)

DISTRIBUTED_OPTIONS = (
    _value("dist_url", str, "env://", "process-group initialisation URL (only env://: torchrun's environment)",
           aliases=("--dist_url",)),
    _value("world_size", int, 1, "number of processes (may only repeat torchrun's)", aliases=("--world_size",),
           bounds=POSITIVE),
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
    """dest -> Option with its group filled in, refusing a dest declared twice."""
    index: dict[str, Option] = {}
    for group, options in OPTION_GROUPS.items():
        for option in options:
            if option.dest in index:
                raise AssertionError(f"option {option.dest!r} declared twice")
            index[option.dest] = dataclasses.replace(option, group=group)
    return index


OPTIONS: dict[str, Option] = _index_options()

# --------------------------------------------------------------------------- #
# What the records decide
# --------------------------------------------------------------------------- #

NO_EFFECT_OPTIONS = frozenset(dest for dest, option in OPTIONS.items() if option.no_effect)


def no_effect_notes(cfg: argparse.Namespace) -> list[str]:
    """One line per option set that has no effect, so that a user does not believe it acted."""
    return [f"{OPTIONS[dest].flag} {getattr(cfg, dest)!r}: {OPTIONS[dest].help}" for dest in sorted(NO_EFFECT_OPTIONS)
            if getattr(cfg, dest) != OPTIONS[dest].default]


def record_violations(cfg: argparse.Namespace) -> list[str]:
    """Each option whose value (or an item of it) lies outside its record's bounds or choices, as
    ``option 'x' must be >= 1, got 0``. argparse checks only the choices of command-line values and the
    YAML checks name the file of a bad value; this covers every value once merged, bounds included."""
    problems = []
    for dest, option in OPTIONS.items():
        value = getattr(cfg, dest)
        if value is None or (option.bounds is None and option.choices is None):
            continue
        items = value if isinstance(value, list) else [value]
        each = " (each value)" if option.nargs else ""
        if option.choices is not None and any(item not in option.choices for item in items):
            problems.append(f"option {dest!r} must be one of {list(option.choices)}{each}, got {value!r}")
        elif option.bounds is not None and any(item not in option.bounds for item in items):
            problems.append(f"option {dest!r} must be {option.bounds}{each}, got {value}")
    return problems


def config_differences(saved: Mapping[str, object], current: Mapping[str, object]) -> list[str]:
    """The resume rule: the options that differ between a saved and a current configuration, each as
    ``name (saved X, now Y)``, leaving out those that may change on a resume and the keys a saved
    configuration of an earlier version holds for options that no longer exist. An option added since
    counts as saved with its default (which keeps the earlier versions' behaviour)."""
    keys = [key for key in sorted(set(saved) | set(current)) if key in OPTIONS
            and not OPTIONS[key].may_change_on_resume]
    saved = {key: saved.get(key, OPTIONS[key].default) for key in keys}
    return [f"{key} (saved {_short(saved[key])}, now {_short(current.get(key))})"
            for key in keys if saved[key] != current.get(key)]


def _short(value: object, limit: int = 40) -> str:
    """A value in one short line: a long class order is cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
