"""The encoder registry: DyTox builds its encoder from the builder that ``ENCODERS`` gives its name.

A builder takes the ``ModelConfig`` and returns a module whose ``embed_dim`` is the width of the tokens it
gives and whose forward maps images (B, C, H, W) to tokens (B, N, embed_dim), or to (tokens, the feature
maps POD distils). DyTox holds it as ``backbone`` and puts its task-attention decoder, task tokens and
heads on those tokens; ``sab`` freezes it. Two entries are the published ones: the ConViT's SABs (DyTox
holds their parts under the published names, ``patch_embed``, ``pos_embed`` and ``sabs``, so published
checkpoints load) and the ResNet-18. ``timm:NAME`` builds any timm model (``timm_encoder.py``).

Adding an encoder is one builder and one line in ``ENCODERS`` (docs/extending.md has an example).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from timm.layers import trunc_normal_
from torch import nn

from continual.model.config import RESNET_EMBED_DIM, ModelConfig
from continual.model.layers import PatchEmbed, SelfAttentionBlock
from continual.model.resnet import ReducedResNet18, ResNetEncoder
from continual.model.timm_encoder import TimmTokens, create_timm_model, pooled_width, timm_name

EncoderBuilder = Callable[[ModelConfig], nn.Module]


class ConViTEncoder(nn.Module):
    """The ConViT's patch embedding, position embedding and GPSA blocks (SABs). DyTox takes these parts
    as its own attributes (their published names) and runs them itself, with its stochastic-depth masks."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = self.embed_dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.input_size, config.patch_size, config.in_chans, dim)
        num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, num_patches, dim), std=0.02))
        self.pos_drop = nn.Dropout(config.drop)
        # Stochastic depth grows linearly over all blocks, encoder then decoder, as in ConViT.
        drop_paths = drop_path_rates(config)
        self.sabs = nn.ModuleList(
            SelfAttentionBlock(
                dim, num_patches, config.num_heads, config.mlp_ratio, config.qkv_bias, config.drop,
                config.attn_drop, drop_paths[i], config.locality_strength, config.gpsa_kernel,
                config.fused_attention, config.norm,
            )
            for i in range(config.local_up_to_layer)
        )


def drop_path_rates(config: ModelConfig) -> list[float]:
    """Block i's stochastic-depth rate, linear from 0 to ``drop_path`` over the ``depth`` blocks."""
    return torch.linspace(0, config.drop_path, config.depth).tolist()


def resnet18_encoder(config: ModelConfig) -> nn.Module:
    """``--resnet``: the published ResNet-18 up to layer3 and its 504-channel head (``resnet.py``)."""
    return ResNetEncoder(config.in_chans)


ENCODERS: dict[str, EncoderBuilder] = {
    "convit": ConViTEncoder,
    "resnet18": resnet18_encoder,
}

BASELINE_ENCODERS = ("convit", "vit", "resnet18_cifar")  # the baseline's own (continual.model.baseline), and timm's


def encoder_problem(name: str, dytox: bool) -> str | None:
    """Why ``name`` is no encoder of DyTox (``dytox``) or of the baseline, in one line; None if it is one."""
    if timm_name(name) is not None:
        return None
    known = sorted(ENCODERS) if dytox else list(BASELINE_ENCODERS)
    if name in known:
        return None
    mode = "DyTox" if dytox else "the baseline (dytox: false)"
    return f"option 'encoder' {name!r} is no encoder of {mode}: expected one of {known} or timm:NAME"


def build_encoder(config: ModelConfig) -> nn.Module:
    """DyTox's encoder for ``config.encoder``: a registered name, or ``timm:NAME``."""
    if timm_name(config.encoder) is not None:
        return TimmTokens(config)
    problem = encoder_problem(config.encoder, dytox=True)
    if problem is not None:
        raise ValueError(problem)
    return ENCODERS[config.encoder](config)


def _encoder_width(config: ModelConfig) -> int:
    if config.dytox:
        return int(build_encoder(config).embed_dim)  # type: ignore[arg-type]
    return pooled_width(create_timm_model(config), config)


def fit_to_encoder(config: ModelConfig) -> ModelConfig:
    """``config`` with ``embed_dim`` the width its encoder gives: the tokens' for DyTox, the pooled feature's
    for the baseline. The options' embed_dim sizes the ConViT and the ViT; the ResNet's is fixed; any
    other encoder is built on the meta device (no memory, no random draw) to read it. DyTox's decoder
    heads (``num_heads``) must divide it."""
    if config.encoder in ("convit", "vit"):
        return config
    if config.encoder == "resnet18_cifar":
        return dataclasses.replace(config, embed_dim=ReducedResNet18.embed_dim)
    if config.encoder == "resnet18":
        return dataclasses.replace(config, embed_dim=RESNET_EMBED_DIM)
    try:
        with torch.device("meta"):
            width = _encoder_width(config)
    except (ValueError, RuntimeError, NotImplementedError):  # it does not build on the meta device (.item()...):
        with torch.random.fork_rng(devices=[]):  # on the CPU, its random draws undone
            width = _encoder_width(config)
    if config.dytox and width % config.num_heads:
        raise ValueError(f"option 'num_heads' {config.num_heads} does not divide the width {width} of the tokens of "
                         f"encoder {config.encoder!r}: give --num-heads a divisor of {width}")
    return dataclasses.replace(config, embed_dim=width)


CONVIT_PARTS = ("patch_embed", "pos_embed", "sabs")  # the ConViT encoder's names in DyTox's state dict


def encoder_weight_names(model: nn.Module) -> dict[str, str]:
    """Every weight (parameter or buffer) of the encoder of a DyTox, baseline or DER ``model``, as {its name in the
    encoder's own state dict: its name in the model's}: ``--pretrained`` files name them either way."""
    state = model.state_dict()
    children = dict(model.named_children())
    if "backbone" in children:  # DyTox on a module; a timm model's own keys follow backbone.model.
        prefix = "backbone.model." if isinstance(children["backbone"], TimmTokens) else "backbone."
    elif "encoder" in children:  # the baseline
        prefix = "encoder."
    elif "extractors" in children:  # DER: its first extractor (the later ones start as copies of it)
        prefix = "extractors.0."
    else:  # DyTox's ConViT: its parts are the model's own, under the published names
        return {key: key for key in state if key.split(".")[0] in CONVIT_PARTS}
    return {key[len(prefix):]: key for key in state if key.startswith(prefix)}
