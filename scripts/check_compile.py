"""``--compile`` against eager mode on the published CIFAR model, in training mode (docs/benchmarks.md).

The model of the second task (two task tokens, the old ones and old heads frozen, stochastic depth 0.1 as the
CIFAR options set) runs one forward and backward eagerly and once compiled as a phase compiles it
(``continual.train.compilation``, inductor by default), from the same seed: the same drop-path masks, so the
logits, the divergence logits and every gradient must agree to ``--tolerance`` (relative and absolute). Prints
one JSON line (largest differences, compilation time) and exits 1 when they do not agree.

    python scripts/check_compile.py                      # CPU, inductor (needs a C++ compiler; minutes)
    python scripts/check_compile.py --device cuda        # in scripts/gpu_check.sh
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continual.config import parse_config  # noqa: E402
from continual.config.settings import model_config  # noqa: E402
from continual.model.dytox import DyTox  # noqa: E402
from continual.runtime.device import attention_kernel_for  # noqa: E402
from continual.train.compilation import compiled_for_phase  # noqa: E402

OPTIONS = ["--options", str(Path(__file__).resolve().parents[1] / "options/model/cifar_dytox.yaml")]


def outputs_and_gradients(model: DyTox, forward: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    out = forward(images)
    (out.logits.square().mean() + out.div_logits.square().mean()).backward()
    values = {"logits": out.logits.detach().float(), "div_logits": out.div_logits.detach().float()}
    values.update({f"grad {name}": p.grad.float() for name, p in model.named_parameters() if p.grad is not None})
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="inductor", choices=["inductor", "aot_eager"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    device = torch.device(args.device)
    config = dataclasses.replace(model_config(parse_config(OPTIONS)), gpsa_kernel=attention_kernel_for(device))
    torch.manual_seed(0)
    model = DyTox(config, 10)
    model.expand(10)
    model.freeze(["old_task_tokens", "old_heads"])
    model.to(device).train()
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    eager = outputs_and_gradients(model, model, images)
    start = time.perf_counter()
    compiled = outputs_and_gradients(model, compiled_for_phase(model, True, args.backend), images)
    seconds = time.perf_counter() - start
    worst_abs, worst_rel, failures = 0.0, 0.0, []
    for name, expected in eager.items():
        got = compiled[name]
        difference = (got - expected).abs()
        worst_abs = max(worst_abs, float(difference.max()))
        worst_rel = max(worst_rel, float((difference / expected.abs().clamp_min(1e-12)).max()))
        if not torch.allclose(got, expected, rtol=args.tolerance, atol=args.tolerance):
            failures.append(name)
    print(json.dumps({"device": device.type, "backend": args.backend, "compile_and_step_s": round(seconds, 1),
                      "tensors": len(eager), "max_abs_difference": worst_abs, "max_rel_difference": worst_rel,
                      "tolerance": args.tolerance, "not_within_tolerance": failures}))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
