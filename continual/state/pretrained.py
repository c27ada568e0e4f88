"""``--pretrained FILE``: the encoder's weights before task 0, from a local file, and the record that keeps a
resumed run on that same file.

The file is read with ``torch.load(weights_only=True)``, allowing ``argparse.Namespace`` alone (the
published DyTox checkpoints hold one): a file that needs any other class unpickled is refused, never run.
It holds one of:

- a state dict of the encoder, under its own names (a timm model's ``blocks.0.attn.qkv.weight``);
- a timm checkpoint: such a state dict under ``state_dict``, ``model`` or ``state_dict_ema``;
- a whole model (keys ``task_tokens.*``: a published DyTox checkpoint, this project's task checkpoint):
  its encoder's part (the ConViT's ``patch_embed``, ``pos_embed``, ``sabs``; the ResNet's ``backbone``).

The classifier keys (``head.*``, ``fc.*``) that the encoder lacks, timm's classifier removed by
``num_classes=0``, are dropped; every other weight must match by name and shape. The file's sha256 goes
into ``pretrained.json`` of a new run folder, and a resume with another file (or without it, or with one
where the run had none) is refused before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from continual.config.errors import ConfigError
from continual.config.settings import Settings
from continual.model.encoders import encoder_weight_names
from continual.runtime.files import atomic_write, reading_error
from continual.state.reference import load_without_code

RECORD = "pretrained.json"
CHECKPOINT_KEYS = ("state_dict", "model", "state_dict_ema")  # where timm and DeiT checkpoints keep the weights
CLASSIFIER_PREFIXES = ("head.", "fc.")


def read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``--pretrained`` file, unwrapped from a checkpoint dict, without running any code."""
    if not path.is_file():
        raise ConfigError(f"--pretrained {path}: no such file")
    try:
        content = load_without_code(path)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = found.group(1) if found else "an object that is not a tensor"
        raise ConfigError(f"--pretrained {path}: refused: reading it would unpickle {what}, which could run code; "
                          f"give a file of tensors, e.g. torch.save(model.state_dict(), FILE)") from error
    except Exception as error:  # not a torch file, truncated: say which
        raise ConfigError(f"--pretrained {path}: cannot be read ({reading_error(error)})") from error
    for key in CHECKPOINT_KEYS:
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
            break
    if not isinstance(content, dict) or not content or not all(isinstance(v, Tensor) for v in content.values()):
        raise ConfigError(f"--pretrained {path}: expected a state dict (names to tensors), or a checkpoint holding "
                          f"one under {' / '.join(CHECKPOINT_KEYS)}")
    if all(key.startswith("module.") for key in content):  # saved from a DistributedDataParallel
        content = {key[len("module."):]: value for key, value in content.items()}
    return content


def encoder_part(weights: dict[str, Tensor], names: dict[str, str]) -> dict[str, Tensor]:
    """The file's encoder weights under the encoder's own names (module docstring: which files hold what)."""
    in_model = {model_name: own for own, model_name in names.items()}
    whole_model = any(key.startswith("task_tokens") for key in weights) or (
        sum(key in in_model for key in weights) > sum(key in names for key in weights))
    if whole_model:
        return {in_model[key]: value for key, value in weights.items() if key in in_model}
    return {key: value for key, value in weights.items()
            if key in names or not key.startswith(CLASSIFIER_PREFIXES)}


def _listed(keys: list[str]) -> str:
    """How many, and the first five."""
    return f"{len(keys)} ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})" if keys else "0"


def load_pretrained(model: nn.Module, path: Path, encoder: str) -> None:
    """Copy the encoder's weights of ``path`` into ``model``, or refuse in one line listing what does not fit."""
    names = encoder_weight_names(model)
    weights = encoder_part(read_weights(path), names)
    own = model.state_dict()
    missing = [key for key in names if key not in weights]
    unexpected = [key for key in weights if key not in names]
    mismatched = [f"{key} {tuple(weights[key].shape)} for {tuple(own[names[key]].shape)}" for key in names
                  if key in weights and weights[key].shape != own[names[key]].shape]
    if missing or unexpected or mismatched:
        raise ConfigError(f"--pretrained {path}: its weights do not fit the encoder {encoder!r}: missing "
                          f"{_listed(missing)}, unexpected {_listed(unexpected)}, "
                          f"of another shape {_listed(mismatched)}")
    with torch.no_grad():
        for key, model_name in names.items():
            own[model_name].copy_(weights[key])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded_sha256(run_dir: Path) -> str | None:
    """The sha256 of the file the run folder's run started from; None when it had none."""
    record = run_dir / RECORD
    if not record.is_file():
        return None
    try:
        return str(json.loads(record.read_text(encoding="utf-8"))["sha256"])
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{record} cannot be read ({reading_error(error)}): it names the --pretrained file "
                          f"the run started from") from error


def start_from_pretrained(settings: Settings, model: nn.Module, run_dir: Path,
                          continuing: bool) -> dict[str, str] | None:
    """A new run: load the ``--pretrained`` file's encoder weights into ``model`` and return the record to write
    (None without a file). A continued run: refuse another file than the one the run started from (or none)."""
    path, encoder = settings.run.pretrained, settings.model.encoder
    if continuing:
        recorded = _recorded_sha256(run_dir)
        now = None if path is None else sha256_of(Path(path))
        if recorded != now:
            started = f"the file of sha256 {recorded}" if recorded else "no --pretrained file"
            given = f"--pretrained {path} (sha256 {now})" if now else "no --pretrained file"
            raise ConfigError(f"--resume {run_dir}: refused: the run started from {started}, this command gives "
                              f"{given}; give the file the run started from ({run_dir / RECORD})")
        return None
    if path is None:
        return None
    load_pretrained(model, Path(path), encoder)
    return {"file": str(Path(path).resolve()), "sha256": sha256_of(Path(path))}


def write_pretrained_record(run_dir: Path, record: dict[str, str] | None) -> None:
    """``pretrained.json`` beside config.yaml: the file a new run's encoder started from."""
    if record is not None:
        atomic_write(run_dir / RECORD, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
