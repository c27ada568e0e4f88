"""DyTox: a shared encoder, a shared task-attention decoder, one token and one head per task.

    images -> patch embedding + position -> SABs (encoder; or the ResNet-18, a timm model, any encoder of
              the registry in encoders.py)
           -> TAB(task token t, patches) for every task t (decoder) -> task embeddings e_t
           -> heads -> logits of all seen classes, in task order

The model grows with :meth:`DyTox.expand` and chooses what trains with
:meth:`DyTox.freeze`; ``forward`` has no side effects. Module and parameter
names follow the published code so that its state dicts load unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import cast

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from continual.model.base import ContinualModel
from continual.model.config import RESNET_EMBED_DIM, RESNET_NUM_HEADS, ModelConfig
from continual.model.encoders import ConViTEncoder, build_encoder, drop_path_rates
from continual.model.layers import BranchMasks, SelfAttentionBlock, TaskAttentionBlock, set_fused_attention
from continual.vocabulary import TRAINING_PHASES, phase_option_name


@dataclass(frozen=True)
class DyToxOutput:
    """What a forward returns. ``div_logits`` is None when the divergence head is absent or inactive."""

    logits: Tensor  # (B, classes seen), in task order
    div_logits: Tensor | None  # (B, new classes + 1)
    task_embeddings: Tensor  # (T, B, D)
    encoder_maps: tuple[Tensor, ...] = ()  # what POD distils (DyTox.encode); none for the baseline


@dataclass(frozen=True)
class DropPathMasks:
    """Stochastic-depth keep masks of one training forward: 0 or 1 / keep, None where nothing is dropped.

    ``sabs[i]``: encoder block i's (attention, MLP) masks, (B, 1, 1), one per sample.
    ``tabs[j]``: decoder block j's masks, (B, T, 1), one per (sample, task token), so that the
    joint pass and the per-task passes drop exactly the same branches.
    """

    sabs: list[BranchMasks]
    tabs: list[BranchMasks]

    def for_token(self, block: int, token: int) -> BranchMasks:
        """Decoder block ``block``'s masks for task token ``token`` alone, (B, 1, 1)."""
        return tuple(None if m is None else m[:, token : token + 1] for m in self.tabs[block])  # type: ignore[return-value]


def stack_token_masks(per_token: list[BranchMasks]) -> BranchMasks:
    """One block's masks of each task token, (B, 1, 1) each, as the (B, T, 1) masks of the joint pass."""
    def stack(masks: list[Tensor | None]) -> Tensor | None:
        return None if masks[0] is None else torch.cat(masks, dim=1)  # type: ignore[arg-type]

    return stack([m[0] for m in per_token]), stack([m[1] for m in per_token])


class ContinualClassifier(nn.Module):
    """A head: LayerNorm then Linear, with PyTorch's default Linear initialisation, as published
    (uniform in +-1/sqrt(in_dim) for weights and biases, not the ViT truncated normal)."""

    def __init__(self, in_dim: int, nb_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(in_dim, nb_classes)
        self.norm = nn.LayerNorm(in_dim)

    def reset_parameters(self) -> None:
        """A fresh draw of the Linear, and LayerNorm back to identity (``--finetuning-resetclf``)."""
        self.head.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x))


