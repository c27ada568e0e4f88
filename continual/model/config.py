"""The architecture of a model, as plain data: what the options give, what a checkpoint saves.

One dataclass for every network of the project: DyTox (``dytox`` true, the ConViT, the ResNet-18 or
any encoder of the registry in ``encoders.py``, timm's included), the baseline of the paper's
ablation (``dytox`` false: a ConViT, a ViT or a timm model with one classifier that grows by each task's classes)
and DER's network (``extractor_per_task``: one such encoder per task).
"""
from __future__ import annotations

from dataclasses import dataclass

from continual.vocabulary import HEAD_MODES, PHASE_OPTIONS

# This project's own encoders; encoders.py adds the registry's and timm:NAME.
ENCODERS = ("convit", "vit", "resnet18", "resnet18_cifar")
NORMS = ("layer", "scale")

# The published --resnet decoder: one TAB with 12 heads on the 504 channels of the ResNet's head.
RESNET_EMBED_DIM, RESNET_NUM_HEADS = 504, 12


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a model. The sizes have no default here: they come from the options
    (continual.config.settings.model_config; the published values are in options/model/)."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    input_size: int
    local_up_to_layer: int
    in_chans: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    locality_strength: float = 1.0
    drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    ind_clf: str = "1-1"
    head_div: bool = False
    head_div_mode: tuple[str, ...] = ("tr", "ft")
    joint_tokens: bool = True
    fused_attention: bool = True
    # "published": the reference's 1-n / n-n averaging (divides the first c_i columns by T - i);
    # "per_class": each class column averaged over the heads that predict it.
    multi_head_average: str = "published"
    # The fast form of GPSA's attention, "mixed" (CPU) or "sdpa" (GPU): the same function. Whoever
    # builds the model picks it for the device (continual.runtime.device.attention_kernel_for).
    gpsa_kernel: str = "mixed"
    # False: the baseline (one growing classifier, no task tokens).
    dytox: bool = True
    # convit, resnet18 (DyTox), vit and resnet18_cifar (the baseline), a name of the registry
    # (continual.model.encoders) or timm:NAME; encoder_args: the keyword arguments a timm (or registered)
    # encoder is built with.
    encoder: str = "convit"
    encoder_args: tuple[tuple[str, object], ...] = ()
    # Baseline ConViT: class-attention blocks after the SABs (True) or self-attention over [cls; patches].
    class_attention: bool = True
    norm: str = "layer"
    # Baseline: each freeze() freezes exactly what it names (published: frozen parts stay frozen).
    exact_freeze: bool = False
    # DER (--method der): one baseline encoder per task, their features concatenated (continual.model.der).
    extractor_per_task: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.ind_clf not in HEAD_MODES:
            raise ValueError(f"ind_clf must be one of {HEAD_MODES}, got {self.ind_clf!r}")
        if self.encoder == "convit" and not 0 < self.local_up_to_layer < self.depth:
            raise ValueError(
                f"local_up_to_layer ({self.local_up_to_layer}) must leave at least one SAB and one TAB "
                f"out of depth {self.depth}"
            )
        if self.dytox and self.encoder not in ENCODERS and not self.local_up_to_layer < self.depth:
            raise ValueError(f"the decoder on encoder {self.encoder!r} has depth - local_up_to_layer TABs: "
                             f"local_up_to_layer ({self.local_up_to_layer}) must be below depth {self.depth}")
        attends = self.encoder in ("convit", "vit", "resnet18")  # others: encoders.fit_to_encoder
        if attends and self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not set(self.head_div_mode) <= set(PHASE_OPTIONS):
            raise ValueError(f"head_div_mode items must be in {PHASE_OPTIONS}, got {self.head_div_mode!r}")
        if self.multi_head_average not in ("published", "per_class"):
            raise ValueError(f"multi_head_average must be 'published' or 'per_class', got {self.multi_head_average!r}")
        if self.dytox and self.encoder == "vit":
            raise ValueError("DyTox's encoder is the ConViT or the ResNet-18, not the ViT")
        if self.extractor_per_task and self.dytox:
            raise ValueError("an extractor per task (DER) is built from the baseline's encoders: dytox must be false")
        if not self.dytox and self.encoder == "resnet18":
            raise ValueError("the ResNet-18 encoder is DyTox's (--resnet), not the baseline's")
        if self.dytox and self.encoder == "resnet18_cifar":
            raise ValueError("the pooled ResNet-18 (resnet18_cifar) is the baseline's encoder; DyTox's is resnet18")
        from continual.model.encoders import encoder_problem  # the registry, which imports this module

        problem = encoder_problem(self.encoder, self.dytox)
        if problem is not None:
            raise ValueError(problem)


    @property
    def architecture(self) -> str:
        """The model's name in continual.model.build.MODELS."""
        if self.extractor_per_task:
            return "der"
        return "dytox" if self.dytox else "baseline"


def config_from_dict(fields: dict[str, object], **changes: object) -> ModelConfig:
    """The inverse of ``dataclasses.asdict`` on a ModelConfig read back from a checkpoint, with
    ``changes`` (e.g. the GPSA kernel of the device it is loaded on). Fields added since the
    checkpoint was written take their defaults (the DyTox of earlier versions)."""
    encoder_args = tuple(tuple(pair) for pair in fields.get("encoder_args", ()))  # type: ignore[attr-defined]
    return ModelConfig(**{**fields, "head_div_mode": tuple(fields["head_div_mode"]),  # type: ignore[arg-type]
                          "encoder_args": encoder_args, **changes})
