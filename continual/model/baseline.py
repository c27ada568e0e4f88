"""The baseline of the paper's ablation (``dytox: false``): one encoder, one classifier that grows.

    images -> ConViT (GPSA blocks, then class attention of one class token, or self-attention over
              [class token; patches]) or timm's ViT -> final norm -> class token's feature (B, D);
              or any timm model (timm:NAME) -> its pooled feature (B, D)
           -> the classifier: LayerNorm, then a Linear that gains the new classes' rows at each task

Trained by the same task loop as DyTox (rehearsal, distillation, balanced finetuning): it has
DyTox's interface (``expand``, ``freeze``, ``set_phase``, ``reset_heads``, a ``DyToxOutput``) with
one "task embedding", the class token's. Parameter names follow the published ConViT.
"""
from __future__ import annotations

import dataclasses
from typing import cast

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from continual.model.base import ContinualModel
from continual.model.config import ModelConfig
from continual.model.dytox import DyToxOutput
from continual.model.layers import (
    NORM_LAYERS,
    PatchEmbed,
    SelfAttentionBlock,
    TaskAttentionBlock,
    init_linear_and_norm,
    norm_layer,
    set_fused_attention,
)
from continual.model.resnet import ReducedResNet18
from continual.model.timm_encoder import create_timm_model, timm_name
from continual.vocabulary import TRAINING_PHASES


class GrowingClassifier(nn.Module):
    """LayerNorm then one Linear over every class seen, as the published ``Classifier``: PyTorch's
    default initialisation, and each task's new rows drawn afresh while the old rows are kept."""

    def __init__(self, in_dim: int, nb_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.head = nn.Linear(in_dim, nb_classes)

    def add_classes(self, nb_new: int) -> None:
        old = self.head
        new = nn.Linear(old.in_features, old.out_features + nb_new).to(old.weight)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.head = new

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x))


