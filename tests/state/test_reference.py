"""Checkpoints of the published DyTox code load here and give the published outputs."""
from __future__ import annotations

import pickle

import pytest
import torch

from conftest import shared_path
from continual.state.reference import load_reference_checkpoint

FIXTURE = "fixtures/reference_dytox"
PATHS = [(False, False), (True, False), (False, True), (True, True)]  # (fused, joint)


def fixture(name: str) -> dict:
    return torch.load(shared_path(f"{FIXTURE}/{name}"), weights_only=True)


@pytest.mark.parametrize("task", [0, 1, 2])
@pytest.mark.parametrize(("fused", "joint"), PATHS)
def test_converted_weights_reproduce_the_reference_outputs(task: int, fused: bool, joint: bool) -> None:
    model = load_reference_checkpoint(shared_path(f"{FIXTURE}/checkpoint_{task}.pth"))
    model.set_arithmetic(fused, joint)
    expected = fixture(f"outputs_task{task}.pt")
    with torch.no_grad():
        out = model(fixture("inputs.pt")["images"])
    assert not model.training
    assert out.logits.shape == expected["logits"].shape == (8, [4, 7, 10][task])
    assert (out.logits - expected["logits"]).abs().max() <= 1e-5
    torch.testing.assert_close(out.task_embeddings, expected["tokens"], rtol=1e-5, atol=1e-5)
    if expected["div"] is None:
        assert out.div_logits is None
    else:
        assert (out.div_logits - expected["div"]).abs().max() <= 1e-5


@pytest.mark.parametrize("task", [0, 1, 2])
def test_float64_outputs_match_to_1e10(task: int) -> None:
    model = load_reference_checkpoint(shared_path(f"{FIXTURE}/checkpoint_{task}.pth")).double()
    expected = fixture(f"outputs_task{task}.pt")
    with torch.no_grad():
        out = model(fixture("inputs.pt")["images"].double())
    torch.testing.assert_close(out.logits, expected["logits_f64"], rtol=0, atol=1e-10)
    torch.testing.assert_close(out.task_embeddings, expected["tokens_f64"], rtol=0, atol=1e-10)
    if expected["div_f64"] is not None:
        torch.testing.assert_close(out.div_logits, expected["div_f64"], rtol=0, atol=1e-10)


def test_architecture_is_inferred_from_the_checkpoint() -> None:
    model = load_reference_checkpoint(shared_path(f"{FIXTURE}/checkpoint_2.pth"))
    config = model.config
    assert (config.embed_dim, config.depth, config.num_heads, config.patch_size, config.input_size) == (48, 3, 4, 4, 16)
    assert (config.local_up_to_layer, config.ind_clf, config.head_div_mode) == (2, "1-1", ("tr",))
    assert model.nb_classes_per_task == [4, 3, 3]
    assert sum(p.numel() for p in model.parameters()) == 88_758  # config.json's count for task 2


class Sneaky:
    """Stands for any object a malicious checkpoint could carry."""


def test_loading_refuses_arbitrary_pickled_objects(tmp_path) -> None:
    """Only tensors, plain containers and argparse.Namespace are unpickled."""
    state = torch.load(shared_path(f"{FIXTURE}/checkpoint_0.pth"), weights_only=False)
    state["args"] = Sneaky()
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(pickle.UnpicklingError):
        load_reference_checkpoint(path)


def test_missing_or_foreign_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_reference_checkpoint(tmp_path / "nope.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="'model' state dict"):
        load_reference_checkpoint(tmp_path / "other.pth")
