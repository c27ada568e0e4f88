"""The encoder registry: the example of docs/extending.md ("Adding an encoder") registered in one line and
chosen by the options, and which weights of each model are its encoder's (what --pretrained loads)."""
from __future__ import annotations

import re

import pytest
import torch

from conftest import REPO_ROOT
from continual.config import parse_config, settings_from
from continual.model import encoders
from continual.model.build import grown_model
from continual.model.config import ModelConfig
from continual.model.encoders import encoder_weight_names, fit_to_encoder

SMALL = ModelConfig(embed_dim=48, depth=3, num_heads=12, patch_size=4, input_size=16, local_up_to_layer=2)


def documented_example() -> str:
    """The Python block of the "Adding an encoder" section of docs/extending.md."""
    section = (REPO_ROOT / "docs/extending.md").read_text(encoding="utf-8").split("## Adding an encoder")[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


def test_the_documented_encoder_registers_in_one_line_and_is_an_option_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoders, "ENCODERS", dict(encoders.ENCODERS))  # the example's line adds to this copy
    exec(compile(documented_example(), "docs/extending.md", "exec"), {})
    settings = settings_from(parse_config(["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"),
                                           str(REPO_ROOT / "options/model/demo_tiny.yaml"),
                                           "--encoder", "mobilenet_v3_small"]))
    model_config = settings.model
    assert (model_config.encoder, model_config.embed_dim, model_config.num_heads) == ("mobilenet_v3_small", 576, 4)
    model = grown_model(settings.model, [2, 2])
    assert model.uses_backbone and model.task_tokens[1].shape[-1] == 576 and len(model.tabs) == 1
    logits = model(torch.randn(3, 3, 16, 16)).logits
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()
    model.freeze(["sab"])
    assert {name for name, p in model.named_parameters() if not p.requires_grad} == {
        "backbone." + name for name, _ in model.backbone.named_parameters()}
    assert set(encoder_weight_names(model)) == set(model.backbone.state_dict())


@pytest.mark.parametrize("encoder", ["convit", "resnet18"])
def test_the_encoders_weights_are_all_but_the_decoder_tokens_and_heads_under_their_published_names(
        encoder: str) -> None:
    model = grown_model(fit_to_encoder(ModelConfig(**{**SMALL.__dict__, "encoder": encoder})), [2, 2])
    names = encoder_weight_names(model)
    assert set(names.values()) == {key for key in model.state_dict()
                                   if not key.startswith(("tabs.", "task_tokens.", "head."))}
    prefix = "backbone." if encoder == "resnet18" else ""  # the ConViT's names are DyTox's own
    assert all(in_model == prefix + own for own, in_model in names.items())
    assert ("conv1.weight" if encoder == "resnet18" else "sabs.0.attn.qk.weight") in names
