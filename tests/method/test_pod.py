"""Tests of the PODNet spatial distillation (continual.method.pod), against hand numbers and loop re-implementations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from continual.method.pod import local_pod, pod_loss, pod_map, pod_weight


def _random(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _loop_embedding(x: torch.Tensor, b: int, scales: list[int]) -> list[float]:
    """Sample b of a (B, C, H, W) map, pooled with explicit loops and python sums."""
    channels, width = x.shape[1], x.shape[3]
    values = x[b].tolist()
    emb: list[float] = []
    for scale in scales:
        k = width // scale
        for i in range(scale):
            for j in range(scale):
                rows, cols = range(i * k, (i + 1) * k), range(j * k, (j + 1) * k)
                for c in range(channels):  # horizontal: one mean per row of the window
                    emb += [sum(values[c][r][q] for q in cols) / k for r in rows]
                for c in range(channels):  # vertical: one mean per column of the window
                    emb += [sum(values[c][r][q] for r in rows) / k for q in cols]
    return emb


def _loop_pod(feats: list[torch.Tensor], old_feats: list[torch.Tensor], scales: list[int]) -> float:
    batch = feats[0].shape[0]
    per_sample = [0.0] * batch
    for feat, old_feat in zip(feats, old_feats, strict=True):
        for b in range(batch):
            emb, old_emb = _loop_embedding(feat, b, scales), _loop_embedding(old_feat, b, scales)
            norm, old_norm = math.sqrt(sum(v * v for v in emb)), math.sqrt(sum(v * v for v in old_emb))
            squares = [(u / norm - v / old_norm) ** 2 for u, v in zip(emb, old_emb, strict=True)]
            per_sample[b] += math.sqrt(sum(squares))
    return sum(per_sample) / batch / len(feats)


def _published_tokens_scale_one(tokens: torch.Tensor, old_tokens: torch.Tensor) -> torch.Tensor:
    """The published compute_pod + pod_loss for one token layer at scale 1, written out."""
    def embed(t: torch.Tensor) -> torch.Tensor:
        bs, nb_tokens, dim = t.shape
        w = int(math.sqrt(nb_tokens))
        x = t.view(bs, w, w, dim)
        return F.normalize(torch.cat([x.mean(dim=3).view(bs, -1), x.mean(dim=2).view(bs, -1)], dim=1), p=2, dim=-1)
    return (embed(tokens) - embed(old_tokens)).norm(dim=-1).mean()


# ----------------------------------------------------------------- values


def test_identical_features_give_zero() -> None:
    maps, tokens = _random(2, 3, 4, 4), _random(2, 9, 5, seed=1)
    assert pod_loss([maps], [maps.clone()], scales=[1, 2]).item() == pytest.approx(0.0, abs=1e-12)
    assert pod_loss([tokens], [tokens.clone()]).item() == pytest.approx(0.0, abs=1e-12)
    assert pod_loss([tokens], [tokens.clone()], scales=[1, 3], tokens_as_maps=True).item() == \
        pytest.approx(0.0, abs=1e-12)


def test_one_2x2_map_matches_hand_computation() -> None:
    student = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    teacher = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # student: row means [1.5, 3.5], column means [2, 3]; teacher: [0.5, 0.5], [0.5, 0.5]
    assert local_pod(student, [1]).tolist() == [[1.5, 3.5, 2.0, 3.0]]
    norm = math.sqrt(1.5 ** 2 + 3.5 ** 2 + 2.0 ** 2 + 3.0 ** 2)
    expected = math.sqrt(sum((v / norm - 0.5) ** 2 for v in (1.5, 3.5, 2.0, 3.0)))
    assert pod_loss([student], [teacher]).item() == pytest.approx(expected, rel=1e-6)


def test_maps_match_a_loop_implementation_at_scales_1_and_2() -> None:
    feats = [_random(2, 3, 4, 4, seed=2), _random(2, 2, 6, 6, seed=3)]
    old_feats = [_random(2, 3, 4, 4, seed=4), _random(2, 2, 6, 6, seed=5)]
    expected = _loop_pod(feats, old_feats, [1, 2])
    assert pod_loss(feats, old_feats, scales=[1, 2]).item() == pytest.approx(expected, rel=1e-10)


def test_default_token_layout_is_the_published_formula() -> None:
    tokens, old_tokens = _random(3, 9, 5, seed=6), _random(3, 9, 5, seed=7)
    published = _published_tokens_scale_one(tokens, old_tokens)
    assert pod_loss([tokens], [old_tokens]).item() == pytest.approx(published.item(), rel=1e-10)
    assert pod_map(tokens).shape == (3, 3, 3, 5)  # (B, w, w, D): D pooled as a spatial axis
    corrected = pod_loss([tokens], [old_tokens], tokens_as_maps=True).item()
    assert abs(corrected - published.item()) > 1e-3


def test_corrected_token_layout_is_the_map_computation_on_the_grid() -> None:
    maps, old_maps = _random(2, 3, 4, 4, seed=8), _random(2, 3, 4, 4, seed=9)  # (B, D, rows, cols)
    tokens, old_tokens = maps.flatten(2).transpose(1, 2), old_maps.flatten(2).transpose(1, 2)  # n = row * 4 + col
    assert torch.equal(pod_map(tokens, tokens_as_maps=True), maps)
    expected = pod_loss([maps], [old_maps], scales=[1, 2]).item()
    assert pod_loss([tokens], [old_tokens], scales=[1, 2], tokens_as_maps=True).item() == \
        pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(_loop_pod([maps], [old_maps], [1, 2]), rel=1e-10)


# ----------------------------------------------------------------- errors


def test_scale_2_on_published_token_layout_raises_instead_of_nan() -> None:
    tokens, old_tokens = _random(2, 4, 8, seed=10), _random(2, 4, 8, seed=11)
    assert torch.isnan(local_pod(pod_map(tokens), [1, 2])).any()  # what the published run computes
    with pytest.raises(ValueError, match="corrected layout"):
        pod_loss([tokens], [old_tokens], scales=[1, 2])
    assert torch.isfinite(pod_loss([tokens], [old_tokens], scales=[1, 2], tokens_as_maps=True))


def test_bad_inputs_raise() -> None:
    maps = _random(2, 3, 4, 4)
    with pytest.raises(ValueError, match="layers"):
        pod_loss([maps, maps], [maps])
    with pytest.raises(ValueError, match="no features"):
        pod_loss([], [])
    with pytest.raises(ValueError, match="square"):
        pod_loss([_random(2, 5, 4)], [_random(2, 5, 4)])
    with pytest.raises(ValueError, match="differ"):
        pod_loss([maps], [_random(2, 3, 2, 2)])
    with pytest.raises(ValueError, match="empty windows"):
        pod_loss([maps], [maps], scales=[8])


# ----------------------------------------------------------------- gradients and weight


def test_gradients_reach_the_student_and_not_the_teacher() -> None:
    student = _random(2, 9, 4, seed=12).requires_grad_(True)
    teacher = _random(2, 9, 4, seed=13).requires_grad_(True)
    pod_loss([student], [teacher], scales=[1, 2], tokens_as_maps=True).backward()
    assert student.grad is not None and student.grad.abs().sum().item() > 0
    assert teacher.grad is None


def test_pod_weight() -> None:
    assert pod_weight(0.5, False, 10, 40) == 0.5
    assert pod_weight(0.5, True, 10, 40) == pytest.approx(0.25)
    assert pod_weight(1.0, True, 10, 100) == pytest.approx(math.sqrt(0.1))
    with pytest.raises(ValueError):
        pod_weight(1.0, True, 10, 0)
