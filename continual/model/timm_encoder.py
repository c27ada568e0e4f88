"""timm models as encoders (``--encoder timm:NAME``): DyTox's decoder reads their tokens, the baseline their
pooled feature.

    images -> the timm model's forward_features -> tokens (B, N, C) without the prefix tokens (class,
              distillation, register), or a map (B, C, H, W) or (B, H, W, C) flattened to tokens (B, H*W, C)

Built with ``pretrained=False`` (nothing is downloaded; ``--pretrained`` loads a local file) and
``num_classes=0``. ``img_size`` and ``patch_size`` are given when the model's class takes them, and the
``encoder_args`` of the config (``--encoder-args key=value``) are passed as they are.

How the output is read is found once, when the encoder is built, by a forward of one blank image in eval
mode without gradient (no running statistics move, nothing random is drawn). A 3-D output is tokens. A
4-D output is channels-last when the model declares it (timm's ``output_fmt``: Swin says NHWC), else the
axis of size ``num_features`` is the channel axis; when both or neither of axes 1 and 3 have that size the
model is refused. Reading shapes is robust where names are not: timm's ``feature_info`` describes the
stages of ``features_only`` models, not what ``forward_features`` returns, and ConvNeXt and Swin both
subclass ``nn.Module`` alone.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import Tensor, nn

from continual.model.config import ModelConfig

TIMM_PREFIX = "timm:"


def timm_name(encoder: str) -> str | None:
    """``timm:NAME`` -> NAME; None for every other encoder name."""
    return encoder[len(TIMM_PREFIX):] if encoder.startswith(TIMM_PREFIX) else None


def unknown_model_message(encoder: str) -> str:
    """The one line for a timm name that timm does not know, with the call that lists similar names."""
    name = timm_name(encoder) or encoder
    pattern = name.split("_")[0]
    return (f"option 'encoder' {encoder!r}: timm {timm.__version__} has no model {name!r}; list the known ones "
            f"with python -c \"import timm; print(timm.list_models('*{pattern}*'))\"")


def _init_arguments(cls: type) -> set[str]:
    """The keyword arguments a model class's ``__init__`` names, following ``**kwargs`` up the classes it
    derives from (timm's distilled ViT passes them all on to ``VisionTransformer``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is nn.Module:
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()  # type: ignore[misc]
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def create_timm_model(config: ModelConfig) -> nn.Module:
    """The timm model of ``config.encoder``, without its classifier and without downloading anything."""
    name = timm_name(config.encoder)
    if name is None or not timm.is_model(name):
        raise ValueError(unknown_model_message(config.encoder))
    given = dict(config.encoder_args)
    base: dict[str, Any] = {"pretrained": False, "num_classes": 0, **given}
    try:
        with torch.device("meta"):  # to find its class: no memory, no random draw
            cls = type(timm.create_model(name, **base))
        sizes: dict[str, Any] = {"img_size": config.input_size, "patch_size": config.patch_size,
                                 "in_chans": config.in_chans}
        accepted = _init_arguments(cls)
        return timm.create_model(name, **{key: value for key, value in sizes.items() if key in accepted}, **base)
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"option 'encoder' {config.encoder!r} with encoder_args {given}: timm cannot build it "
                         f"({first_line})") from error


@dataclass(frozen=True)
class TokenLayout:
    """How a model's ``forward_features`` output becomes tokens: its layout, the prefix tokens dropped, the width."""

    layout: str
    prefix_tokens: int
    width: int


def _shape(output: object) -> str:
    return str(tuple(output.shape)) if isinstance(output, Tensor) else type(output).__name__


def _map_layout(model: nn.Module, output: Tensor) -> str | None:
    """channels_first or channels_last for a 4-D output, or None when it cannot be told."""
    declared = getattr(model, "output_fmt", None)
    declared = str(getattr(declared, "value", declared))
    if declared in ("NHWC", "NCHW"):
        return "channels_last" if declared == "NHWC" else "channels_first"
    width = getattr(model, "num_features", None)
    first, last = output.shape[1] == width, output.shape[3] == width
    if first != last:
        return "channels_first" if first else "channels_last"
    return None


def _blank_forward(model: nn.Module, config: ModelConfig, features: bool) -> object:
    """``forward_features`` (or ``forward``) of one blank image, in eval mode, without gradient."""
    anchor = next(model.parameters())
    blank = torch.zeros(1, config.in_chans, config.input_size, config.input_size, device=anchor.device,
                        dtype=anchor.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model.forward_features(blank) if features else model(blank)  # type: ignore[operator]
    except (RuntimeError, ValueError, AssertionError, TypeError) as error:
        raise ValueError(f"encoder {config.encoder!r}: its forward fails on a {tuple(blank.shape)} image "
                         f"(--input-size {config.input_size}): {str(error).splitlines()[0]}") from error
    finally:
        model.train(was_training)


def read_layout(model: nn.Module, config: ModelConfig) -> TokenLayout:
    """Run ``forward_features`` once on a blank image to learn how its output gives tokens (module docstring)."""
    output = _blank_forward(model, config, features=True)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    if isinstance(output, Tensor) and output.ndim == 3 and output.shape[1] > prefix:
        return TokenLayout("tokens", prefix, int(output.shape[2]))
    if isinstance(output, Tensor) and output.ndim == 4 and (layout := _map_layout(model, output)) is not None:
        return TokenLayout(layout, 0, int(output.shape[1 if layout == "channels_first" else 3]))
    raise ValueError(f"encoder {config.encoder!r}: forward_features gives {_shape(output)}, not tokens (B, N, C) "
                     f"beyond {prefix} prefix token(s) nor a map (B, C, H, W) or (B, H, W, C) with C = num_features "
                     f"{getattr(model, 'num_features', None)}")


class TimmTokens(nn.Module):
    """A timm model giving DyTox tokens (B, N, ``embed_dim``); the model is ``model`` (its own state-dict keys
    follow ``model.``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.model = create_timm_model(config)
        self.layout = read_layout(self.model, config)
        self.embed_dim = self.layout.width

    def forward(self, images: Tensor) -> Tensor:
        output: Tensor = self.model.forward_features(images)  # type: ignore[operator]
        if self.layout.layout == "tokens":
            return output[:, self.layout.prefix_tokens:]
        if self.layout.layout == "channels_first":
            return output.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        return output.flatten(1, 2)  # (B, H, W, C) -> (B, H*W, C)


def pooled_width(model: nn.Module, config: ModelConfig) -> int:
    """The width of a timm model's pooled feature (its ``forward`` with ``num_classes=0``): the baseline's."""
    output = _blank_forward(model, config, features=False)
    if not isinstance(output, Tensor) or output.ndim != 2:
        raise ValueError(f"encoder {config.encoder!r}: its forward with num_classes=0 gives {_shape(output)}, "
                         f"not a pooled feature (B, C)")
    return int(output.shape[1])
