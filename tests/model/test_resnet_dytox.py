"""DyTox on the ResNet-18 encoder (``--resnet``): shapes, the single TAB, joint = per-task decoding in eval and
training, freezing and the published BatchNorm behaviour, rebuilding from a state dict; and the encoder maps
(what POD distils) of the ConViT DyTox."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from support import SMALL

from continual.model.build import grown_model
from continual.model.config import ModelConfig
from continual.model.dytox import DyTox
from continual.model.layers import TaskAttentionBlock

RESNET = ModelConfig(embed_dim=504, num_heads=12, depth=2, local_up_to_layer=1, patch_size=4, input_size=32,
                     encoder="resnet18", head_div=True, head_div_mode=("tr",))


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def resnet_dytox() -> DyTox:
    """Three tasks (two expansions); tests copy it before changing it."""
    torch.manual_seed(0)
    return grown_model(RESNET, [3, 2, 2])


def test_embed_dim_must_be_the_resnets_504() -> None:
    with pytest.raises(ValueError, match="504"):
        DyTox(dataclasses.replace(RESNET, embed_dim=384), 3)


def test_forward_shapes_and_the_four_resnet_maps(resnet_dytox: DyTox) -> None:
    model = copy.deepcopy(resnet_dytox).eval()
    with torch.no_grad():
        out = model(images())
    assert out.logits.shape == (2, 7)
    assert out.task_embeddings.shape == (3, 2, 504)
    assert [tuple(m.shape) for m in out.encoder_maps] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4),
                                                          (2, 256, 4, 4)]
    torch.testing.assert_close(out.encoder_maps[3], out.encoder_maps[2].relu(), rtol=0, atol=0)


def test_one_tab_of_12_heads_and_backbone_keys_only(resnet_dytox: DyTox) -> None:
    model = resnet_dytox
    assert len(model.tabs) == 1 and len(model.sabs) == 0
    tab = model.tabs[0]
    assert isinstance(tab, TaskAttentionBlock) and tab.attn.num_heads == 12
    assert tab.mlp.fc1.out_features == 4 * 504
    keys = list(model.state_dict())
    assert any(k.startswith("backbone.") for k in keys)
    assert "backbone.bn1.running_mean" in keys and "backbone.head.3.weight" in keys
    assert not [k for k in keys if k.startswith(("patch_embed", "pos_embed", "sabs"))]
    assert {k.split(".")[0] for k in keys} == {"backbone", "tabs", "task_tokens", "head", "head_div"}


def decoding_outputs(model: DyTox, train: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Logits, divergence logits and (in training) gradients of one forward after the same seed."""
    model.train(train)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    with torch.set_grad_enabled(train):
        out = model(images())
    if not train:
        return out.logits, out.div_logits, {}
    weights = torch.linspace(-1, 1, out.logits.shape[1])
    ((out.logits * weights).mean() + out.div_logits.square().mean() + out.task_embeddings.square().mean()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.div_logits.detach(), grads


@pytest.mark.parametrize("train", [False, True])
def test_joint_decoding_equals_per_task_decoding(resnet_dytox: DyTox, train: bool) -> None:
    """Same weights, three task tokens; in training BatchNorm uses the batch statistics (the same batch for
    both) and every gradient agrees, to 1e-5 (absolute; gradients here are of order 1e-3..1)."""
    assert resnet_dytox.config.joint_tokens
    joint = copy.deepcopy(resnet_dytox)
    per_task = copy.deepcopy(resnet_dytox)
    per_task.set_arithmetic(fused=True, joint=False)
    assert not per_task.config.joint_tokens and joint.config.joint_tokens
    ref_logits, ref_div, ref_grads = decoding_outputs(per_task, train)
    logits, div, grads = decoding_outputs(joint, train)
    assert (logits - ref_logits).abs().max() <= 1e-5
    assert (div - ref_div).abs().max() <= 1e-5
    assert grads.keys() == ref_grads.keys()
    assert len(grads) == (len(list(joint.parameters())) if train else 0)
    for name, grad in grads.items():
        assert (grad - ref_grads[name]).abs().max() <= 1e-5, name


def test_freeze_sab_is_exactly_the_backbone(resnet_dytox: DyTox) -> None:
    model = copy.deepcopy(resnet_dytox)
    model.freeze(["sab"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    backbone = {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    assert len(backbone) > 50
    assert frozen == backbone


def test_frozen_backbone_still_moves_its_batchnorm_statistics_in_train_mode(resnet_dytox: DyTox) -> None:
    """As published: freezing only stops the gradients, and the training loop calls model.train() every
    epoch, so the BatchNorm running statistics of a frozen ResNet keep moving."""
    model = copy.deepcopy(resnet_dytox)
    model.freeze(["sab"])
    model.train()
    bn1 = model.backbone.bn1
    assert bn1.training and not bn1.weight.requires_grad
    before = bn1.running_mean.clone()
    with torch.no_grad():
        model(images())
        batch_mean = model.backbone.conv1(images()).mean((0, 2, 3))  # what bn1 normalised
    torch.testing.assert_close(bn1.running_mean, 0.9 * before + 0.1 * batch_mean, rtol=1e-5, atol=1e-7)
    assert (bn1.running_mean - before).abs().max() > 1e-5


def test_the_teacher_frozen_with_all_keeps_its_batchnorm_statistics(resnet_dytox: DyTox) -> None:
    model = copy.deepcopy(resnet_dytox).train()
    model.freeze(["all"])
    assert not model.training and not model.backbone.bn1.training
    before = {n: b.clone() for n, b in model.named_buffers()}
    with torch.no_grad():
        model(images())
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())


def test_grown_model_reproduces_the_outputs_from_a_state_dict(resnet_dytox: DyTox) -> None:
    model = grown_model(RESNET, [2, 2])
    with torch.no_grad():
        model.train()(images())  # running statistics away from their initial 0 and 1
    assert (model.backbone.bn1.running_var - 1).abs().min() > 1e-2
    rebuilt = grown_model(RESNET, [2, 2], model.state_dict())
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        out, again = model(images()), rebuilt(images())
    torch.testing.assert_close(again.logits, out.logits, rtol=0, atol=0)
    torch.testing.assert_close(again.div_logits, out.div_logits, rtol=0, atol=0)
    for ours, theirs in zip(again.encoder_maps, out.encoder_maps, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# ------------------------------------------------------------ ConViT encoder maps

@pytest.mark.parametrize("local_up_to_layer", [1, 3])
def test_convit_encoder_maps_are_every_sab_output_but_the_last(local_up_to_layer: int) -> None:
    config = dataclasses.replace(SMALL, depth=4, local_up_to_layer=local_up_to_layer)
    model = grown_model(config, [4, 3]).eval()
    x = images(5, 16)
    with torch.no_grad():
        maps = model(x).encoder_maps
        assert [tuple(m.shape) for m in maps] == [(5, 16, 48)] * (local_up_to_layer - 1)
        if local_up_to_layer == 1:
            return
        patches = model.patch_embed(x) + model.pos_embed  # (B, N, D)
        first = model.sabs[0](patches, masks=(None, None))
        second = model.sabs[1](first, masks=(None, None))
    torch.testing.assert_close(maps[0], first, rtol=0, atol=0)
    torch.testing.assert_close(maps[1], second, rtol=0, atol=0)
    assert (maps[1] - maps[0]).abs().max() > 1e-3  # two different blocks' outputs
