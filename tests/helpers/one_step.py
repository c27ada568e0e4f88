"""One optimisation step of a small DyTox, for tests/program/test_multi_process.py.

    torchrun --nproc-per-node 2 one_step.py ddp OUT   # each process trains on its own batch
    python one_step.py accumulate OUT                 # one process, both batches, 2 accumulation steps

Rank 0 (or the single process) saves the parameters before and after the step to OUT.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from continual.method.dytox_objective import BatchLoss  # noqa: E402
from continual.method.losses import bce_with_logits  # noqa: E402
from continual.model.config import ModelConfig  # noqa: E402
from continual.model.dytox import DyTox  # noqa: E402
from continual.runtime.distributed import cleanup, setup, wrap_for_training  # noqa: E402
from continual.train.epoch import Precision, StepOptions, train_one_epoch  # noqa: E402

CONFIG = ModelConfig(embed_dim=32, depth=2, num_heads=4, patch_size=4, input_size=8, local_up_to_layer=1,
                     head_div=True, head_div_mode=("tr",), drop_path=0.0)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 3, 8, 8, generator=generator), torch.randint(0, 5, (6,), generator=generator))
            for _ in range(2)]


def main(mode: str, out: Path) -> None:
    ctx = setup("cpu")
    torch.manual_seed(0)
    model = DyTox(CONFIG, 3)
    model.expand(2)
    model.freeze(["old_task_tokens", "old_heads"])
    data = batches()
    loader, accum = ([data[ctx.rank]], 1) if mode == "ddp" else (data, 2)
    trained = wrap_for_training(model, ctx, find_unused=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    settings = BatchLoss(criterion=bce_with_logits, auto_kd=True, kd_weight=0.0, tau=1.0, head_div=0.1)
    train_one_epoch(trained, None, loader, optimizer, settings, Precision(torch.device("cpu"), False),
                    StepOptions(accum_steps=accum))
    if ctx.is_main:
        after = {name: p.detach().clone() for name, p in model.named_parameters()}
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        torch.save({"before": before, "after": after, "trainable": trainable}, out)
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
