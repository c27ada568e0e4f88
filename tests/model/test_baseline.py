"""The baseline of the ablation (``dytox: false``): shapes, the growing classifier, parameter counts, exact
fast paths in training, the published freezing and its round trip through a state dict, the head's reset."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from timm.layers import Attention
from torch import nn

from continual.model.baseline import GrowingClassifier, IncrementalClassifier
from continual.model.build import count_parameters, grown_model
from continual.model.config import ModelConfig
from continual.model.dytox import DyTox
from continual.model.layers import ScaleNorm

D = 32
BASELINE = ModelConfig(embed_dim=D, depth=3, num_heads=4, patch_size=4, input_size=16, local_up_to_layer=2,
                       dytox=False)
ENCODERS = {
    "convit_class_attention": BASELINE,
    "convit_self_attention": dataclasses.replace(BASELINE, class_attention=False),
    "vit": dataclasses.replace(BASELINE, encoder="vit"),
}


def images(batch: int = 6, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def frozen_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


# ------------------------------------------------------------------ forward and growth

@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_forward_gives_logits_and_one_task_embedding(encoder: str) -> None:
    model = grown_model(ENCODERS[encoder], [5, 2])
    out = model(images())
    assert out.logits.shape == (6, 7)
    assert out.task_embeddings.shape == (1, 6, D)
    assert out.div_logits is None and out.encoder_maps == ()
    assert not model.divergence_active() and model.nb_tasks == 2 and model.nb_classes == 7
    # The "task embedding" is the feature the classifier reads: the logits are the head of it.
    torch.testing.assert_close(out.logits, model.head(out.task_embeddings[0]), rtol=0, atol=0)


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_expand_keeps_old_logits_and_copies_old_rows_exactly(encoder: str) -> None:
    model = IncrementalClassifier(ENCODERS[encoder], 4).eval()
    x = images()
    old_weight = model.head.head.weight.detach().clone()
    old_bias = model.head.head.bias.detach().clone()
    with torch.no_grad():
        before = model(x).logits
        model.expand(3)
        after = model(x).logits
    assert model.head.head.weight.shape == (7, D) and model.head.head.bias.shape == (7,)
    assert model.nb_classes_per_task == [4, 3]
    assert torch.equal(model.head.head.weight[:4], old_weight)
    assert torch.equal(model.head.head.bias[:4], old_bias)
    new_rows = model.head.head.weight[4:]
    assert (new_rows != 0).any(dim=1).all()  # every new row is drawn, none left at zero
    assert not torch.equal(new_rows[0], new_rows[1])
    torch.testing.assert_close(after[:, :4], before, rtol=0, atol=0)
    assert (after[:, 4:] - after[:, :1]).abs().max() > 1e-4  # the new classes have logits of their own


def test_expand_rejects_no_new_classes_and_keeps_the_dtype() -> None:
    model = IncrementalClassifier(BASELINE, 4)
    with pytest.raises(ValueError, match="positive"):
        model.expand(0)
    assert model.nb_classes_per_task == [4] and model.head.head.out_features == 4
    model = model.double()
    model.expand(2)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(images().double()).logits.dtype == torch.float64


def test_growing_classifier_is_layernorm_then_linear() -> None:
    classifier = GrowingClassifier(D, 3)
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(2))
    expected = nn.functional.linear(nn.functional.layer_norm(x, (D,)), classifier.head.weight, classifier.head.bias)
    torch.testing.assert_close(classifier(x), expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------- parameter counts

def test_baseline_has_dytox_parameters_plus_the_final_norm_and_grows_by_one_row_per_class() -> None:
    """Same encoder and one classifier: the baseline has a class token where DyTox has its first task token,
    and a final LayerNorm (2 D) that DyTox lacks. Each new class adds one row of D weights and a bias."""
    baseline = count_parameters(IncrementalClassifier(BASELINE, 5))["total"]
    dytox = count_parameters(DyTox(dataclasses.replace(BASELINE, dytox=True), 5))["total"]
    assert baseline - dytox == 2 * D
    assert baseline == 40_269
    model = IncrementalClassifier(BASELINE, 5)
    model.expand(3)
    counts = count_parameters(model)
    assert counts["total"] - baseline == 3 * (D + 1)
    assert counts["trainable"] == counts["without_head_div"] == counts["total"]


@pytest.mark.parametrize("class_attention", [True, False])
def test_scale_norm_takes_one_parameter_where_layer_norm_takes_two_d(class_attention: bool) -> None:
    """Seven norms become ScaleNorms (two per block, depth 3, and the encoder's final norm, as the published
    ConViT), in the GPSA blocks and in the later blocks (TABs, or timm's Blocks, which build their norms
    with device and dtype keywords); the classifier's LayerNorm stays."""
    config = dataclasses.replace(BASELINE, class_attention=class_attention)
    layer = count_parameters(IncrementalClassifier(config, 5))["total"]
    scale_model = IncrementalClassifier(dataclasses.replace(config, norm="scale"), 5)
    assert layer - count_parameters(scale_model)["total"] == 7 * (2 * D - 1)
    scale_norms = [n for n, m in scale_model.named_modules() if isinstance(m, ScaleNorm)]
    assert len(scale_norms) == 7 and "encoder.norm" in scale_norms and "encoder.blocks.2.norm1" in scale_norms
    assert isinstance(scale_model.head.norm, nn.LayerNorm)
    assert scale_model(images()).logits.shape == (6, 5)


