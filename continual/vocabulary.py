"""The names shared by the option table, the model, the method and the run state, written once.

This module imports nothing, so every layer may use it.
"""
from __future__ import annotations

# How the task heads share the classes (``--ind-clf``): 1-1 one head per task on its own classes,
# 1-n / n-1 / n-n the published variants, "" a single classifier over all seen classes.
HEAD_MODES = ("1-1", "1-n", "n-1", "n-n", "")

# The two phases of a task that train, as the model and the loop name them, and as the options
# ``head_div_mode`` and ``sam_mode`` spell them (the published code's "tr" and "ft").
TRAIN, FINETUNE = "train", "finetune"
TRAINING_PHASES = (TRAIN, FINETUNE)
PHASE_OPTION_NAMES = {TRAIN: "tr", FINETUNE: "ft"}
PHASE_OPTIONS = tuple(PHASE_OPTION_NAMES.values())

# Where a run can stand inside a task, in order: a saved run state resumes at one of them.
TASK_STEPS = ("begin", TRAIN, "memory", FINETUNE, "eval")

# What ``freeze_task`` / ``freeze_ft`` may name: DyTox's parts, and the baseline's (``dytox: false``).
DYTOX_FREEZE_NAMES = ("all", "old_task_tokens", "task_tokens", "sab", "tab", "old_heads", "heads", "head_div")
BASELINE_FREEZE_NAMES = {"convit": ("all", "backbone", "sab", "tab", "heads"), "vit": ("all", "backbone", "heads"),
                         "resnet18_cifar": ("all", "backbone", "heads"), "timm": ("all", "backbone", "heads")}
FREEZE_NAMES = (*DYTOX_FREEZE_NAMES, "backbone")

# How torch's optimisers step (``--opt-impl``), and the timm names of the optimisers that have the three.
OPT_IMPLEMENTATIONS = ("auto", "foreach", "loop", "fused")
TORCH_STEPPED_OPTIMISERS = ("adam", "adamw", "sgd", "momentum", "nesterov")

# Exemplar selection (``--rehearsal``).
REHEARSAL_METHODS = (
    "random", "closest_all", "closest_token", "furthest_all", "furthest_token", "icarl_all", "icarl_token",
)


def phase_option_name(phase: str) -> str:
    """``train`` -> ``tr``, ``finetune`` -> ``ft``: the spelling of ``head_div_mode`` and ``sam_mode``."""
    if phase not in PHASE_OPTION_NAMES:
        raise ValueError(f"phase must be one of {TRAINING_PHASES}, got {phase!r}")
    return PHASE_OPTION_NAMES[phase]
