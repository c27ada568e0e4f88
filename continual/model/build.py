"""Building a model from its configuration: new, or grown to a saved shape and holding saved weights."""
from __future__ import annotations

from torch import Tensor, nn

from continual.model.baseline import IncrementalClassifier
from continual.model.config import ModelConfig
from continual.model.dytox import DyTox

ContinualModel = DyTox | IncrementalClassifier


def new_model(config: ModelConfig, nb_classes: int) -> ContinualModel:
    """DyTox, or the baseline when ``config.dytox`` is false, for ``nb_classes`` initial classes."""
    return DyTox(config, nb_classes) if config.dytox else IncrementalClassifier(config, nb_classes)


def grown_model(config: ModelConfig, classes_per_task: list[int],
                weights: dict[str, Tensor] | None = None) -> ContinualModel:
    """A model expanded to ``len(classes_per_task)`` tasks, holding ``weights`` (a state dict) if given.

    Used to rebuild saved models: a DyTox state dict without a divergence head (the
    first task, or a head that was not saved) gives a model without one.
    """
    model = new_model(config, classes_per_task[0])
    for nb_new in classes_per_task[1:]:
        model.expand(nb_new)
    if weights is not None:
        if isinstance(model, DyTox) and "head_div.head.weight" not in weights:
            model.head_div = None
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
