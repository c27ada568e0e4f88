"""--norm scale: ScaleNorm's formula and clamp, the norm lookup, and where a DyTox puts ScaleNorms."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from support import SMALL
from torch import nn

from continual.model.build import count_parameters
from continual.model.dytox import DyTox
from continual.model.layers import ScaleNorm, norm_layer


def test_scale_norm_is_x_over_its_norm_times_g() -> None:
    norm = ScaleNorm(2)
    assert norm.g.shape == (1,) and norm.g.item() == 1.0
    x = torch.tensor([[3.0, 4.0], [-6.0, 8.0]])
    torch.testing.assert_close(norm(x), torch.tensor([[0.6, 0.8], [-0.6, 0.8]]), rtol=0, atol=1e-7)
    with torch.no_grad():
        norm.g.fill_(2.5)
    torch.testing.assert_close(norm(x), torch.tensor([[1.5, 2.0], [-1.5, 2.0]]), rtol=0, atol=1e-6)
    y = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ScaleNorm(16)(y), y / y.norm(dim=-1, keepdim=True), rtol=1e-6, atol=1e-7)


def test_scale_norm_clamps_tiny_norms_to_eps() -> None:
    norm = ScaleNorm(2)  # eps 1e-5
    assert norm.eps == 1e-5
    x = torch.tensor([[1e-7, 0.0], [0.0, 0.0]])
    out = norm(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([[1e-2, 0.0], [0.0, 0.0]]), rtol=1e-6, atol=0)  # x / 1e-5
    torch.testing.assert_close(ScaleNorm(2, eps=1e-3)(x), torch.tensor([[1e-4, 0.0], [0.0, 0.0]]), rtol=1e-6,
                               atol=0)


def test_scale_norm_learns_its_scale() -> None:
    norm = ScaleNorm(4)
    x = torch.tensor([[1.0, 2.0, 2.0, 4.0]])  # norm 5
    norm(x).sum().backward()
    torch.testing.assert_close(norm.g.grad, torch.tensor([9.0 / 5.0]))


def test_norm_layer_looks_the_kind_up_and_rejects_unknown_kinds() -> None:
    layer = norm_layer("layer", 8)
    assert type(layer) is nn.LayerNorm and layer.normalized_shape == (8,)
    assert type(norm_layer("scale", 8)) is ScaleNorm
    with pytest.raises(ValueError, match="batch"):
        norm_layer("batch", 8)


def test_dytox_with_scale_norm_has_it_in_every_block_and_layer_norm_in_the_heads() -> None:
    """As published, --norm scale changes the blocks' norms; the heads keep their LayerNorm."""
    model = DyTox(dataclasses.replace(SMALL, norm="scale"), 4)
    model.expand(3)
    blocks = [*model.sabs, *model.tabs]
    assert len(blocks) == SMALL.depth
    assert all(type(block.norm1) is ScaleNorm and type(block.norm2) is ScaleNorm for block in blocks)
    heads = [*model.head, model.head_div]
    assert len(heads) == 3
    assert all(type(head.norm) is nn.LayerNorm for head in heads)
    assert {type(m) for m in model.modules() if isinstance(m, (nn.LayerNorm, ScaleNorm))} == {nn.LayerNorm, ScaleNorm}
    assert model(torch.randn(2, 3, 16, 16)).logits.shape == (2, 7)


def test_scale_norm_dytox_has_2d_minus_1_fewer_parameters_per_block_norm() -> None:
    d = SMALL.embed_dim
    layer, scale = (DyTox(dataclasses.replace(SMALL, norm=kind), 4) for kind in ("layer", "scale"))
    layer.expand(3)
    scale.expand(3)
    difference = count_parameters(layer)["total"] - count_parameters(scale)["total"]
    assert difference == 2 * SMALL.depth * (2 * d - 1)
    assert difference == 570
