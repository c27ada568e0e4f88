"""DER (--method der): the auxiliary targets and the losses on hand-computed numbers, its hooks on the demo's data
(growth, freezing, balanced finetuning of the classifier), its refusal of DyTox's network and its start-up note."""
from __future__ import annotations

import math

import pytest
import torch
from support import method_on

from conftest import REPO_ROOT
from continual.config import ConfigError, parse_config
from continual.config.notes import context_notes
from continual.config.validate import check_runnable
from continual.method.der import (
    DynamicallyExpandableRepresentation,
    ExpandedCrossEntropy,
    TemperedCrossEntropy,
    auxiliary_targets,
)
from continual.model.base import ContinualModel
from continual.model.der import DEROutput, ExpandableNetwork

FILES = [str(REPO_ROOT / f"options/{name}.yaml") for name in ("data/digits_demo", "model/demo_tiny", "model/baseline")]


def test_the_auxiliary_target_is_0_for_an_old_class_and_1_plus_the_rank_of_a_new_one() -> None:
    assert auxiliary_targets(torch.tensor([1, 4, 5]), 4).tolist() == [0, 1, 2]
    soft = torch.tensor([[0.25, 0.25, 0.0, 0.0, 0.5, 0.0]])  # MixUp of two old classes and the new class 4
    assert auxiliary_targets(soft, 4).tolist() == [[0.5, 0.5, 0.0]]


def test_the_loss_adds_the_auxiliary_cross_entropy_to_the_cross_entropy_over_the_seen_classes() -> None:
    logits = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # 2 old classes, 2 new
    aux_logits = torch.tensor([[0.0, 0.0, 2.0]])  # old, new class 2, new class 3
    out = DEROutput(logits, aux_logits, torch.zeros(1, 1, 8))
    terms = ExpandedCrossEntropy()(out, None, torch.tensor([3]))  # aux target 1 + (3 - 2) = 2
    classification = math.log(math.e + 3)  # -log softmax(logits)[3]
    auxiliary = math.log(2 + math.exp(2)) - 2  # -log softmax(aux_logits)[2]
    assert terms.to_floats() == {"classification": pytest.approx(classification), "div": pytest.approx(auxiliary),
                                 "total": pytest.approx(classification + auxiliary)}
    soft = ExpandedCrossEntropy()(out, None, torch.tensor([[0.6, 0.0, 0.0, 0.4]]))  # MixUp: old 0 and new 3
    log_aux = aux_logits.log_softmax(dim=1)[0]
    assert float(soft.div) == pytest.approx(float(-(0.6 * log_aux[0] + 0.4 * log_aux[2])))  # type: ignore[arg-type]
    first_task = ExpandedCrossEntropy()(DEROutput(logits, None, torch.zeros(1, 1, 8)), None, torch.tensor([3]))
    assert first_task.div is None and float(first_task.total) == pytest.approx(classification)


def test_finetuning_divides_the_logits_by_the_temperature() -> None:
    out = DEROutput(torch.tensor([[2.0, 0.0]]), None, torch.zeros(1, 1, 8))
    terms = TemperedCrossEntropy(2.0)(out, None, torch.tensor([0]))
    assert float(terms.total) == pytest.approx(math.log(1 + math.exp(-1)))  # softmax of [1, 0]


def demo_der(*flags: str) -> tuple[DynamicallyExpandableRepresentation, ExpandableNetwork]:
    learner, model = method_on(["--options", *FILES, "--method", "der", *flags])
    assert isinstance(learner, DynamicallyExpandableRepresentation) and isinstance(model, ExpandableNetwork)
    return learner, model


def trains(model: ContinualModel) -> set[str]:
    return {name.split(".")[0] + (f".{name.split('.')[1]}" if name.startswith("extractors") else "")
            for name, param in model.named_parameters() if param.requires_grad}


def test_each_task_adds_an_extractor_then_finetunes_the_classifier_alone_on_the_balanced_memory() -> None:
    learner, model = demo_der("--finetuning-temperature", "3", "--train-per-class", "16", "--rehearsal", "random")
    assert learner.begin_task(model, 0) is None and trains(model) == {"extractors.0", "classifier"}
    assert len(learner.training_set(0)) == 32  # type: ignore[arg-type]
    learner.update_memory(model, 0, learner.memory_quota(0))  # type: ignore[arg-type]
    assert learner.finetuning_set(0) is None  # nothing to balance after the first task
    assert learner.begin_task(model, 1) is None and model.nb_classes_per_task == [2, 2]
    assert trains(model) == {"extractors.1", "classifier", "head_div"} and not learner.unused_parameters(model)
    assert len(learner.training_set(1)) == 32 + 32  # type: ignore[arg-type]  # 16 per class, all kept
    learner.update_memory(model, 1, learner.memory_quota(1))  # type: ignore[arg-type]
    balanced = learner.finetuning_set(1)
    assert balanced is not None and len(balanced) == 64  # type: ignore[arg-type]
    learner.begin_finetuning(model)
    assert trains(model) == {"classifier"} and not any(e.training for e in model.extractors)
    assert learner.objective(model, "finetune") == TemperedCrossEntropy(3.0)
    learner.end_finetuning(model)
    assert trains(model) == {"extractors.1", "classifier", "head_div"}
    assert isinstance(learner.objective(model, "train"), ExpandedCrossEntropy)
    no_finetuning, _ = demo_der("--finetuning=")
    no_finetuning.memory = learner.memory
    assert no_finetuning.finetuning_set(1) is None


def test_der_on_dytox_s_network_is_refused_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match="--method der grows one baseline encoder per task: give --no-dytox"):
        check_runnable(parse_config(["--options", *FILES[:2], "--method", "der"]))


def test_the_start_up_note_names_what_der_ignores_but_not_its_finetuning() -> None:
    notes = context_notes(parse_config(["--options", *FILES, "--method", "der"]))
    assert len(notes) == 1 and notes[0].startswith("auto_kd True, freeze_ft ['sab']: no effect with --method der")