# ------------------------------------------------------------------ fast vs plain arithmetic

def training_step(model: IncrementalClassifier, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and gradients of a training forward whose stochastic depth is drawn after the same seed."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    out = model(x)
    weights = torch.linspace(-1, 1, out.logits.shape[1])
    ((out.logits * weights).mean() + out.task_embeddings.square().mean()).backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("freeze", [[], ["sab"]])
def test_fused_attention_trains_like_the_published_arithmetic(freeze: list[str]) -> None:
    """Class-attention ConViT baseline in training mode with stochastic depth 0.2: the same logits and
    gradients (1e-5 relative). pos_proj.bias is held to an absolute bound: its true gradient is zero
    (a per-head shift of the positional scores cancels in the softmax), so what is left is rounding."""
    config = dataclasses.replace(BASELINE, drop_path=0.2)
    plain = grown_model(config, [5, 3]).train()
    plain.set_arithmetic(fused=False, joint=False)
    plain.freeze(freeze)
    fused = copy.deepcopy(plain)
    fused.set_arithmetic(fused=True, joint=True)
    x = images(8)
    ref_logits, ref_grads = training_step(plain, x)
    logits, grads = training_step(fused, x)
    assert (logits - ref_logits).abs().max() <= 1e-5 * ref_logits.abs().max()
    assert grads.keys() == ref_grads.keys()
    assert grads.keys() == {n for n, p in plain.named_parameters() if p.requires_grad}
    for name, grad in grads.items():
        if name.endswith("pos_proj.bias"):
            assert (grad - ref_grads[name]).abs().max() <= 1e-7, name
        else:
            assert (grad - ref_grads[name]).norm() <= 1e-5 * ref_grads[name].norm(), name
    # Stochastic depth was on: another seed gives other logits.
    torch.manual_seed(8)
    assert (plain(x).logits.detach() - ref_logits).abs().max() > 1e-4


# ---------------------------------------------------------------------------- freezing

def sab_names(model: IncrementalClassifier) -> set[str]:
    return {n for n, _ in model.named_parameters()
            if n.startswith(("encoder.patch_embed.", "encoder.pos_embed", "encoder.blocks.0.", "encoder.blocks.1."))}


def head_names(model: IncrementalClassifier) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith("head.")}


def test_published_freezing_keeps_what_was_frozen() -> None:
    model = grown_model(BASELINE, [4, 3])
    assert len(sab_names(model)) > 10  # the names below are those of real parameters
    model.freeze(["sab"])
    assert frozen_names(model) == sab_names(model)
    model.freeze([])
    assert frozen_names(model) == sab_names(model)
    model.freeze(["heads"])
    assert frozen_names(model) == sab_names(model) | head_names(model)
    model.expand(2)  # the new classifier rows are frozen too: "heads" stays frozen
    assert frozen_names(model) == sab_names(model) | head_names(model)


def test_exact_freezing_freezes_exactly_the_named_parts() -> None:
    model = grown_model(dataclasses.replace(BASELINE, exact_freeze=True), [4, 3])
    model.freeze(["sab"])
    assert frozen_names(model) == sab_names(model)
    model.freeze(["heads"])
    assert frozen_names(model) == head_names(model)
    model.freeze([])
    assert frozen_names(model) == set()


