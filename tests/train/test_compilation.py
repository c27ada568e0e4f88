"""``--compile``: the compiled model trains as the eager one does, and every phase compiles afresh."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from support import TINY

from continual.model.dytox import DyTox
from continual.train.compilation import compiled_for_phase

STOCHASTIC_DEPTH = dataclasses.replace(TINY, drop_path=0.2)


def outputs_and_gradients(model: DyTox, forward: torch.nn.Module, images: torch.Tensor) -> tuple[list, dict]:
    torch.manual_seed(7)  # the same drop-path masks, if the compiled graph draws them as eager mode does
    model.zero_grad(set_to_none=True)
    out = forward(images)
    (out.logits.square().sum() + out.div_logits.sum()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return [out.logits.detach(), out.div_logits.detach()], grads


def test_compiled_training_forward_and_backward_equal_eager_with_stochastic_depth_and_frozen_parts() -> None:
    """aot_eager traces the model as inductor does (graph capture, autograd) and runs the captured aten graph."""
    torch.manual_seed(0)
    model = DyTox(STOCHASTIC_DEPTH, 3)
    model.expand(2)
    model.freeze(["old_task_tokens", "old_heads"])
    model.train()
    images = torch.randn(4, 3, 8, 8)
    eager = outputs_and_gradients(model, model, images)
    compiled = outputs_and_gradients(model, compiled_for_phase(model, True, "aot_eager"), images)
    for got, expected in zip(compiled[0], eager[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert compiled[1].keys() == eager[1].keys() and "task_tokens.0" not in eager[1]  # frozen: no gradient
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, rtol=1e-5, atol=1e-5, msg=name)
    dropped = outputs_and_gradients(model, model, images)[0][0]
    torch.manual_seed(8)
    assert not torch.equal(model(images).logits, dropped)  # stochastic depth is on: the seed matters


def test_each_phase_compiles_afresh_so_many_tasks_never_reach_the_recompilation_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With a limit of one compilation per function, two growths compile twice; without the reset per phase the
    first growth is an error (never a silent fall-back to eager mode)."""
    import torch._dynamo  # noqa: PLC0415

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    model = DyTox(TINY, 2).eval()
    images = torch.randn(2, 3, 8, 8)
    for _ in range(2):
        model.expand(2)
        with torch.no_grad():
            torch.testing.assert_close(compiled_for_phase(model, True, "eager")(images).logits,
                                       model(images).logits)
    compiled = compiled_for_phase(model, True, "eager")
    with torch.no_grad():
        compiled(images)
        model.expand(2)
        with pytest.raises(Exception, match="recompile_limit"):
            compiled(images)
    torch._dynamo.reset()


def test_without_compile_the_module_is_the_model_itself() -> None:
    model = DyTox(TINY, 2)
    assert compiled_for_phase(model, False) is model
