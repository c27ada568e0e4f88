"""What every model of the project is: a network that grows with the tasks.

The task loop, the methods, the checkpoints and the resume code only use this
interface; a new model subclasses ``ContinualModel`` and registers in
continual.model.build.MODELS.
"""
from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from continual.model.config import ModelConfig


class ModelOutput(Protocol):
    """What a forward returns; a method's objective may read more of its own model's output."""

    @property
    def logits(self) -> Tensor:
        """(B, classes seen so far), in task order."""
        ...


class ContinualModel(nn.Module):
    """A model for ``nb_classes`` initial classes that gains classes task after task."""

    config: ModelConfig
    nb_classes_per_task: list[int]

    @property
    def nb_tasks(self) -> int:
        return len(self.nb_classes_per_task)

    @property
    def nb_classes(self) -> int:
        return sum(self.nb_classes_per_task)

    def expand(self, nb_new_classes: int) -> None:
        """Grow for a new task of ``nb_new_classes`` classes."""
        raise NotImplementedError

    def freeze(self, names: list[str] | tuple[str, ...]) -> None:
        """Make the named parts untrainable (``all``, or the model's own part names) and the rest trainable."""
        raise NotImplementedError

    def set_phase(self, phase: str) -> None:
        """'train' or 'finetune': a model may behave differently in each."""
        raise NotImplementedError

    def reset_heads(self) -> None:
        """Draw the classifier's weights again (``finetuning_resetclf``)."""
        raise NotImplementedError

    def idle_parameters(self) -> bool:
        """Whether some trainable parameters take no part in this phase's forward."""
        return False

    def before_loading(self, weights: dict[str, Tensor]) -> None:
        """Adjust the grown model to a saved state dict before it is loaded (a part the save lacks)."""
