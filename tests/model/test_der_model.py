"""DER's network (continual.model.der; the method's tests are tests/method/test_der.py): the classifier's old
block kept by expand, what trains in each phase at each task, frozen extractors' BatchNorm statistics, the round
trip through a state dict, the parameter count."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from continual.model.build import count_parameters, grown_model, new_model
from continual.model.config import ModelConfig
from continual.model.der import ExpandableNetwork
from continual.model.encoders import encoder_weight_names, fit_to_encoder

CONVIT = ModelConfig(embed_dim=32, depth=3, num_heads=4, patch_size=4, input_size=16, local_up_to_layer=2,
                     dytox=False, extractor_per_task=True)
# A tiny timm ResNet: BatchNorm layers whose running statistics a training forward moves.
RESNET = fit_to_encoder(dataclasses.replace(CONVIT, encoder="timm:resnet10t",
                                            encoder_args=(("stem_width", 8), ("channels", (8, 16, 24, 32)))))


def images(batch: int = 6) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def trainable(model: nn.Module) -> set[str]:
    """The trainable parameters' names, by part: ``extractors.i``, ``classifier``, ``head_div``."""
    return {".".join(name.split(".")[:2]) if name.startswith("extractors.") else name.split(".")[0]
            for name, param in model.named_parameters() if param.requires_grad}


def statistics(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.named_buffers()}


def test_the_method_s_option_chooses_the_network() -> None:
    assert CONVIT.architecture == "der" and isinstance(new_model(CONVIT, 2), ExpandableNetwork)
    with pytest.raises(ValueError, match="dytox must be false"):
        dataclasses.replace(CONVIT, dytox=True)


def test_expand_copies_the_old_classifier_block_and_the_newest_extractor_exactly() -> None:
    model = ExpandableNetwork(CONVIT, 4)
    old_weight, old_bias = model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()
    model.expand(3)
    assert model.classifier.weight.shape == (7, 64) and model.classifier.bias.shape == (7,)
    assert torch.equal(model.classifier.weight[:4, :32], old_weight)
    assert torch.equal(model.classifier.bias[:4], old_bias)
    assert not torch.equal(model.classifier.weight[:4, 32:], torch.zeros(4, 32))  # drawn, as the new rows
    assert model.head_div is not None and model.head_div.weight.shape == (4, 32)  # 3 new classes + "old"
    first, second = model.extractors[0].state_dict(), model.extractors[1].state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)  # the new one starts as a copy
    out = model.train()(images())
    assert out.logits.shape == (6, 7) and out.aux_logits is not None and out.aux_logits.shape == (6, 4)
    assert out.task_embeddings.shape == (1, 6, 64)
    torch.testing.assert_close(out.aux_logits, model.head_div(out.task_embeddings[0, :, 32:]), rtol=0, atol=0)
    model.set_phase("finetune")
    assert model(images()).aux_logits is None  # not read, not computed


def test_the_old_extractors_are_frozen_and_finetuning_trains_the_classifier_alone_at_every_task() -> None:
    model = ExpandableNetwork(CONVIT, 2)
    expected_training = [{"extractors.0", "classifier"}, {"extractors.1", "classifier", "head_div"},
                         {"extractors.2", "classifier", "head_div"}]
    for task, expected in enumerate(expected_training):
        if task:
            model.expand(2)
        model.set_phase("train")
        model.freeze([])
        assert trainable(model) == expected, task
        model.set_phase("finetune")
        assert trainable(model) == {"classifier"}, task
        assert not model.idle_parameters()
    model.freeze(["all"])
    assert trainable(model) == set() and not any(m.training for m in model.modules())
    model.train()
    assert not any(extractor.training for extractor in model.extractors)


def test_frozen_extractors_keep_their_batchnorm_statistics_in_a_training_forward() -> None:
    model = grown_model(RESNET, [2, 2]).train()
    old, newest = statistics(model.extractors[0]), statistics(model.extractors[1])
    assert model.training and not model.extractors[0].training and model.extractors[1].training
    model(images())
    assert all(torch.equal(value, old[name]) for name, value in model.extractors[0].named_buffers())
    assert not torch.equal(model.extractors[1].state_dict()["bn1.running_mean"], newest["bn1.running_mean"])
    model.set_phase("finetune")  # balanced finetuning: no extractor moves
    model.train()
    before = statistics(model)
    model(images())
    assert all(torch.equal(value, before[name]) for name, value in model.named_buffers())


def test_a_model_rebuilt_from_its_state_dict_trains_the_same_parts_and_gives_the_same_outputs() -> None:
    model = grown_model(RESNET, [2, 2, 3]).train()
    model(images())  # moves the newest extractor's statistics away from the copy's
    with torch.no_grad():
        model.head_div.weight.add_(1.0)  # type: ignore[union-attr]
    rebuilt = grown_model(RESNET, [2, 2, 3], model.state_dict()).train()
    assert trainable(rebuilt) == trainable(model) == {"extractors.2", "classifier", "head_div"}
    assert [e.training for e in rebuilt.extractors] == [e.training for e in model.extractors] == [False, False, True]
    model.eval()
    rebuilt.eval()
    ours, theirs = model(images()), rebuilt(images())
    assert torch.equal(ours.logits, theirs.logits) and torch.equal(ours.aux_logits, theirs.aux_logits)


def test_the_count_grows_by_one_extractor_the_classifier_s_growth_and_the_auxiliary_classifier() -> None:
    model = ExpandableNetwork(CONVIT, 2)
    extractor = sum(p.numel() for p in model.extractors[0].parameters())
    counts = [count_parameters(model)]
    for _ in range(2):
        model.expand(2)
        counts.append(count_parameters(model))
    d = 32
    classifiers = [d * 2 + 2, 2 * d * 4 + 4, 3 * d * 6 + 6]
    auxiliary = [0, d * 3 + 3, d * 3 + 3]
    assert [c["total"] for c in counts] == [(t + 1) * extractor + classifiers[t] + auxiliary[t] for t in range(3)]
    assert [c["without_head_div"] for c in counts] == [(t + 1) * extractor + classifiers[t] for t in range(3)]
    assert counts[2]["trainable"] == extractor + classifiers[2] + auxiliary[2]


def test_a_pretrained_file_fills_the_first_extractor() -> None:
    names = encoder_weight_names(grown_model(CONVIT, [2, 2]))
    assert names and all(value == f"extractors.0.{key}" for key, value in names.items())
