"""timm models under DyTox's decoder (``--encoder timm:NAME``): the tokens of each output layout, the refusals,
and whole runs through main.py (DyTox on a ViT, a ConvNeXt and a ResNet, the baseline, --eval of a checkpoint)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import main
from conftest import REPO_ROOT
from continual.model.build import grown_model
from continual.model.config import ModelConfig
from continual.model.dytox import DyTox
from continual.model.encoders import fit_to_encoder
from continual.model.timm_encoder import TimmTokens, read_layout
from continual.state import checkpoints

TINY_TIMM = ModelConfig(embed_dim=64, depth=3, num_heads=4, patch_size=8, input_size=32, local_up_to_layer=2)
VIT = (("depth", 1), ("embed_dim", 32), ("num_heads", 2))
LAYOUTS = {  # encoder -> (its encoder_args, the layout its forward_features gives)
    "timm:vit_tiny_patch16_224": ((*VIT, ("reg_tokens", 2)), "tokens"),
    "timm:convnext_atto": ((("depths", (1, 1, 1, 1)), ("dims", (8, 16, 24, 32))), "channels_first"),
    "timm:swin_tiny_patch4_window7_224": ((("window_size", 4), ("depths", (1, 1)), ("num_heads", (2, 2)),
                                           ("embed_dim", 16)), "channels_last"),
}


def timm_config(encoder: str, args: tuple = (), **changes: object) -> ModelConfig:
    return fit_to_encoder(dataclasses.replace(TINY_TIMM, encoder=encoder, encoder_args=args, **changes))


@pytest.mark.parametrize("encoder", sorted(LAYOUTS))
def test_each_output_layout_gives_the_feature_rows_as_tokens_without_the_prefix_tokens(encoder: str) -> None:
    args, layout = LAYOUTS[encoder]
    tokens = TimmTokens(timm_config(encoder, args)).eval()
    images = torch.randn(2, 3, 32, 32)
    features = tokens.model.forward_features(images)
    assert tokens.layout.layout == layout
    if layout == "tokens":  # 1 class token and 2 register tokens first, then the 16 patches
        assert tokens.layout.prefix_tokens == 3 and features.shape == (2, 19, 32)
        expected = features[:, 3:]
    elif layout == "channels_first":  # ConvNeXt: (B, C, H, W), position h * W + w
        expected = features.permute(0, 2, 3, 1).reshape(2, -1, features.shape[1])
    else:  # Swin: (B, H, W, C)
        expected = features.reshape(2, -1, features.shape[3])
    assert torch.equal(tokens(images), expected)
    model = grown_model(timm_config(encoder, args), [2, 3])
    assert model.encode(images, model.draw_drop_path_masks(2))[0].shape == expected.shape
    assert model(images).logits.shape == (2, 5) and model.task_tokens[0].shape[-1] == expected.shape[-1]


def test_sab_freezes_the_whole_timm_encoder_and_nothing_else() -> None:
    model = grown_model(timm_config("timm:vit_tiny_patch16_224", VIT), [2, 2])
    model.freeze(["sab", "old_task_tokens", "old_heads"])
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters()
                      if name.startswith(("backbone.", "task_tokens.0", "head.0."))}
    assert any(name.startswith("backbone.model.blocks.0.attn") for name in frozen)


class PooledOnly(nn.Module):
    """A model whose forward_features gives a pooled (B, C) feature: no tokens to decode."""

    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)

    def forward_features(self, images: Tensor) -> Tensor:
        return self.proj(images.mean((2, 3)))


def test_what_cannot_be_an_encoder_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"timm .* has no model 'vit_tiniest'.*list_models\('\*vit\*'\)"):
        timm_config("timm:vit_tiniest")
    with pytest.raises(ValueError, match=r"forward_features gives \(1, 4\), not tokens"):
        read_layout(PooledOnly(), TINY_TIMM)
    with pytest.raises(ValueError, match="option 'num_heads' 5 does not divide the width 32 .* a divisor of 32"):
        timm_config("timm:vit_tiny_patch16_224", VIT, num_heads=5)
    with pytest.raises(ValueError, match="encoder_args .* timm cannot build it"):
        timm_config("timm:vit_tiny_patch16_224", (("depht", 1),))


# ----------------------------------------------------------- through main.py
FILES = [str(REPO_ROOT / "options/data/digits_demo.yaml"), str(REPO_ROOT / "options/model/demo_tiny.yaml")]
DEMO = ["--debug", "--max-task", "2", "--train-per-class", "16", "--memory-size", "20", "--batch-size", "8",
        "--num-workers", "0", "--no-progress", "--no-plots", "--no-tensorboard"]
# DyTox on a ViT, from a file's weights: tests/state/test_pretrained.py
RUNS = {  # name -> the encoder's flags
    "swin": ["--encoder", "timm:swin_tiny_patch4_window7_224", "--encoder-args", "window_size=4", "depths=[1,1]",
             "num_heads=[2,2]", "embed_dim=16"],
    "resnet": ["--encoder", "timm:resnet10t", "--encoder-args", "stem_width=8", "channels=[8,16,24,32]"],
    "baseline_vit": ["--freeze-ft", "backbone", "--encoder", "timm:vit_tiny_patch16_224", "--patch-size", "8",
                     "--encoder-args", "depth=1", "embed_dim=32", "num_heads=2"],
}


def run_main(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    assert main.main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(RUNS))
def test_main_trains_dytox_and_the_baseline_on_timm_encoders(name: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    files = [*FILES, str(REPO_ROOT / "options/model/baseline.yaml")] if name.startswith("baseline") else FILES
    flags = ["--options", *files, *DEMO, *RUNS[name], "--output-basedir", str(tmp_path),
             "--log-dir", str(tmp_path / "logs")]
    printed = run_main([*flags, "--name", name], capsys)
    averages = [line for line in printed.splitlines() if line.startswith("Avg ")]
    assert len(averages) == 1, printed
    print(f"{name}: {averages[0]}")
    folder = next(tmp_path.glob(f"digits/demo/*_{name}"))
    model, saved = checkpoints.load_task_checkpoint(checkpoints.checkpoint_path(folder, 1))
    assert saved["model_config"]["encoder"] == RUNS[name][RUNS[name].index("--encoder") + 1]
    assert isinstance(model, DyTox) == (name != "baseline_vit")
    if name == "swin":  # --eval rebuilds the network from the checkpoint's encoder name and arguments
        evaluated = run_main([*flags, "--eval", "--resume", str(folder)], capsys)
        assert "checkpoint of task 1 (4 classes" in evaluated
        assert dict(model.config.encoder_args) == {"window_size": 4, "depths": (1, 1), "num_heads": (2, 2),
                                                   "embed_dim": 16}
