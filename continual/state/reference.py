"""Load checkpoints written by the published DyTox code into this project's model.

The published checkpoint is a dict with the state dict under ``model`` and the
argparse namespace of its command line under ``args``. The architecture and
the number of tasks are read from the tensor shapes; only what shapes cannot
tell (head mode, divergence-head phases, joint decoding, dropout rates) comes
from ``args``. Loading uses ``torch.load(weights_only=True)`` with
``argparse.Namespace`` as the only extra allowed global.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from continual.model.build import grown_model
from continual.model.config import ModelConfig
from continual.model.dytox import DyTox


def load_without_code(path: Path) -> object:
    """A file's content read with ``torch.load(weights_only=True)`` on the CPU, allowing ``argparse.Namespace``
    (the published checkpoints' ``args``) and no other class: a file that needs any other global unpickled
    raises ``pickle.UnpicklingError``, and nothing of it runs."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_reference_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, object]]:
    """(state dict, args as a plain dict) of a published checkpoint, without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint {path} does not exist")
    checkpoint = load_without_code(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path} is not a DyTox checkpoint: expected a dict with a 'model' state dict")
    args = checkpoint.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    return checkpoint["model"], args


def head_div_modes(value: Any) -> tuple[str, ...]:
    """The published options give ``head_div_mode`` as a list or as a YAML string such as 'tr'.

    The reference tests membership with ``'tr' in value``, so a string is read the same way.
    """
    if value is None:
        return ("tr", "ft")
    return tuple(mode for mode in ("tr", "ft") if mode in value)


def _count_indexed(state: dict[str, Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indexes = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(indexes) + 1 if indexes else 0


def _classes_per_task(state: dict[str, Tensor], ind_clf: str, nb_tasks: int, args: dict) -> list[int]:
    """Classes of each task, from the head widths (cumulative in 1-n / n-n modes)."""
    if ind_clf == "":
        per_task = list(args.get("increment_per_task") or [])[:nb_tasks]
        if len(per_task) != nb_tasks or sum(per_task) != state["head.head.weight"].shape[0]:
            raise ValueError("cannot infer classes per task of a single-head checkpoint "
                             "without args.increment_per_task")
        return [int(n) for n in per_task]
    widths = [state[f"head.{i}.head.weight"].shape[0] for i in range(nb_tasks)]
    if ind_clf in ("1-1", "n-1"):
        return widths
    return [widths[0]] + [b - a for a, b in zip(widths, widths[1:], strict=False)]


def reference_config(state: dict[str, Tensor], args: dict[str, Any]) -> tuple[ModelConfig, list[int]]:
    """The model configuration and classes per task of a published checkpoint."""
    embed_dim, in_chans, patch_size, _ = state["patch_embed.proj.weight"].shape
    num_patches = state["pos_embed"].shape[1]
    nb_sabs, nb_tabs = _count_indexed(state, "sabs"), _count_indexed(state, "tabs")
    nb_tasks = _count_indexed(state, "task_tokens") or sum(k.startswith("task_tokens") for k in state)
    ind_clf = "" if "head.head.weight" in state else str(args.get("ind_clf", "1-1"))
    config = ModelConfig(
        embed_dim=embed_dim,
        depth=nb_sabs + nb_tabs,
        num_heads=state["sabs.0.attn.gating_param"].shape[0],
        patch_size=patch_size,
        input_size=math.isqrt(num_patches) * patch_size,
        in_chans=in_chans,
        mlp_ratio=state["sabs.0.mlp.fc1.weight"].shape[0] / embed_dim,
        qkv_bias="sabs.0.attn.qk.bias" in state,
        local_up_to_layer=nb_sabs,
        locality_strength=float(args.get("locality_strength", 1.0)),
        drop=float(args.get("drop", 0.0)),
        drop_path=float(args.get("drop_path", 0.0)),
        ind_clf=ind_clf,
        head_div="head_div.head.weight" in state or float(args.get("head_div", 0.0) or 0.0) > 0,
        head_div_mode=head_div_modes(args.get("head_div_mode")),
    )
    return config, _classes_per_task(state, ind_clf, nb_tasks, args)


def load_reference_checkpoint(path: str | Path) -> DyTox:
    """This project's DyTox, in eval mode, holding the weights of a published DyTox checkpoint."""
    state, args = read_reference_checkpoint(path)
    config, classes_per_task = reference_config(state, args)
    model = grown_model(config, classes_per_task, state)
    assert isinstance(model, DyTox)  # reference_config describes a DyTox
    return model.eval()
