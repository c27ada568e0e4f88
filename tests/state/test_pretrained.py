"""``--pretrained FILE``: the encoder starts from a local file's weights (a timm state dict, a published DyTox
checkpoint's encoder), the file's sha256 is recorded and a resume with another file is refused; a file that
does not fit, or that would unpickle code, is refused in one line before anything is written."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import main
from conftest import REPO_ROOT
from continual.config import ConfigError
from continual.model.build import grown_model
from continual.model.config import ModelConfig
from continual.state.pretrained import RECORD, load_pretrained, sha256_of

VIT_ARGS = {"depth": 1, "embed_dim": 32, "num_heads": 2}
DEMO = ["--options", str(REPO_ROOT / "options/data/digits_demo.yaml"), str(REPO_ROOT / "options/model/demo_tiny.yaml"),
        "--debug", "--max-task", "2", "--train-per-class", "16", "--memory-size", "20", "--num-workers", "0",
        "--no-progress", "--no-plots", "--no-tensorboard", "--encoder", "timm:vit_tiny_patch16_224",
        "--encoder-args", *[f"{key}={value}" for key, value in VIT_ARGS.items()]]


def saved_timm_vit(path: Path, **changes: int) -> Path:
    """A timm ViT's state dict, classifier included, as ``torch.save(model.state_dict())`` writes it."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4,
                              num_classes=10, **{**VIT_ARGS, **changes})
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A 2-task DyTox run on a timm ViT started from a saved timm state dict: (weights file, run folder, stdout)."""
    base = tmp_path_factory.mktemp("pretrained")
    weights = saved_timm_vit(base / "vit.pth")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main.main([*DEMO, "--pretrained", str(weights), "--name", "from_file", "--output-basedir", str(base),
                          "--log-dir", str(base / "logs")]) == 0
    return weights, next(base.glob("digits/demo/*_from_file")), printed.getvalue()


def test_a_run_from_a_timm_state_dict_trains_and_records_the_files_sha256(pretrained_run: tuple) -> None:
    weights, folder, printed = pretrained_run
    averages = [line for line in printed.splitlines() if line.startswith("Avg ")]
    assert len(averages) == 1, printed
    print(averages[0])
    epochs = [json.loads(line) for line in (folder / "epochs.jsonl").read_text().splitlines()]
    assert epochs and all(torch.isfinite(torch.tensor(row["total"])) for row in epochs)
    record = json.loads((folder / RECORD).read_text())
    assert record == {"file": str(weights.resolve()), "sha256": sha256_of(weights)}
    assert (folder / "config.yaml").is_file()


def test_the_encoder_holds_the_files_weights_right_after_loading(tmp_path: Path) -> None:
    weights = saved_timm_vit(tmp_path / "vit.pth")
    config = ModelConfig(embed_dim=32, depth=3, num_heads=4, patch_size=4, input_size=16, local_up_to_layer=2,
                         encoder="timm:vit_tiny_patch16_224", encoder_args=tuple(VIT_ARGS.items()))
    model = grown_model(config, [2])
    load_pretrained(model, weights, config.encoder)
    saved = torch.load(weights, weights_only=True)
    own = model.state_dict()
    assert {key for key in saved if not key.startswith("head.")} == {
        key[len("backbone.model."):] for key in own if key.startswith("backbone.model.")}
    assert all(torch.equal(own["backbone.model." + key], value) for key, value in saved.items()
               if not key.startswith("head."))


def test_a_published_dytox_checkpoint_gives_the_convit_encoder_alone(tmp_path: Path) -> None:
    config = ModelConfig(embed_dim=32, depth=3, num_heads=4, patch_size=4, input_size=16, local_up_to_layer=2)
    published = grown_model(config, [2, 2])
    path = tmp_path / "checkpoint_1.pth"
    torch.save({"model": published.state_dict(), "args": argparse.Namespace(ind_clf="1-1")}, path)
    model = grown_model(config, [2])
    load_pretrained(model, path, "convit")
    ours, theirs = model.state_dict(), published.state_dict()
    encoder = [key for key in ours if key.split(".")[0] in ("patch_embed", "pos_embed", "sabs")]
    assert len(encoder) > 10 and all(torch.equal(ours[key], theirs[key]) for key in encoder)
    assert not torch.equal(ours["tabs.0.attn.q.weight"], theirs["tabs.0.attn.q.weight"])  # the decoder is not loaded


def test_weights_of_another_shape_are_refused_listing_what_does_not_fit(tmp_path: Path) -> None:
    weights = saved_timm_vit(tmp_path / "wide.pth", embed_dim=48, depth=2)
    config = ModelConfig(embed_dim=32, depth=3, num_heads=4, patch_size=4, input_size=16, local_up_to_layer=2,
                         encoder="timm:vit_tiny_patch16_224", encoder_args=tuple(VIT_ARGS.items()))
    with pytest.raises(ConfigError) as refusal:
        load_pretrained(grown_model(config, [2]), weights, config.encoder)
    message = str(refusal.value)
    assert "\n" not in message and message.startswith(f"--pretrained {weights}: its weights do not fit")
    assert "missing 0, unexpected 12 (blocks.1.norm1.weight, blocks.1.norm1.bias, " in message
    assert "of another shape 18 (cls_token (1, 1, 48) for (1, 1, 32), pos_embed (1, 17, 48) for (1, 17, 32)" in message


class WritesAMarker:
    """Unpickling this runs ``Path.touch`` on the marker: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return Path.touch, (self.marker,)


def test_main_refuses_a_file_that_would_unpickle_code_and_runs_none_of_it(tmp_path: Path) -> None:
    marker, weights = tmp_path / "marker", tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": WritesAMarker(marker)}, weights)
    refused = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *DEMO, "--pretrained", str(weights),
                              "--name", "evil", "--output-basedir", str(tmp_path / "out"), "--log-dir",
                              str(tmp_path / "logs")], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    errors = [line for line in refused.stderr.splitlines() if not line.startswith(("note:", "warning:"))]
    assert refused.returncode == 2 and errors == [
        f"error: --pretrained {weights}: refused: reading it would unpickle getattr, which could run code; "
        f"give a file of tensors, e.g. torch.save(model.state_dict(), FILE)"], refused.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_resume_with_another_file_or_none_is_refused_writing_nothing(pretrained_run: tuple, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    weights, folder, _ = pretrained_run
    original = weights.read_bytes()
    before = {path: path.stat().st_mtime_ns for path in folder.rglob("*")}

    def refusal(argv: list[str]) -> str:
        capsys.readouterr()
        assert main.main([*DEMO, *argv, "--resume", str(folder)]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note:")]
        assert len(errors) == 1, errors
        return errors[0]

    recorded = sha256_of(weights)
    try:
        weights.write_bytes(saved_timm_vit(tmp_path / "other.pth").read_bytes())  # the same path, other weights
        assert refusal(["--pretrained", str(weights)]) == (
            f"error: --resume {folder}: refused: the run started from the file of sha256 {recorded}, this command "
            f"gives --pretrained {weights} (sha256 {sha256_of(weights)}); give the file the run started from "
            f"({folder / RECORD})")
    finally:
        weights.write_bytes(original)
    assert refusal([]).startswith(f"error: --resume {folder}: refused, these options differ from the saved run: "
                                  f"pretrained (saved '/")  # the path, cut
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*")} == before