class DyTox(ContinualModel):
    """The DyTox network for ``nb_classes`` initial classes; see the module docstring."""

    def __init__(self, config: ModelConfig, nb_classes: int) -> None:
        super().__init__()
        self.config = config
        self.nb_classes_per_task: list[int] = [nb_classes]
        self.phase = "train"
        self._attach_encoder(build_encoder(config))
        self.tabs = self._build_decoder(config)
        self.task_tokens = nn.ParameterList([self._new_task_token()])
        self.head_div: ContinualClassifier | None = None
        self.head: nn.Module = self._initial_heads()

    def _attach_encoder(self, encoder: nn.Module) -> None:
        """The registry's encoder: the ConViT's parts under their published names, any other as ``backbone``."""
        width = int(encoder.embed_dim)  # type: ignore[arg-type]
        if width != self.config.embed_dim:
            raise ValueError(f"the encoder {self.config.encoder!r} gives {width}-dimensional tokens, embed_dim is "
                             f"{self.config.embed_dim} (continual.model.encoders.fit_to_encoder sets it)")
        if self.config.embed_dim % self.config.num_heads:
            raise ValueError(f"num_heads {self.config.num_heads} does not divide the decoder's width {width}")
        if isinstance(encoder, ConViTEncoder):
            self.patch_embed, self.pos_embed, self.pos_drop = encoder.patch_embed, encoder.pos_embed, encoder.pos_drop
            self.sabs = encoder.sabs
        else:
            self.backbone = encoder
            self.sabs = nn.ModuleList()

    @staticmethod
    def _build_decoder(config: ModelConfig) -> nn.ModuleList:
        """The TABs: blocks local_up_to_layer..depth - 1 with the options' sizes; with ``--resnet`` one TAB of fixed
        size (12 heads, MLP ratio 4, no qkv bias, no dropout, LayerNorm), as published."""
        if config.encoder == "resnet18":
            return nn.ModuleList([TaskAttentionBlock(RESNET_EMBED_DIM, RESNET_NUM_HEADS, fused=config.fused_attention)])
        drop_paths = drop_path_rates(config)
        return nn.ModuleList(
            TaskAttentionBlock(
                config.embed_dim, config.num_heads, config.mlp_ratio, config.qkv_bias, config.drop,
                config.attn_drop, drop_paths[i], config.fused_attention, config.norm,
            )
            for i in range(config.local_up_to_layer, config.depth)
        )

    @property
    def uses_backbone(self) -> bool:
        """The encoder is a module (``backbone``: the ResNet, a timm or registered encoder), not the ConViT's SABs."""
        return "backbone" in self._modules

    def reset_heads(self) -> None:
        """Every task head drawn again, in task order (the divergence head is kept), as published."""
        heads = self.head if isinstance(self.head, nn.ModuleList) else [self.head]
        for head in heads:
            cast(ContinualClassifier, head).reset_parameters()

    def set_arithmetic(self, fused: bool, joint: bool) -> None:
        """Switch every layer to the fast (``fused``, ``joint`` decoding) or the published arithmetic: the
        same function, for tests and benchmarks that compare the two on the same weights."""
        self.config = dataclasses.replace(self.config, fused_attention=fused, joint_tokens=joint)
        set_fused_attention(self, fused)

    # ------------------------------------------------------------------ growth
    def _new_task_token(self) -> nn.Parameter:
        return nn.Parameter(trunc_normal_(torch.zeros(1, 1, self.config.embed_dim), std=0.02))

    def _head_dims(self) -> tuple[int, int]:
        """(input, output) width of the head of the newest task in the current mode."""
        mode, dim = self.config.ind_clf, self.config.embed_dim
        in_dim = dim if mode in ("1-1", "1-n") else dim * self.nb_tasks
        out_dim = self.nb_classes_per_task[-1] if mode in ("1-1", "n-1") else self.nb_classes
        return in_dim, out_dim

    def _initial_heads(self) -> nn.Module:
        if self.config.ind_clf == "":
            return ContinualClassifier(self.config.embed_dim * self.nb_tasks, self.nb_classes)
        return nn.ModuleList([ContinualClassifier(*self._head_dims())])

    def expand(self, nb_new_classes: int) -> None:
        """Add a task: a fresh task token, a head for the new classes, a fresh divergence head.

        New parameters are created on the device and dtype of the existing ones.
        Without independent classifiers the single head is re-created over all
        classes, as the published code does.
        """
        if nb_new_classes <= 0:
            raise ValueError(f"expand needs a positive number of new classes, got {nb_new_classes}")
        reference = self.task_tokens[0]
        self.nb_classes_per_task.append(nb_new_classes)
        self.task_tokens.append(self._new_task_token().to(reference))
        if self.config.head_div:
            self.head_div = ContinualClassifier(self.config.embed_dim, nb_new_classes + 1).to(reference)
        if self.config.ind_clf == "":
            self.head = self._initial_heads().to(reference)
        else:
            cast(nn.ModuleList, self.head).append(ContinualClassifier(*self._head_dims()).to(reference))

    def set_phase(self, phase: str) -> None:
        """'train' or 'finetune': decides whether the divergence head runs (``head_div_mode``)."""
        if phase not in TRAINING_PHASES:
            raise ValueError(f"phase must be one of {TRAINING_PHASES}, got {phase!r}")
        self.phase = phase

    # ----------------------------------------------------------------- freezing
    def freeze(self, names: list[str] | tuple[str, ...]) -> None:
        """Make exactly the named parts untrainable and everything else trainable.

        Names: all, old_task_tokens, task_tokens, sab (encoder with patch and
        position embedding), tab, old_heads, heads, head_div. ``all`` also puts
        the model in eval mode (the teacher); otherwise only ``requires_grad``
        changes, because the training loop sets train mode every epoch anyway.
        """
        parts = {name: self._freezable_parts(name) for name in names}  # validates before touching anything
        for param in self.parameters():
            param.requires_grad_(True)
        for params in parts.values():
            for param in params:
                param.requires_grad_(False)
        if "all" in names:
            self.eval()

    def _freezable_parts(self, name: str) -> list[nn.Parameter]:
        heads = list(self.head) if isinstance(self.head, nn.ModuleList) else [self.head]
        table = {
            "all": lambda: list(self.parameters()),
            "old_task_tokens": lambda: list(self.task_tokens)[:-1],
            "task_tokens": lambda: list(self.task_tokens),
            "sab": self._encoder_parameters,
            "tab": lambda: list(self.tabs.parameters()),
            "old_heads": lambda: [p for h in heads[:-1] for p in h.parameters()],
            "heads": lambda: [p for h in heads for p in h.parameters()],
            "head_div": lambda: list(self.head_div.parameters()) if self.head_div is not None else [],
        }
        if name not in table:
            raise ValueError(f"unknown freeze name {name!r}; valid names: {sorted(table)}")
        return table[name]()

    def _encoder_parameters(self) -> list[nn.Parameter]:
        if self.uses_backbone:
            return list(self.backbone.parameters())
        return [self.pos_embed, *self.patch_embed.parameters(), *self.sabs.parameters()]

    # ------------------------------------------------------------------ forward
    def draw_drop_path_masks(self, batch: int) -> DropPathMasks:
        """This forward's stochastic-depth masks (all None in eval mode or without drop path).

        Drawn in the published loop's order (each SAB: attention then MLP; then for each task
        token, each TAB: attention then MLP), each draw the shape timm's DropPath draws there,
        so the random stream is consumed as in the published per-task decoding.
        """
        like = self.task_tokens[0]  # the masks take the model's device and dtype
        sabs = [cast(SelfAttentionBlock, block).drop_path.draw_block(batch, like) for block in self.sabs]
        per_token = [[cast(TaskAttentionBlock, block).drop_path.draw_block(batch, like) for block in self.tabs]
                     for _ in range(self.nb_tasks)]
        tabs = [stack_token_masks([masks[j] for masks in per_token]) for j in range(len(self.tabs))]
        return DropPathMasks(sabs, tabs)

    def encode(self, images: Tensor, masks: DropPathMasks) -> tuple[Tensor, list[Tensor]]:
        """The shared encoder: patch tokens (B, N, D) and the feature maps POD distils (``--pod``): every SAB's
        output but the last (B, N, D), or the ResNet's four stages (B, C, H, W), as published; none for an
        encoder that gives tokens alone."""
        if self.uses_backbone:
            out = self.backbone(images)
            return cast(tuple[Tensor, list[Tensor]], out) if isinstance(out, tuple) else (out, [])
        x = self.pos_drop(self.patch_embed(images) + self.pos_embed)  # (B, N, D)
        maps = []
        for block, block_masks in zip(self.sabs, masks.sabs, strict=True):
            x = block(x, masks=block_masks)
            maps.append(x)
        return x, maps[:-1]

    def decode(self, x: Tensor, masks: DropPathMasks) -> Tensor:
        """The task decoder: every task token's attention over the patches, task embeddings (T, B, D)."""
        if self.config.joint_tokens:
            # (1, T, D), shared by the batch; concatenated along a leading axis so that each token's gradient
            # has the token's own strides (DDP warns about, and copies, gradients with other strides)
            tokens = torch.cat([token.view(1, -1) for token in self.task_tokens]).unsqueeze(0)
            for block, block_masks in zip(self.tabs, masks.tabs, strict=True):
                tokens = block(tokens, x, masks=block_masks)
            return tokens.transpose(0, 1)
        embeddings = []
        for t, task_token in enumerate(self.task_tokens):
            token = task_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
            for j, block in enumerate(self.tabs):
                token = block(token, x, masks=masks.for_token(j, t))
            embeddings.append(token[:, 0])
        return torch.stack(embeddings)

    def forward_head(self, embeddings: Tensor) -> Tensor:
        """Task embeddings (T, B, D) -> logits (B, classes seen)."""
        mode = self.config.ind_clf
        if mode == "":
            return self.head(torch.cat(list(embeddings), dim=1))
        heads = cast(nn.ModuleList, self.head)
        if mode in ("1-1", "1-n"):
            logits = [head(embeddings[i]) for i, head in enumerate(heads)]
        else:
            logits = [head(torch.cat(list(embeddings[: i + 1]), dim=1)) for i, head in enumerate(heads)]
        if mode in ("1-1", "n-1"):
            return torch.cat(logits, dim=1)
        return self.average_growing_heads(logits)

    def average_growing_heads(self, logits: list[Tensor]) -> Tensor:
        """Combine 1-n / n-n heads, where head i predicts all classes of tasks 0..i."""
        total = torch.zeros_like(logits[-1])
        for head_logits in logits:
            total = total + nn.functional.pad(head_logits, (0, total.shape[1] - head_logits.shape[1]))
        divisor = torch.ones(total.shape[1], dtype=total.dtype, device=total.device)
        if self.config.multi_head_average == "published":
            for i, nb in enumerate(self.nb_classes_per_task):
                divisor[:nb] *= self.nb_tasks - i
        else:
            start = 0
            for i, nb in enumerate(self.nb_classes_per_task):
                divisor[start : start + nb] = self.nb_tasks - i
                start += nb
        return total / divisor

    def divergence_active(self) -> bool:
        mode = self.config.head_div_mode
        return self.head_div is not None and phase_option_name(self.phase) in mode

    def idle_parameters(self) -> bool:
        """The divergence head is the only part that can go unused (when head_div_mode skips this phase)."""
        return self.head_div is not None and not self.divergence_active()

    def before_loading(self, weights: dict[str, Tensor]) -> None:
        """A save without a divergence head (the first task, or a head that was not saved) loads without one."""
        if "head_div.head.weight" not in weights:
            self.head_div = None

    def forward(self, images: Tensor, masks: DropPathMasks | None = None) -> DyToxOutput:
        """Logits of all seen classes; ``masks`` fixes the stochastic depth of a training forward."""
        if masks is None:
            masks = self.draw_drop_path_masks(images.shape[0])
        patches, maps = self.encode(images, masks)
        embeddings = self.decode(patches, masks)
        div_logits = self.head_div(embeddings[-1]) if self.head_div is not None and self.divergence_active() else None
        return DyToxOutput(self.forward_head(embeddings), div_logits, embeddings, tuple(maps))
