"""Building blocks of DyTox: patch embedding, ConViT GPSA blocks, class-attention blocks.

Parameter names follow the published DyTox code (``qk``, ``v``, ``pos_proj``,
``gating_param``, ``q``/``k``/``v`` in class attention, ``mlp.fc1``...) so that
its checkpoints load without renaming.

Every attention layer and block has two paths that compute the same function,
chosen when it is built and kept in its ``fused`` attribute (as timm's
``fused_attn``): True is the fast path (one projection GEMM for Q, K and V, the
positional map once per forward, fused attention kernels), False is the
published arithmetic step by step (kept for tests and as the baseline of the
benchmarks). Tests flip the attribute and compare.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention, Mlp, trunc_normal_
from torch import Tensor, nn


def init_linear_and_norm(module: nn.Module) -> None:
    """ViT initialisation: truncated-normal linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ScaleNorm(nn.Module):
    """``--norm scale``: x / ||x|| times one learned scalar (init 1), the published alternative to LayerNorm."""

    def __init__(self, dim: int, eps: float = 1e-5, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=self.eps) * self.g


NORM_LAYERS: dict[str, type[nn.Module]] = {"layer": nn.LayerNorm, "scale": ScaleNorm}


def norm_layer(kind: str, dim: int) -> nn.Module:
    """The blocks' normalisation: LayerNorm ("layer") or ScaleNorm ("scale")."""
    if kind not in NORM_LAYERS:
        raise ValueError(f"norm must be one of {sorted(NORM_LAYERS)}, got {kind!r}")
    return NORM_LAYERS[kind](dim)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, C) -> (B, H, N, C // H)."""
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, num_heads, channels // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, d) -> (B, N, H * d)."""
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def attention(
    q: Tensor, k: Tensor, v: Tensor, *, fused: bool, dropout: float = 0.0, mask: Tensor | None = None
) -> Tensor:
    """softmax(q k^T / sqrt(d) [masked]) v for (B, H, Nq, d) queries and (B, H, Nk, d) keys/values.

    ``mask`` is boolean, broadcastable to (B, H, Nq, Nk), True where attention is allowed.
    With attention dropout the plain path runs, so that both paths draw the same dropout mask.
    """
    if fused and dropout == 0.0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), p=dropout)
    return weights @ v