def test_tab_freezes_the_later_blocks() -> None:
    model = grown_model(dataclasses.replace(BASELINE, exact_freeze=True), [4, 3])
    model.freeze(["tab"])
    assert frozen_names(model) == {n for n, _ in model.named_parameters() if n.startswith("encoder.blocks.2.")}


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_backbone_freezes_the_encoder_but_its_class_token(encoder: str) -> None:
    model = grown_model(ENCODERS[encoder], [4, 3])
    model.freeze(["backbone"])
    encoder_names = {n for n, _ in model.named_parameters() if n.startswith("encoder.")}
    assert "encoder.cls_token" in encoder_names and "encoder.norm.weight" in encoder_names
    assert frozen_names(model) == encoder_names - {"encoder.cls_token"}
    assert model.training  # only "all" changes the mode
    out = model(images())
    out.logits.square().mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n not in frozen_names(model))


def test_vit_has_no_sab_and_names_the_valid_freeze_names() -> None:
    model = grown_model(ENCODERS["vit"], [4, 3])
    model.freeze(["heads"])
    with pytest.raises(ValueError, match=r"'sab'.*valid names: \['all', 'backbone', 'heads'\]"):
        model.freeze(["sab"])
    assert frozen_names(model) == head_names(model)  # nothing changed


def test_freeze_all_is_the_teacher_in_eval_mode() -> None:
    model = grown_model(BASELINE, [4, 3]).train()
    model.freeze(["all"])
    assert not model.training and not any(m.training for m in model.modules())
    assert frozen_names(model) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("exact", [False, True])
def test_the_frozen_set_survives_a_saved_state_dict(exact: bool, tmp_path: Path) -> None:
    """The published freezing depends on the phases run so far (what was frozen stays frozen), so a rebuilt
    model must freeze what the saved one froze, not only hold its weights."""
    config = dataclasses.replace(BASELINE, exact_freeze=exact)
    model = grown_model(config, [2, 3])
    model.freeze(["sab"])
    model.freeze(["heads"])
    expected = sab_names(model) | head_names(model) if not exact else head_names(model)
    assert frozen_names(model) == expected
    torch.save(model.state_dict(), tmp_path / "model.pth")
    weights = torch.load(tmp_path / "model.pth", weights_only=True)
    rebuilt = grown_model(config, [2, 3], weights)
    assert {n: p.requires_grad for n, p in rebuilt.named_parameters()} == \
        {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images()).logits, model(images()).logits, rtol=0, atol=0)


# ------------------------------------------------------------------------ the head's reset

def test_reset_heads_draws_the_classifier_with_the_vit_initialisation() -> None:
    config = ModelConfig(embed_dim=256, depth=2, num_heads=4, patch_size=8, input_size=16, local_up_to_layer=1,
                         dytox=False)
    model = IncrementalClassifier(config, 50)
    with torch.no_grad():
        model.head.norm.weight.fill_(3.0)
        model.head.norm.bias.fill_(1.0)
    before = model.head.head.weight.detach().clone()
    assert abs(before.std().item() - 0.0361) < 0.001  # PyTorch's default: uniform in +-1/16, std 1/16/sqrt(3)
    encoder_before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    model.reset_heads()
    weight, bias = model.head.head.weight.detach(), model.head.head.bias.detach()
    assert weight.shape == (50, 256)
    assert abs(weight.std().item() - 0.02) < 0.001 and abs(weight.mean().item()) < 0.001
    assert torch.equal(bias, torch.zeros(50))
    assert torch.equal(model.head.norm.weight.detach(), torch.ones(256))
    assert torch.equal(model.head.norm.bias.detach(), torch.zeros(256))
    assert not torch.isclose(weight, before).any()
    assert all(torch.equal(p, encoder_before[n]) for n, p in model.encoder.named_parameters())


# ----------------------------------------------------------------------- configurations

def test_configurations_pair_each_network_with_its_encoders() -> None:
    with pytest.raises(ValueError, match="ViT"):
        dataclasses.replace(BASELINE, dytox=True, encoder="vit")
    with pytest.raises(ValueError, match="ResNet-18"):
        dataclasses.replace(BASELINE, encoder="resnet18")
    with pytest.raises(ValueError, match="dytox false"):
        IncrementalClassifier(dataclasses.replace(BASELINE, dytox=True), 4)
    with pytest.raises(ValueError, match="encoder"):
        dataclasses.replace(BASELINE, encoder="resnet50")


def test_the_self_attention_baseline_switches_timms_attention_too() -> None:
    config = dataclasses.replace(BASELINE, class_attention=False, fused_attention=False)
    model = IncrementalClassifier(config, 3)
    timm_attention = [m for m in model.modules() if isinstance(m, Attention)]
    assert timm_attention and not any(m.fused_attn for m in timm_attention)
    model.set_arithmetic(True, True)
    assert all(m.fused_attn for m in timm_attention)
