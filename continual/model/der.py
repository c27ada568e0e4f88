"""DER's network (``--method der``; Yan et al., "DER: Dynamically Expandable Representation for Class Incremental
Learning", CVPR 2021), without the paper's channel masks and pruning.

    images -> extractor 0, ..., extractor T-1 (one baseline encoder per task: convit, vit, timm:NAME ...)
           -> their features concatenated (B, T*D)
           -> the classifier: one Linear (T*D -> classes seen), as the paper's (no LayerNorm in front)
    the newest extractor's features (B, D) -> the auxiliary classifier: Linear (D -> new classes + 1), from the
           second task on, in the training phase only (discarded at test time, as the paper's)

At each task a new extractor, a copy of the newest one, joins (``expand``); the classifier is drawn again one
block of columns wider and as many rows longer, its block [old classes, old features] copied from the old one.

What trains is a function of the structure and the phase, never saved: the old extractors are always frozen
(no gradient, and in eval mode even when the model is put in train mode, so that their BatchNorm statistics
and dropout stay as they were); in the finetuning phase every extractor and the auxiliary classifier are
frozen too and the classifier alone trains. A model rebuilt from its state dict (continual.model.build's
``grown_model``: a new model expanded task by task, then loaded) is thus frozen as the saved one was.

The auxiliary classifier is named ``head_div``: it plays the part of DyTox's divergence head (DyTox took it from
DER), so the parameter count "without the divergence head" is the network the paper deploys.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import torch
from torch import Tensor, nn

from continual.model.base import ContinualModel
from continual.model.baseline import baseline_encoder
from continual.model.config import ModelConfig
from continual.model.layers import set_fused_attention
from continual.vocabulary import FINETUNE, TRAIN, TRAINING_PHASES

DER_FREEZE_NAMES = ("all", "extractors", "classifier", "head_div")


@dataclass(frozen=True)
class DEROutput:
    """What DER's forward returns. ``aux_logits`` is None at the first task and outside the training phase."""

    logits: Tensor  # (B, classes seen), in task order
    aux_logits: Tensor | None  # (B, new classes + 1): "an old class" then each new class
    task_embeddings: Tensor  # (1, B, T*D): the concatenated features, herding's features


def grown_classifier(old: nn.Linear, new_features: int, nb_new_classes: int) -> nn.Linear:
    """A Linear ``new_features`` wider and ``nb_new_classes`` longer than ``old``, drawn anew (PyTorch's default),
    whose block [old classes, old features] and old biases are ``old``'s."""
    grown = nn.Linear(old.in_features + new_features, old.out_features + nb_new_classes).to(old.weight)
    with torch.no_grad():
        grown.weight[: old.out_features, : old.in_features] = old.weight
        grown.bias[: old.out_features] = old.bias
    return grown


