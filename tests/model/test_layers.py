"""The network's layers: GPSA's fast forms and the hand-written backward passes of the fast path."""
from __future__ import annotations

import pytest
import torch
from support import SMALL

from continual.model.dytox import DyTox
from continual.model.layers import GeluThenLinear, MixedAttention


@pytest.mark.gpu_check
def test_gpsa_fast_forms_equal_the_published_arithmetic(device: torch.device) -> None:
    """Both fast forms of GPSA (content_kernel "sdpa", the GPU choice, and "mixed", the CPU one), flipped on
    one layer and checked on the device (SDPA's own kernels on CUDA) against the published arithmetic
    (``fused`` False: per-sample positional map, renormalised rows), with random gates: outputs and the
    gradients of the input, the gates and the positional projection."""
    gpsa = DyTox(SMALL, 2).sabs[0].attn
    with torch.no_grad():
        gpsa.gating_param.normal_()
        gpsa.pos_proj.weight.normal_()
    gpsa.to(device)
    x = torch.randn(3, gpsa.rel_offsets.shape[0], SMALL.embed_dim, generator=torch.Generator().manual_seed(0))
    x = x.to(device)

    def forward(kernel: str, fused: bool) -> list[torch.Tensor]:
        gpsa.content_kernel, gpsa.fused = kernel, fused
        gpsa.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        out = gpsa(inputs)
        out.square().sum().backward()
        return [out.detach(), inputs.grad, gpsa.gating_param.grad, gpsa.pos_proj.weight.grad]

    reference = forward("mixed", fused=False)
    for kernel in ("sdpa", "mixed"):
        for ours, published in zip(forward(kernel, fused=True), reference, strict=True):
            torch.testing.assert_close(ours, published, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu_check
def test_memory_saving_attention_and_mlp_have_exact_gradients(device: torch.device) -> None:
    """The two hand-written backward passes of the fast path, checked by finite differences in float64
    on the device (their backward calls aten's GELU and softmax backward kernels directly)."""
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64, generator=generator).to(device).requires_grad_()

    q, k, v = rand(2, 3, 5, 4), rand(2, 3, 5, 4), rand(2, 3, 5, 4)
    positional = rand(3, 5, 5).softmax(-1).detach().requires_grad_()
    gate = torch.rand(3, 1, 1, dtype=torch.float64, generator=generator).to(device).requires_grad_()
    assert torch.autograd.gradcheck(MixedAttention.apply, (q, k, v, positional, gate))
    assert torch.autograd.gradcheck(GeluThenLinear.apply, (rand(2, 5, 8), rand(3, 8), rand(3)))
