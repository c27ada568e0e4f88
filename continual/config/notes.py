"""Notes printed at start-up (main process): what the user should know before a long run, that is no error.

``context_notes`` names options the chosen mode does not read; ``memory_note`` says when the
rehearsal memory over all processes exceeds ``--memory-size`` (the paper's erratum).
"""
from __future__ import annotations

import argparse

from continual.config.settings import MemorySettings
from continual.config.validate import encoder_of
from continual.model.config import RESNET_EMBED_DIM, RESNET_NUM_HEADS


def memory_note(memory: MemorySettings, world_size: int) -> str | None:
    """With the published memory on several processes the memory exceeds ``memory_size``: say so, and how
    to state the total the paper's erratum compares methods by (its two protocols)."""
    if world_size == 1 or memory.mode(world_size) != "published" or not memory.memory_size:
        return None
    size, total = memory.memory_size, memory.memory_size * world_size
    return (f"published memory: each of the {world_size} processes keeps its own --memory-size {size} exemplars, "
            f"{total} in all. The DyTox erratum compares memories by their total (20 per class: 2000 on "
            f"CIFAR-100); to set the total, use --distributed-memory --memory-size TOTAL (each process herds "
            f"TOTAL/{world_size} of its own: the erratum's distributed memory) or --global-memory --memory-size "
            f"TOTAL (one selection shared by all processes: its global memory). This run equals "
            f"--distributed-memory --memory-size {total}.")


def context_notes(cfg: argparse.Namespace) -> list[str]:
    """Options that the chosen mode does not read, so that a user does not believe they acted."""
    notes = []
    if not cfg.dytox:
        dytox_only = [f"{dest} {getattr(cfg, dest)!r}" for dest, unused in (
            ("head_div", cfg.head_div > 0), ("ind_clf", cfg.ind_clf not in ("", "1-1")),
        ) if unused]
        if dytox_only:
            notes.append(f"{', '.join(dytox_only)}: no effect without DyTox (the baseline has one classifier)")
    elif encoder_of(cfg) == "resnet18":
        notes.append(f"--resnet: the decoder is one TAB of {RESNET_NUM_HEADS} heads on {RESNET_EMBED_DIM} channels, as "
                     f"published; embed_dim, "
                     f"num_heads, depth, local_up_to_layer, patch_size and the dropouts of the options are not used")
    if cfg.method in OTHER_METHODS:
        notes.extend(other_method_notes(cfg))
    if cfg.dytox and encoder_of(cfg) not in ("convit", "resnet18"):
        notes.append(f"--encoder {encoder_of(cfg)}: the decoder is {cfg.depth - cfg.local_up_to_layer} TAB(s) "
                     f"(depth - local_up_to_layer) of {cfg.num_heads} heads on the encoder's width; embed_dim, "
                     f"qkv_bias and locality_strength of the options size the ConViT only")
    if cfg.output_dir and cfg.name:
        notes.append(f"--output-dir {cfg.output_dir!r}: replaced by the run folder of --name {cfg.name!r}, "
                     f"as published")
    if cfg.pod is not None and not (cfg.auto_kd or cfg.kd > 0):
        notes.append("--pod: no effect without a teacher (auto_kd or kd > 0), as published")
    return notes


# What the methods other than DyTox train with (the DyTox options they do not read are named at start-up).
OTHER_METHODS = {
    "er": "cross-entropy on the task and the memory, no teacher, no finetuning, nothing frozen",
    "wa": "its own distillation weight (old / seen classes) at distillation_tau, no finetuning, nothing frozen",
    "icarl": "sigmoid cross-entropy, the old classes' targets from the teacher, the nearest mean of exemplars, "
             "no finetuning, nothing frozen",
    "der": "cross-entropy and its auxiliary classifier, no teacher, the old encoders frozen, balanced finetuning "
           "of the classifier alone (finetuning, at finetuning_temperature)",
}
# The DyTox options a method of OTHER_METHODS reads too.
READ_BY_METHOD = {"der": ("finetuning",)}


def other_method_notes(cfg: argparse.Namespace) -> list[str]:
    """``--method er``, ``icarl``, ``wa`` or ``der``: name the DyTox options of the configuration that the method
    ignores."""
    ignored = [f"{dest} {getattr(cfg, dest)!r}" for dest, set_ in (
        ("auto_kd", cfg.auto_kd), ("kd", cfg.kd > 0), ("head_div", cfg.head_div > 0), ("pod", cfg.pod is not None),
        ("finetuning", bool(cfg.finetuning)), ("freeze_task", bool(cfg.freeze_task)),
        ("oversample_memory", cfg.oversample_memory != 1), ("only_ft", cfg.only_ft), ("sep_memory", cfg.sep_memory),
        ("retrain_scratch", cfg.retrain_scratch), ("freeze_ft", bool(cfg.freeze_ft)),
    ) if set_ and dest not in READ_BY_METHOD.get(cfg.method, ())]
    if not ignored:
        return []
    return [f"{', '.join(ignored)}: no effect with --method {cfg.method} ({OTHER_METHODS[cfg.method]})"]