class ExpandableNetwork(ContinualModel):
    """DER's network for ``nb_classes`` initial classes; see the module docstring."""

    def __init__(self, config: ModelConfig, nb_classes: int) -> None:
        super().__init__()
        if config.dytox or not config.extractor_per_task:
            raise ValueError("ExpandableNetwork is DER's network: its config has dytox false, extractor_per_task true")
        self.config = config
        self.nb_classes_per_task: list[int] = [nb_classes]
        self.phase = TRAIN
        self.frozen: tuple[str, ...] = ()  # the parts freeze() named, beyond what the phase freezes
        self.extractors = nn.ModuleList([baseline_encoder(config)])
        self.classifier = nn.Linear(config.embed_dim, nb_classes)
        self.head_div: nn.Linear | None = None  # the auxiliary classifier, from the second task on
        set_fused_attention(self, config.fused_attention)
        self._apply_freezing()

    @property
    def feature_dim(self) -> int:
        """D, the width of one extractor's feature."""
        return self.config.embed_dim

    # ------------------------------------------------------------------ growth
    def expand(self, nb_new_classes: int) -> None:
        """A new task: a new extractor initialised from the newest one (as the official code and PyCIL do), the
        classifier grown (its old block kept), a new auxiliary classifier over ``nb_new_classes`` + 1."""
        if nb_new_classes <= 0:
            raise ValueError(f"expand needs a positive number of new classes, got {nb_new_classes}")
        extractor = copy.deepcopy(self.extractors[-1])  # weights and BatchNorm statistics alike
        for param in extractor.parameters():
            param.grad = None
        self.extractors.append(extractor)
        self.classifier = grown_classifier(self.classifier, self.feature_dim, nb_new_classes)
        self.head_div = nn.Linear(self.feature_dim, nb_new_classes + 1).to(self.classifier.weight)
        self.nb_classes_per_task.append(nb_new_classes)
        self._apply_freezing()

    def reset_heads(self) -> None:
        """The classifier drawn again (``finetuning_resetclf``; the official code's classifier retraining does)."""
        self.classifier.reset_parameters()

    # ------------------------------------------------------------------ freezing
    def set_phase(self, phase: str) -> None:
        """'train': the newest extractor and both classifiers train; 'finetune': the classifier alone."""
        if phase not in TRAINING_PHASES:
            raise ValueError(f"phase must be one of {TRAINING_PHASES}, got {phase!r}")
        self.phase = phase
        self._apply_freezing()

    def freeze(self, names: list[str] | tuple[str, ...]) -> None:
        """Freeze exactly the named parts (all, extractors, classifier, head_div) beyond what the phase freezes
        (the old extractors always). ``all`` also puts the model in eval mode."""
        for name in names:
            self._named_part(name)  # validates before touching anything
        self.frozen = tuple(dict.fromkeys(names))
        self._apply_freezing()
        if "all" in names:
            self.eval()

    def frozen_extractors(self) -> list[nn.Module]:
        """The extractors that do not train now: the old ones, and the newest in finetuning or when named."""
        every = self.phase == FINETUNE or bool({"all", "extractors"} & set(self.frozen))
        return list(self.extractors if every else self.extractors[:-1])

    def _named_part(self, name: str) -> list[nn.Parameter]:
        table: dict[str, Callable[[], list[nn.Parameter]]] = {
            "all": lambda: list(self.parameters()),
            "extractors": lambda: list(self.extractors.parameters()),
            "classifier": lambda: list(self.classifier.parameters()),
            "head_div": lambda: list(self.head_div.parameters()) if self.head_div is not None else [],
        }
        if name not in table:
            raise ValueError(f"unknown freeze name {name!r} for DER's network; valid names: {list(DER_FREEZE_NAMES)}")
        return table[name]()

    def _apply_freezing(self) -> None:
        for param in self.parameters():
            param.requires_grad_(True)
        frozen = [p for extractor in self.frozen_extractors() for p in extractor.parameters()]
        if self.phase == FINETUNE and self.head_div is not None:
            frozen += list(self.head_div.parameters())
        for name in self.frozen:
            frozen += self._named_part(name)
        for param in frozen:
            param.requires_grad_(False)
        self.train(self.training)  # a frozen extractor leaves train mode at once

    def train(self, mode: bool = True) -> Self:
        """Train mode for what trains; the frozen extractors stay in eval mode (BatchNorm statistics, dropout)."""
        super().train(mode)
        if mode:
            for extractor in self.frozen_extractors():
                extractor.eval()
        return self

    def idle_parameters(self) -> bool:
        """None: the auxiliary classifier trains only where the loss reads it (the training phase, from the
        second task), and is frozen in finetuning, where the forward skips it."""
        return False

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor) -> DEROutput:
        """Logits of all seen classes from the concatenated features; the auxiliary logits in the training phase."""
        features = torch.cat([extractor(images) for extractor in self.extractors], dim=1)  # (B, T*D)
        aux_logits = None
        if self.head_div is not None and self.phase == TRAIN:
            aux_logits = self.head_div(features[:, -self.feature_dim:])  # the newest extractor's (B, D)
        return DEROutput(self.classifier(features), aux_logits, features.unsqueeze(0))