class GeluThenLinear(torch.autograd.Function):
    """linear(gelu(h), W, b) that keeps only h for the backward pass and recomputes gelu(h) there.

    The plain MLP keeps both h and gelu(h), each four times the block width: at
    64 tokens this halves the MLP's share of training memory for one extra GELU.
    """

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(hidden, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.gelu(hidden), weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        hidden, weight = ctx.saved_tensors
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.ops.aten.gelu_backward(grad_out @ weight, hidden)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_out.flatten(0, -2).T @ F.gelu(hidden).flatten(0, -2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.flatten(0, -2).sum(0)
        return grad_hidden, grad_weight, grad_bias


class MixedAttention(torch.autograd.Function):
    """lerp(softmax(Q K^T / sqrt(d)), P, s) V keeping only Q, K, V and the content map for the backward pass.

    Autograd would also keep the mixed map (B, H, N, N) and a scaled copy of Q;
    here the mixed map is recomputed from the content map in the backward pass.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, positional: Tensor, gate: Tensor) -> Tensor:
        scale = q.shape[-1] ** -0.5
        content = (q @ k.transpose(-2, -1)).mul_(scale).softmax(dim=-1)  # (B, H, N, N)
        ctx.save_for_backward(q, k, v, content, positional, gate)
        return torch.lerp(content, positional, gate) @ v

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, content, positional, gate = ctx.saved_tensors
        grad_v = torch.lerp(content, positional, gate).transpose(-2, -1) @ grad_out
        grad_mixed = grad_out @ v.transpose(-2, -1)  # (B, H, N, N)
        grad_positional = (grad_mixed * gate).sum(0) if ctx.needs_input_grad[3] else None
        grad_gate = None
        if ctx.needs_input_grad[4]:
            grad_gate = (grad_mixed * (positional - content)).sum((0, 2, 3)).view_as(gate)
        grad_scores = torch._softmax_backward_data(grad_mixed.mul_(1.0 - gate), content, -1, content.dtype)
        grad_scores.mul_(q.shape[-1] ** -0.5)
        return grad_scores @ k, grad_scores.transpose(-2, -1) @ q, grad_v, grad_positional, grad_gate


def mlp_forward(mlp: Mlp, x: Tensor, fused: bool) -> Tensor:
    """timm's Mlp (fc1, GELU, fc2), through the memory-saving function when it computes the same thing:
    training without dropout or autocast (autocast would change the dtypes the backward sees)."""
    plain_only = (
        not fused
        or not torch.is_grad_enabled()
        or torch.is_autocast_enabled(x.device.type)
        or (mlp.training and (mlp.drop1.p > 0 or mlp.drop2.p > 0))
        or not isinstance(mlp.act, nn.GELU)
        or mlp.act.approximate != "none"
        or not isinstance(mlp.norm, nn.Identity)
    )
    if plain_only:
        return mlp(x)
    return GeluThenLinear.apply(mlp.fc1(x), mlp.fc2.weight, mlp.fc2.bias)


class PatchEmbed(nn.Module):
    """Strided convolution from an image to a sequence of patch tokens."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"input_size {img_size} is not a multiple of patch_size {patch_size}")
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, N, C)


def relative_offsets(num_patches: int) -> Tensor:
    """(N, N, 3) table of (dx, dy, dx^2 + dy^2) between patches of a square grid, patch j minus patch i."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"GPSA needs a square grid of patches, got {num_patches}")
    rows = torch.arange(num_patches) // side
    cols = torch.arange(num_patches) % side
    dx = (cols[None, :] - cols[:, None]).float()
    dy = (rows[None, :] - rows[:, None]).float()
    return torch.stack((dx, dy, dx**2 + dy**2), dim=-1)


# The fast forms of GPSA's attention (the same function, different arithmetic).
CONTENT_KERNELS = ("mixed", "sdpa")


class GPSA(nn.Module):
    """Gated positional self-attention (ConViT).

    attn_h = (1 - s_h) softmax(Q K^T / sqrt(d)) + s_h softmax(W_pos r), s_h = sigmoid(g_h),
    each row renormalised to sum to one. The published code computes the
    positional map for every sample; it does not depend on the sample, so the
    fast path computes it once per forward. The renormalisation divides by a
    convex combination of two softmaxes, i.e. by 1 up to rounding, so the fast
    path omits it. ``content_kernel`` picks the fast form when the layer is built:
    "sdpa", (1 - s) SDPA(Q, K, V) + s (P V), the GPU choice; "mixed", one mixed map
    times V, the CPU choice (``continual.runtime.device.attention_kernel_for``).
    """

    rel_offsets: Tensor

    def __init__(
        self,
        dim: int,
        num_patches: int,
        num_heads: int,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality_strength: float = 1.0,
        content_kernel: str = "mixed",
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.fused = fused
        if content_kernel not in CONTENT_KERNELS:
            raise ValueError(f"content_kernel must be one of {CONTENT_KERNELS}, got {content_kernel!r}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.content_kernel = content_kernel
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pos_proj = nn.Linear(3, num_heads)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        # Not saved: it is a function of the grid size, and the published checkpoints lack it.
        self.register_buffer("rel_offsets", relative_offsets(num_patches), persistent=False)
        self.apply(init_linear_and_norm)
        self.local_init(locality_strength)

    @torch.no_grad()
    def local_init(self, locality_strength: float) -> None:
        """Start as a convolution: V is the identity and head h attends to one neighbouring offset.

        The heads fill a k x k kernel with k = floor(sqrt(heads)); heads beyond k^2 keep their
        random init, as in ConViT.
        """
        self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
        kernel = int(self.num_heads**0.5)
        center = (kernel - 1) / 2 if kernel % 2 == 0 else kernel // 2
        for h1 in range(kernel):
            for h2 in range(kernel):
                head = h1 + kernel * h2
                self.pos_proj.weight[head, 2] = -1
                self.pos_proj.weight[head, 1] = 2 * (h1 - center)
                self.pos_proj.weight[head, 0] = 2 * (h2 - center)
        self.pos_proj.weight.mul_(locality_strength)

    def positional_attention(self) -> Tensor:
        """(H, N, N) softmax over keys of the projected relative offsets."""
        return self.pos_proj(self.rel_offsets).permute(2, 0, 1).softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        dropout = self.attn_drop if self.training else 0.0
        if not self.fused or dropout > 0.0:
            out = self._published_attention(x, dropout)
        else:
            q, k, v = self._fused_qkv(x)
            gate = torch.sigmoid(self.gating_param).view(-1, 1, 1)  # (H, 1, 1)
            if self.content_kernel == "sdpa":
                out = self._sdpa_attention(q, k, v, gate)
            else:
                out = self._mixed_attention(q, k, v, gate)
        return self.proj_drop(self.proj(merge_heads(out)))

    def _fused_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Q, K, V (B, H, N, d) from one GEMM over the concatenated ``qk`` and ``v`` weights."""
        batch, tokens, channels = x.shape
        weight = torch.cat((self.qk.weight, self.v.weight))
        bias = None if self.qk.bias is None else torch.cat((self.qk.bias, self.v.bias))
        qkv = F.linear(x, weight, bias).view(batch, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _sdpa_attention(self, q: Tensor, k: Tensor, v: Tensor, gate: Tensor) -> Tensor:
        """(1 - s) SDPA(Q, K, V) + (s P) V: the content half in a fused kernel (the GPU path)."""
        content = F.scaled_dot_product_attention(q, k, v)
        return (1.0 - gate) * content + (gate * self.positional_attention()).to(v.dtype) @ v

    def _mixed_attention(self, q: Tensor, k: Tensor, v: Tensor, gate: Tensor) -> Tensor:
        """lerp(softmax(Q K^T / sqrt(d)), P, s) V: one product with V and no renormalisation.

        On the CPU, at the 64 tokens of the CIFAR model, this beat the SDPA form
        (which needs a second product with V) by about 17 % in training and was on
        par in evaluation (one SAB, batch 128). With gradients it goes through
        ``MixedAttention``, which keeps less for the backward pass.
        """
        if torch.is_grad_enabled() and not torch.is_autocast_enabled(v.device.type):
            return MixedAttention.apply(q, k, v, self.positional_attention(), gate)
        content = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        positional = self.positional_attention().to(content.dtype)  # autocast leaves it in float32
        return torch.lerp(content, positional, gate.to(content.dtype)) @ v

    def _published_attention(self, x: Tensor, dropout: float) -> Tensor:
        """The published arithmetic: separate Q/K and V projections, a positional map per
        sample, the two maps mixed, rows renormalised, then applied to V."""
        batch, tokens, channels = x.shape
        qk = self.qk(x).view(batch, tokens, 2, self.num_heads, channels // self.num_heads)
        q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d)
        v = split_heads(self.v(x), self.num_heads)
        offsets = self.rel_offsets.expand(batch, -1, -1, -1)  # (B, N, N, 3)
        positional = self.pos_proj(offsets).permute(0, 3, 1, 2).softmax(dim=-1)  # (B, H, N, N)
        content = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1)
        gate = torch.sigmoid(self.gating_param).view(1, -1, 1, 1)
        attn = (1.0 - gate) * content + gate * positional
        attn = attn / attn.sum(dim=-1, keepdim=True)
        return F.dropout(attn, p=dropout) @ v


class ClassAttention(nn.Module):
    """CaiT class attention: task tokens query [task token ; patch tokens].

    ``forward`` takes the normalised task tokens (B, T, C) and patch tokens (B, N, C).
    With T = 1 it is exactly the published class attention. With T > 1 (joint
    decoding) the patch keys and values are computed once and shared by all task
    tokens, and a mask lets token t see only itself and the patches, which is
    the same function as T separate calls.

    Task tokens with a batch of 1 are the same for every image (the learned
    tokens entering the first block): on the fast path their query, key and
    value are then projected once and shared by the batch, instead of once per
    image (at 50 tokens this took about a fifth off the block's time in evaluation).
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.fused = fused
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.apply(init_linear_and_norm)

    def forward(self, tokens: Tensor, patches: Tensor) -> Tensor:
        batch, num_tokens = patches.shape[0], tokens.shape[1]
        q = split_heads(self.q(tokens), self.num_heads).expand(batch, -1, -1, -1)  # (B, H, T, d)
        if self.fused:
            k = torch.cat((self.k(tokens).expand(batch, -1, -1), self.k(patches)), dim=1)  # (B, T + N, C)
            v = torch.cat((self.v(tokens).expand(batch, -1, -1), self.v(patches)), dim=1)
        else:  # the published order: concatenate, then project
            sequence = torch.cat((tokens.expand(batch, -1, -1), patches), dim=1)  # (B, T + N, C)
            k, v = self.k(sequence), self.v(sequence)
        k, v = split_heads(k, self.num_heads), split_heads(v, self.num_heads)  # (B, H, T + N, d)
        mask = None
        if num_tokens > 1:
            mask = torch.ones(num_tokens, k.shape[2], dtype=torch.bool, device=tokens.device)
            mask[:, :num_tokens] = torch.eye(num_tokens, dtype=torch.bool, device=tokens.device)
        dropout = self.attn_drop if self.training else 0.0
        out = attention(q, k, v, fused=self.fused, dropout=dropout, mask=mask)  # (B, H, T, d)
        return self.proj_drop(self.proj(merge_heads(out)))  # (B, T, C)


BranchMasks = tuple[Tensor | None, Tensor | None]  # keep masks of a block's (attention, MLP) residuals


class StochasticDepth(nn.Module):
    """Drop a residual branch for whole rows (samples, or (sample, task token) pairs), as timm's DropPath.

    The masks are not drawn here but by the model, once per forward (``DyTox.draw_drop_path_masks``):
    per-task and joint decoding then apply the same mask to each (sample, task token, block),
    whichever order they decode in. ``draw`` consumes the random stream exactly as timm's DropPath
    does on one (rows, ...) tensor: one ``bernoulli_`` over ``rows`` values, then 1 / keep.
    """

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"drop_path rate must be in [0, 1], got {rate}")
        self.rate = rate

    def draw(self, rows: int, like: Tensor) -> Tensor | None:
        """A keep mask (rows, 1, 1) of 0 and 1 / keep on the device and dtype of ``like``, or None when
        nothing is dropped (eval mode, rate 0)."""
        if not self.training or self.rate == 0.0:
            return None
        keep = 1.0 - self.rate
        mask = like.new_empty(rows, 1, 1).bernoulli_(keep)
        return mask.div_(keep) if keep > 0.0 else mask

    def draw_block(self, rows: int, like: Tensor) -> BranchMasks:
        """The masks of a block's two residual branches, attention then MLP (the published order)."""
        attn_mask = self.draw(rows, like)
        return attn_mask, self.draw(rows, like)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return x if mask is None else x * mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class SelfAttentionBlock(nn.Module):
    """SAB: pre-norm GPSA and MLP, each with a residual and stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_patches: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        locality_strength: float = 1.0,
        content_kernel: str = "mixed",
        fused: bool = True,
        norm: str = "layer",
    ) -> None:
        super().__init__()
        self.fused = fused
        self.norm1 = norm_layer(norm, dim)
        self.attn = GPSA(dim, num_patches, num_heads, qkv_bias, attn_drop, drop, locality_strength, content_kernel,
                         fused)
        self.drop_path = StochasticDepth(drop_path)
        self.norm2 = norm_layer(norm, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.mlp.apply(init_linear_and_norm)

    def forward(self, x: Tensor, *, masks: BranchMasks) -> Tensor:
        """Patches (B, N, C) -> (B, N, C); ``masks``: (B, 1, 1) per branch, from ``drop_path.draw_block``."""
        attn_mask, mlp_mask = masks
        x = x + self.drop_path(self.attn(self.norm1(x)), attn_mask)
        return x + self.drop_path(mlp_forward(self.mlp, self.norm2(x), self.fused), mlp_mask)  # (B, N, C)


class TaskAttentionBlock(nn.Module):
    """TAB: class attention of the task token(s) over the patches, then MLP on the tokens only.

    Returns the updated task tokens (B, T, C); the patch tokens are not updated.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        fused: bool = True,
        norm: str = "layer",
    ) -> None:
        super().__init__()
        self.fused = fused
        self.norm1 = norm_layer(norm, dim)
        self.attn = ClassAttention(dim, num_heads, qkv_bias, attn_drop, drop, fused)
        self.drop_path = StochasticDepth(drop_path)
        self.norm2 = norm_layer(norm, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.mlp.apply(init_linear_and_norm)

    def forward(self, tokens: Tensor, patches: Tensor, *, masks: BranchMasks) -> Tensor:
        """Task tokens (B or 1, T, C) and patches (B, N, C) -> task tokens (B, T, C).

        ``masks`` are (B, T, 1) keep masks, one per (sample, task token) (see ``DyTox.draw_drop_path_masks``).
        """
        attn_mask, mlp_mask = masks
        tokens = tokens + self.drop_path(self.attn(self.norm1(tokens), self.norm1(patches)), attn_mask)
        return tokens + self.drop_path(mlp_forward(self.mlp, self.norm2(tokens), self.fused), mlp_mask)  # (B, T, C)


def set_fused_attention(model: nn.Module, fused: bool) -> None:
    """Every attention layer and block of ``model`` to the fast (``fused``) or the step-by-step arithmetic:
    this project's layers (their ``fused``) and timm's attention (its ``fused_attn``)."""
    for module in model.modules():
        if isinstance(module, (SelfAttentionBlock, TaskAttentionBlock, GPSA, ClassAttention)):
            module.fused = fused
        elif isinstance(module, Attention):
            module.fused_attn = fused  # type: ignore[misc]  # Final for TorchScript only
