"""PODNet spatial distillation (``--pod``), as the published DyTox computes it.

Each feature map is pooled over its last two axes, at every scale ``s`` on an
``s x s`` grid of windows: the window's mean along the last axis (horizontal)
and along the one before (vertical) are concatenated into one embedding per
sample. Student and teacher embeddings are L2-normalised, and the loss is the
per-sample L2 distance, summed over layers, averaged over the batch and divided
by the number of layers.

Layout quirk of the published code: transformer tokens (B, N, D) are viewed as
(B, w, w, D) with w = sqrt(N), so the pooling runs over (w, D), the channel axis
D acting as the second spatial axis and setting the window width. That is the
default here; ``tokens_as_maps=True`` pools real (B, D, w, w) maps instead.
With the published layout any scale > 1 makes windows empty along the token
axis, whose mean is NaN ('Loss is nan' in the published run): that case raises.

Pure functions of tensors: callers pass the features, nothing here knows models.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "local_pod",
    "pod_loss",
    "pod_map",
    "pod_weight",
]


def pod_weight(pod: float, scaling: bool, nb_new_classes: int, nb_classes: int) -> float:
    """Weight of the POD term: ``pod * sqrt(new / all classes)`` with ``--pod-scaling``, else ``pod``."""
    if not scaling:
        return pod
    if nb_classes <= 0 or not 0 <= nb_new_classes <= nb_classes:
        raise ValueError(f"pod_weight: need 0 <= nb_new_classes <= nb_classes and nb_classes > 0, "
                         f"got {nb_new_classes} and {nb_classes}")
    return pod * math.sqrt(nb_new_classes / nb_classes)


def pod_map(feat: Tensor, tokens_as_maps: bool = False) -> Tensor:
    """The 4-dim tensor that is pooled: CNN maps as they are, tokens (B, N, D) made square.

    Default, as published: (B, w, w, D). With ``tokens_as_maps``: channels first
    (B, D, w, w), token n = row * w + col.
    """
    if feat.dim() == 4:
        return feat
    if feat.dim() != 3:
        raise ValueError(f"pod: features must be maps (B, C, H, W) or tokens (B, N, D), got {tuple(feat.shape)}")
    batch, nb_tokens, dim = feat.shape
    side = math.isqrt(nb_tokens)
    if side * side != nb_tokens:
        raise ValueError(f"pod: {nb_tokens} tokens are not a square grid")
    grid = feat.reshape(batch, side, side, dim)  # (B, row, col, D)
    return grid.permute(0, 3, 1, 2) if tokens_as_maps else grid


def _check_windows(x: Tensor, scales: Sequence[int], published_tokens: bool) -> None:
    """Every window must be non-empty on both pooled axes, otherwise its mean is NaN."""
    if not scales:
        raise ValueError("pod: pod_scales is empty")
    height, width = x.shape[-2], x.shape[-1]
    for scale in scales:
        if scale < 1:
            raise ValueError(f"pod: scales must be >= 1, got {scale}")
        k = width // scale
        if k == 0 or (scale - 1) * k >= height:  # the last row of windows starts past the end
            hint = (" pod_scales > 1 on transformer features need the corrected layout (tokens_as_maps=True)"
                    if published_tokens else "")
            raise ValueError(f"pod: scale {scale} on a {height}x{width} grid gives empty windows "
                             f"(NaN means).{hint}")


def local_pod(x: Tensor, scales: Sequence[int]) -> Tensor:
    """Published ``_local_pod``: (B, ..., H, W) -> (B, E) window means over the last two axes.

    For each scale s the window side is k = W // s (the width sets it for both
    axes); windows in row-major order, each giving its mean over the last axis
    then its mean over the axis before, flattened per sample.
    """
    batch = x.shape[0]
    pooled = []
    for scale in scales:
        k = x.shape[-1] // scale
        for i in range(scale):
            for j in range(scale):
                window = x[..., i * k:(i + 1) * k, j * k:(j + 1) * k]
                pooled.append(window.mean(dim=-1).reshape(batch, -1))  # horizontal
                pooled.append(window.mean(dim=-2).reshape(batch, -1))  # vertical
    return torch.cat(pooled, dim=1)


def pod_loss(feats: Sequence[Tensor], old_feats: Sequence[Tensor], scales: Sequence[int] = (1,),
             tokens_as_maps: bool = False) -> Tensor:
    """POD distance between the student's features and the (detached) teacher's, one tensor per layer.

    Per layer: L2 distance of the L2-normalised ``local_pod`` embeddings, (B,);
    summed over layers, mean over the batch, divided by the number of layers.
    """
    if len(feats) != len(old_feats):
        raise ValueError(f"pod: {len(feats)} student layers but {len(old_feats)} teacher layers")
    if not feats:
        raise ValueError("pod: no features given")
    total: Tensor | None = None
    for feat, old_feat in zip(feats, old_feats, strict=True):
        if feat.shape != old_feat.shape:
            raise ValueError(f"pod: student {tuple(feat.shape)} and teacher {tuple(old_feat.shape)} differ")
        x, old_x = pod_map(feat, tokens_as_maps), pod_map(old_feat.detach(), tokens_as_maps)
        _check_windows(x, scales, published_tokens=feat.dim() == 3 and not tokens_as_maps)
        emb = F.normalize(local_pod(x, scales), p=2, dim=-1)  # (B, E)
        old_emb = F.normalize(local_pod(old_x, scales), p=2, dim=-1)  # (B, E)
        distance = torch.linalg.vector_norm(emb - old_emb, ord=2, dim=-1)  # (B,)
        total = distance if total is None else total + distance
    assert total is not None
    return total.mean() / len(feats)