class ConViT(nn.Module):
    """The published ConViT as a feature extractor: the class token's feature after the final norm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.class_attention = config.class_attention
        self.patch_embed = PatchEmbed(config.input_size, config.patch_size, config.in_chans, dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(trunc_normal_(torch.zeros(1, 1, dim), std=0.02))
        self.pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, num_patches, dim), std=0.02))
        self.pos_drop = nn.Dropout(config.drop)
        drop_paths = torch.linspace(0, config.drop_path, config.depth).tolist()
        local = [
            SelfAttentionBlock(dim, num_patches, config.num_heads, config.mlp_ratio, config.qkv_bias, config.drop,
                               config.attn_drop, drop_paths[i], config.locality_strength, config.gpsa_kernel,
                               config.fused_attention, config.norm)
            for i in range(config.local_up_to_layer)
        ]
        self.blocks = nn.ModuleList(local + [self._global_block(config, rate)
                                             for rate in drop_paths[config.local_up_to_layer:]])
        self.norm = norm_layer(config.norm, dim)

    @staticmethod
    def _global_block(config: ModelConfig, drop_path: float) -> nn.Module:
        dim = config.embed_dim
        if config.class_attention:
            return TaskAttentionBlock(dim, config.num_heads, config.mlp_ratio, config.qkv_bias, config.drop,
                                      config.attn_drop, drop_path, config.fused_attention, config.norm)
        block = Block(dim, config.num_heads, config.mlp_ratio, config.qkv_bias, proj_drop=config.drop,
                      attn_drop=config.attn_drop, drop_path=drop_path, norm_layer=NORM_LAYERS[config.norm])
        block.apply(init_linear_and_norm)  # the published MHSA blocks' truncated-normal initialisation
        return block

    @property
    def local_blocks(self) -> list[nn.Module]:
        return [block for block in self.blocks if isinstance(block, SelfAttentionBlock)]

    @property
    def global_blocks(self) -> list[nn.Module]:
        return [block for block in self.blocks if not isinstance(block, SelfAttentionBlock)]

    def forward(self, images: Tensor) -> Tensor:
        x = self.pos_drop(self.patch_embed(images) + self.pos_embed)  # (B, N, D)
        batch = x.shape[0]
        for block in self.local_blocks:
            x = block(x, masks=cast(SelfAttentionBlock, block).drop_path.draw_block(batch, x))
        token = self.cls_token  # (1, 1, D)
        if self.class_attention:
            for block in self.global_blocks:
                token = block(token, x, masks=cast(TaskAttentionBlock, block).drop_path.draw_block(batch, x))
            return cast(Tensor, self.norm(token))[:, 0]
        x = torch.cat((token.expand(batch, -1, -1), x), dim=1)
        for block in self.global_blocks:
            x = block(x)
        return cast(Tensor, self.norm(x))[:, 0]


def vision_transformer(config: ModelConfig) -> VisionTransformer:
    """``--model vit``: timm's ViT without its classifier. As the published ViT: bias in the qkv
    projection, LayerNorm (eps 1e-6), dropout ``drop`` after the position embedding and projections."""
    return VisionTransformer(
        img_size=config.input_size, patch_size=config.patch_size, in_chans=config.in_chans, num_classes=0,
        embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
        qkv_bias=True, pos_drop_rate=config.drop, proj_drop_rate=config.drop, attn_drop_rate=config.attn_drop,
        drop_path_rate=config.drop_path,
    )


def baseline_encoder(config: ModelConfig) -> nn.Module:
    """The ConViT, timm's ViT (``vit``), the CIFAR baselines' ResNet-18 (``resnet18_cifar``) or any timm model
    (``timm:NAME``, its pooled feature, num_classes=0)."""
    if config.encoder == "convit":
        return ConViT(config)
    if config.encoder == "vit":
        return vision_transformer(config)
    if config.encoder == "resnet18_cifar":
        return ReducedResNet18(config.in_chans)
    if timm_name(config.encoder) is not None:
        return create_timm_model(config)
    raise ValueError(f"the baseline's encoder is convit, vit or timm:NAME, not {config.encoder!r}")


class IncrementalClassifier(ContinualModel):
    """The baseline for ``nb_classes`` initial classes; see the module docstring."""

    def __init__(self, config: ModelConfig, nb_classes: int) -> None:
        super().__init__()
        if config.dytox:
            raise ValueError("IncrementalClassifier is the baseline: its config has dytox false")
        self.config = config
        self.nb_classes_per_task: list[int] = [nb_classes]
        self.phase = "train"
        self.head_div: nn.Module | None = None  # DyTox's divergence head: never here
        self.encoder: nn.Module = baseline_encoder(config)
        self.head = GrowingClassifier(config.embed_dim, nb_classes)
        self.frozen: tuple[str, ...] = ()
        self.set_arithmetic(config.fused_attention, config.joint_tokens)

    def expand(self, nb_new_classes: int) -> None:
        """A new task: the classifier gains ``nb_new_classes`` rows (what is frozen stays frozen)."""
        if nb_new_classes <= 0:
            raise ValueError(f"expand needs a positive number of new classes, got {nb_new_classes}")
        self.nb_classes_per_task.append(nb_new_classes)
        self.head.add_classes(nb_new_classes)
        self._apply_freezing()

    def set_phase(self, phase: str) -> None:
        if phase not in TRAINING_PHASES:
            raise ValueError(f"phase must be one of {TRAINING_PHASES}, got {phase!r}")
        self.phase = phase

    def divergence_active(self) -> bool:
        return False

    def reset_heads(self) -> None:
        """The classifier drawn again with the ViT initialisation, as the published ``reset_classifier``."""
        self.head.apply(init_linear_and_norm)

    def set_arithmetic(self, fused: bool, joint: bool) -> None:
        """Fast (fused kernels) or step-by-step attention, in this project's layers and in timm's (its
        ``fused_attn``); ``joint`` has no meaning without task tokens."""
        self.config = dataclasses.replace(self.config, fused_attention=fused, joint_tokens=joint)
        set_fused_attention(self, fused)

    # ----------------------------------------------------------------- freezing
    def freeze(self, names: list[str] | tuple[str, ...]) -> None:
        """Freeze the named parts: all, backbone (the encoder but its class token, as published), sab and
        tab (ConViT: its GPSA blocks with the embeddings, its later blocks), heads.

        As published, what is frozen stays frozen: the parts frozen so far are kept (``exact_freeze``:
        exactly the named parts are frozen, as DyTox's ``freeze``). ``all`` also puts the model in eval mode.
        """
        for name in names:
            self._freezable_parts(name)  # validates before touching anything
        kept = () if self.config.exact_freeze else self.frozen
        self.frozen = tuple(dict.fromkeys((*kept, *names)))
        self._apply_freezing()
        if "all" in names:
            self.eval()

    def _apply_freezing(self) -> None:
        for param in self.parameters():
            param.requires_grad_(True)
        for name in self.frozen:
            for param in self._freezable_parts(name):
                param.requires_grad_(False)

    def _freezable_parts(self, name: str) -> list[nn.Parameter]:
        encoder = self.encoder
        table = {
            "all": lambda: list(self.parameters()),
            "backbone": lambda: [p for n, p in encoder.named_parameters() if n != "cls_token"],
            "heads": lambda: list(self.head.parameters()),
        }
        if isinstance(encoder, ConViT):
            table["sab"] = lambda: [encoder.pos_embed, *encoder.patch_embed.parameters(),
                                    *(p for block in encoder.local_blocks for p in block.parameters())]
            table["tab"] = lambda: [p for block in encoder.global_blocks for p in block.parameters()]
        if name not in table:
            raise ValueError(f"unknown freeze name {name!r} for the {self.config.encoder} baseline; "
                             f"valid names: {sorted(table)}")
        return table[name]()

    def get_extra_state(self) -> dict[str, list[str]]:
        """What is frozen, saved with the weights: the published freezing depends on the phases run so far."""
        return {"frozen": list(self.frozen)}

    def set_extra_state(self, state: dict[str, list[str]]) -> None:
        self.frozen = tuple(state["frozen"])
        self._apply_freezing()

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor) -> DyToxOutput:
        """Logits of all seen classes; the class token's feature is the one "task embedding" (1, B, D)."""
        features = self.encoder(images)  # (B, D)
        return DyToxOutput(self.head(features), None, features.unsqueeze(0))
