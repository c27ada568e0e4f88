"""The model registry: a model is built by name from its configuration, new or grown to a saved shape.

A new model is a ``ContinualModel`` subclass (continual.model.base) and one line in ``MODELS``.
"""
from __future__ import annotations

from torch import Tensor, nn

from continual.model.base import ContinualModel
from continual.model.baseline import IncrementalClassifier
from continual.model.config import ModelConfig
from continual.model.der import ExpandableNetwork
from continual.model.dytox import DyTox

MODELS: dict[str, type[ContinualModel]] = {
    "dytox": DyTox,  # task tokens and a head per task (dytox: true)
    "baseline": IncrementalClassifier,  # the ablation's growing classifier (dytox: false)
    "der": ExpandableNetwork,  # DER's extractor per task (--method der, on the baseline's encoders)
}


def new_model(config: ModelConfig, nb_classes: int) -> ContinualModel:
    """The configuration's model (``config.architecture``) for ``nb_classes`` initial classes."""
    return MODELS[config.architecture](config, nb_classes)


def grown_model(config: ModelConfig, classes_per_task: list[int],
                weights: dict[str, Tensor] | None = None) -> ContinualModel:
    """A model expanded to ``len(classes_per_task)`` tasks, holding ``weights`` (a state dict) if given:
    how saved models are rebuilt."""
    model = new_model(config, classes_per_task[0])
    for nb_new in classes_per_task[1:]:
        model.expand(nb_new)
    if weights is not None:
        model.before_loading(weights)
        model.load_state_dict(weights)
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """All parameters, the trainable ones, and all but the divergence head's (the paper's count)."""
    params = list(model.named_parameters())
    return {
        "total": sum(p.numel() for _, p in params),
        "trainable": sum(p.numel() for _, p in params if p.requires_grad),
        "without_head_div": sum(p.numel() for n, p in params if not n.startswith("head_div.")),
    }
