"""The methods ``--method`` can name: one line each.

A method is a class with the hooks of ``continual.method.learner.Learner`` and a
``from_parts`` constructor (``RehearsalLearner`` gives both to a method that
keeps exemplars). docs/extending.md walks through adding one.
"""
from __future__ import annotations

from collections.abc import Callable

from continual.method.der import DynamicallyExpandableRepresentation
from continual.method.dytox_learner import DyToxLearner
from continual.method.er import ExperienceReplay
from continual.method.icarl import ICaRL
from continual.method.learner import Learner, LearnerParts
from continual.method.wa import WeightAligning

METHODS: dict[str, Callable[[LearnerParts], Learner]] = {
    "dytox": DyToxLearner.from_parts,  # DyTox, or with --no-dytox the baseline of its ablation
    "er": ExperienceReplay.from_parts,  # experience replay: rehearsal and cross-entropy
    "icarl": ICaRL.from_parts,  # iCaRL (Rebuffi et al., CVPR 2017), on the baseline's network
    "wa": WeightAligning.from_parts,  # weight aligning (Zhao et al., CVPR 2020), on the baseline's network
    "der": DynamicallyExpandableRepresentation.from_parts,  # DER without pruning (Yan et al., CVPR 2021)
}


def build_learner(name: str, parts: LearnerParts) -> Learner:
    """The method ``name`` (an option checked against ``METHODS`` when the options are read)."""
    return METHODS[name](parts)
