"""The DyTox network: shapes, growth, freezing, gradients, exact fast paths, parameter counts."""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch
from support import SMALL
from timm.layers import DropPath

from conftest import REPO_ROOT
from continual.config import parse_config
from continual.config.settings import model_config
from continual.model.config import ModelConfig
from continual.model.dytox import DropPathMasks, DyTox
from continual.runtime.device import attention_kernel_for


def grown(config: ModelConfig, classes: list[int]) -> DyTox:
    model = DyTox(config, classes[0])
    for nb in classes[1:]:
        model.expand(nb)
    return model


def images(batch: int = 6, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def grown_on(device: torch.device, config: ModelConfig, classes: list[int]) -> DyTox:
    """``grown`` on ``device``, with the GPSA kernel a run there uses (SDPA on CUDA), as the task loop builds it."""
    return grown(dataclasses.replace(config, gpsa_kernel=attention_kernel_for(device)), classes).to(device)


@pytest.fixture
def exact_device(device: torch.device) -> Iterator[torch.device]:
    """``device`` with float32 products computed in float32: CUDA runs cuDNN convolutions (the patch embedding)
    in TF32 by default, whose 10-bit mantissa is far coarser than the 1e-5 that the path comparisons assert."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield device
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def with_paths(model: DyTox, fused: bool, joint: bool) -> DyTox:
    """A copy of ``model`` (same weights) using the given attention/decoding paths."""
    other = copy.deepcopy(model)
    other.set_arithmetic(fused, joint)
    return other


@pytest.mark.parametrize("mode", ["1-1", "1-n", "n-1", "n-n", ""])
def test_output_shapes_for_every_head_mode(mode: str) -> None:
    model = grown(dataclasses.replace(SMALL, ind_clf=mode), [4, 3, 5])
    out = model(images())
    assert out.logits.shape == (6, 12)
    assert out.task_embeddings.shape == (3, 6, 48)
    assert out.div_logits is not None and out.div_logits.shape == (6, 6)  # 5 new classes + "old"


def test_single_task_has_no_divergence_head_and_finetune_phase_disables_it() -> None:
    model = DyTox(SMALL, 4)
    assert model(images()).div_logits is None
    model.expand(3)
    model.set_phase("finetune")  # head_div_mode is ("tr",): the head is not used in finetuning
    assert model(images()).div_logits is None
    model.set_phase("train")
    assert model(images()).div_logits.shape == (6, 4)
    with pytest.raises(ValueError, match="phase"):
        model.set_phase("test")


@pytest.mark.parametrize(("joint", "tolerance"), [(False, 0.0), (True, 1e-6)])
def test_expand_keeps_old_logits_and_adds_one_token_and_head(joint: bool, tolerance: float) -> None:
    """Per-task decoding leaves old logits bit-identical; joint decoding (a masked batched pass) to rounding."""
    model = DyTox(dataclasses.replace(SMALL, joint_tokens=joint), 4).eval()
    x = images()
    with torch.no_grad():
        before = model(x).logits
        model.expand(3)
        after = model(x).logits
    assert after.shape == (6, 7)
    torch.testing.assert_close(after[:, :4], before, rtol=0, atol=tolerance)
    assert len(model.task_tokens) == 2 and len(model.head) == 2
    assert model.nb_classes_per_task == [4, 3]
    assert model.head_div.head.out_features == 4


def test_new_task_token_is_truncated_normal_with_std_002() -> None:
    """timm's trunc_normal_ truncates at +-2 in absolute value, as the published code uses it."""
    model = DyTox(SMALL, 2)
    for _ in range(99):
        model.expand(1)
    tokens = torch.cat([t.detach().flatten() for t in model.task_tokens])  # 100 x 48 values
    assert abs(tokens.std().item() - 0.02) < 0.001 and abs(tokens.mean().item()) < 0.001
    assert not torch.equal(model.task_tokens[0], model.task_tokens[1])


def expected_frozen(model: DyTox, name: str) -> set[str]:
    names = [n for n, _ in model.named_parameters()]
    last = model.nb_tasks - 1
    rules = {
        "all": lambda n: True,
        "old_task_tokens": lambda n: n.startswith("task_tokens.") and n != f"task_tokens.{last}",
        "task_tokens": lambda n: n.startswith("task_tokens."),
        "sab": lambda n: n.startswith(("sabs.", "patch_embed.", "pos_embed")),
        "tab": lambda n: n.startswith("tabs."),
        "old_heads": lambda n: n.startswith("head.") and not n.startswith(f"head.{last}."),
        "heads": lambda n: n.startswith("head."),
        "head_div": lambda n: n.startswith("head_div."),
    }
    return {n for n in names if rules[name](n)}


@pytest.mark.parametrize(
    "name", ["all", "old_task_tokens", "task_tokens", "sab", "tab", "old_heads", "heads", "head_div"]
)
def test_freeze_sets_exactly_the_named_parts_and_an_optimiser_step_leaves_them(name: str) -> None:
    model = grown(SMALL, [4, 3, 3])
    model.freeze(["tab"])  # a previous freeze must be undone by the next one
    model.freeze([name])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == expected_frozen(model, name)
    if name == "all":
        assert not model.training
        return
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    out = model(images())
    (out.logits.square().mean() + out.div_logits.square().mean()).backward()
    optimizer.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, before[n]), n
        else:
            assert not torch.equal(p, before[n]), n


def test_freeze_rejects_unknown_names_without_changing_anything() -> None:
    model = grown(SMALL, [4, 3])
    model.freeze(["sab"])
    with pytest.raises(ValueError, match="encoder"):
        model.freeze(["old_heads", "encoder"])
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == expected_frozen(model, "sab")


@pytest.mark.gpu_check
@pytest.mark.parametrize("joint", [False, True])
def test_every_trainable_parameter_gets_a_gradient(joint: bool, device: torch.device) -> None:
    model = grown_on(device, dataclasses.replace(SMALL, joint_tokens=joint), [4, 3, 3])
    model.freeze(["old_task_tokens", "old_heads"])
    out = model(images().to(device))
    (out.logits.sum() + out.div_logits.sum()).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


def loss_and_grads(
    model: DyTox, x: torch.Tensor, masks: DropPathMasks | None = None, seed: int = 7,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Logits, divergence logits and gradients of a training forward; without ``masks`` the model
    draws its stochastic depth after ``torch.manual_seed(seed)``."""
    model.zero_grad()
    torch.manual_seed(seed)
    out = model(x, masks)
    weights = torch.linspace(-1, 1, out.logits.shape[1], device=out.logits.device)
    # Means, as the real losses: gradients of order 1e-2..1, so that 1e-5 is far above float32 rounding.
    loss = (out.logits * weights).mean() + out.div_logits.square().mean() + out.task_embeddings.square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.div_logits.detach(), grads


def assert_same_training_step(reference: tuple, other: tuple, what: object) -> None:
    """Logits, divergence logits and every gradient equal to 1e-5 (absolute)."""
    (ref_logits, ref_div, ref_grads), (logits, div, grads) = reference, other
    assert (logits - ref_logits).abs().max() <= 1e-5, what
    assert (div - ref_div).abs().max() <= 1e-5, what
    assert grads.keys() == ref_grads.keys(), what
    for n in grads:
        assert (grads[n] - ref_grads[n]).abs().max() <= 1e-5, (n, what)


FAST_PATHS = [(True, False), (False, True), (True, True)]  # (fused attention, joint decoding)


@pytest.mark.gpu_check
@pytest.mark.parametrize(("freeze", "depth"), [
    ([], 3), (["old_task_tokens", "old_heads"], 3), (["sab"], 3),
    ([], 4), (["old_task_tokens", "old_heads"], 4),  # two TABs: the second gets per-image task tokens
])
@pytest.mark.parametrize("drop_path", [0.0, 0.5])
def test_fast_paths_train_like_the_plain_path_with_ten_tasks(freeze: list[str], depth: int, drop_path: float,
                                                            exact_device: torch.device) -> None:
    """Fused attention and joint decoding are the same *training* function as the published arithmetic:
    train mode, stochastic depth on (the masks drawn from the same seed), frozen parts, the divergence
    head, ten tasks; on the device's GPSA kernel (SDPA on CUDA)."""
    config = dataclasses.replace(SMALL, depth=depth, attn_drop=0.0, drop=0.0, drop_path=drop_path)
    plain = with_paths(grown_on(exact_device, config, [5] + [3] * 9), fused=False, joint=False).train()
    plain.freeze(freeze)
    x = images(4).to(exact_device)
    reference = loss_and_grads(plain, x)
    for fused, joint in FAST_PATHS:
        assert_same_training_step(reference, loss_and_grads(with_paths(plain, fused, joint), x), (fused, joint))


@pytest.mark.gpu_check
def test_fast_paths_apply_injected_stochastic_depth_masks_identically(exact_device: torch.device) -> None:
    """Hand-made masks, one per (sample, task token, block): every path drops exactly those branches."""
    config = dataclasses.replace(SMALL, depth=4, drop_path=0.5)
    plain = with_paths(grown_on(exact_device, config, [5] + [3] * 9), fused=False, joint=False).train()
    plain.freeze(["old_task_tokens", "old_heads"])
    x = images(4).to(exact_device)
    generator = torch.Generator().manual_seed(3)

    def mask(*shape: int) -> torch.Tensor:  # kept branches scaled by 1 / keep
        return ((torch.rand(*shape, generator=generator) < 0.5).float() * 2.0).to(exact_device)

    masks = DropPathMasks(
        sabs=[(None, None)] + [(mask(4, 1, 1), mask(4, 1, 1)) for _ in plain.sabs[1:]],  # block 0's rate is 0
        tabs=[(mask(4, 10, 1), mask(4, 10, 1)) for _ in plain.tabs],
    )
    reference = loss_and_grads(plain, x, masks)
    for fused, joint in FAST_PATHS:
        other = loss_and_grads(with_paths(plain, fused, joint), x, masks, seed=99)  # the seed must not matter
        assert_same_training_step(reference, other, (fused, joint))
    other_masks = DropPathMasks(masks.sabs, [(m[0].flip(1), m[1]) for m in masks.tabs])  # token order swapped
    assert (loss_and_grads(plain, x, other_masks)[0] - reference[0]).abs().max() > 1e-3  # masks do matter


def test_stochastic_depth_is_drawn_per_sample_token_and_block_with_the_block_rate() -> None:
    """Over many forwards, each (sample, task token, block) branch is dropped with its block's rate
    (linear from 0 to drop_path over the blocks), independently of the other tokens and branches."""
    config = dataclasses.replace(SMALL, depth=4, local_up_to_layer=2, drop_path=0.3)
    model = grown(config, [2] * 6).train()
    draws = 4000
    masks = [model.draw_drop_path_masks(8) for _ in range(draws)]
    rates = torch.linspace(0, 0.3, 4)
    assert masks[0].sabs[0] == (None, None)  # rate 0: nothing drawn, as timm's Identity
    sab = torch.stack([torch.stack(m.sabs[1]) for m in masks]) == 0  # (draws, 2, B, 1, 1) dropped
    assert abs(sab.float().mean() - rates[1]) < 0.01
    for j in range(2):
        dropped = torch.stack([torch.stack(m.tabs[j]) for m in masks])[..., 0] == 0  # (draws, 2, B, T)
        assert dropped.shape == (draws, 2, 8, 6)
        assert (dropped.float().mean(0) - rates[2 + j]).abs().max() < 0.05  # every (branch, sample, token)
        kept = torch.stack([torch.stack(m.tabs[j]) for m in masks])[..., 0][~dropped]
        torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - rates[2 + j].item())))
        flat = dropped.float().flatten(1)  # (draws, branches x samples x tokens)
        correlation = torch.corrcoef(flat.T)
        off_diagonal = correlation[~torch.eye(len(correlation), dtype=torch.bool)]
        assert off_diagonal.abs().max() < 0.1  # independent: 4000 draws put chance correlations near 0.05
    assert all(m is None for m in model.eval().draw_drop_path_masks(8).tabs[0])  # eval mode: nothing dropped


def test_stochastic_depth_consumes_the_random_stream_as_the_published_loop() -> None:
    """The masks are those timm's DropPath draws in the published per-task loop (each SAB's attention
    then MLP branch per sample, then for each task token each TAB's two branches), from the same seed."""
    config = dataclasses.replace(SMALL, depth=4, local_up_to_layer=2, drop_path=0.3)
    model = grown(config, [2] * 3).train()
    torch.manual_seed(5)
    ours = model.draw_drop_path_masks(6)
    torch.manual_seed(5)
    rates = torch.linspace(0, 0.3, 4).tolist()

    def timm_mask(rate: float, rows: int) -> torch.Tensor:
        return DropPath(rate)(torch.ones(rows, 1, 1)) if rate > 0 else None

    published_sabs = [(timm_mask(rates[i], 6), timm_mask(rates[i], 6)) for i in range(2)]
    published_tabs = [[(timm_mask(rates[2 + j], 6), timm_mask(rates[2 + j], 6)) for j in range(2)] for _ in range(3)]
    assert ours.sabs[0] == (None, None) and published_sabs[0] == (None, None)
    torch.testing.assert_close(torch.stack(ours.sabs[1]), torch.stack(published_sabs[1]), rtol=0, atol=0)
    for t in range(3):
        for j in range(2):
            torch.testing.assert_close(torch.stack(ours.for_token(j, t)), torch.stack(published_tabs[t][j]),
                                       rtol=0, atol=0)


@pytest.mark.gpu_check
def test_fused_path_falls_back_to_plain_when_attention_dropout_is_active(exact_device: torch.device) -> None:
    config = dataclasses.replace(SMALL, attn_drop=0.5, joint_tokens=False)  # same decoding order: same masks
    model = grown_on(exact_device, config, [4, 3]).train()
    plain = with_paths(model, fused=False, joint=False)
    x = images().to(exact_device)
    torch.manual_seed(3)
    fused_out = model(x).logits
    torch.manual_seed(3)
    plain_out = plain(x).logits
    torch.testing.assert_close(fused_out, plain_out, rtol=0, atol=1e-5)


def test_growing_heads_average_published_and_per_class() -> None:
    """1-n heads: head i predicts tasks 0..i. The published code divides the first c_i columns by T - i."""
    for average, expected in [("published", [6.0, 6.0, 1.0, 1.0, 1.0]), ("per_class", [3.0, 3.0, 2.0, 2.0, 1.0])]:
        model = grown(dataclasses.replace(SMALL, ind_clf="1-n", multi_head_average=average), [2, 2, 1])
        ones = [torch.ones(1, n) for n in (2, 4, 5)]  # each head outputs 1 for all its classes
        counts = torch.tensor([[3.0, 3.0, 2.0, 2.0, 1.0]])  # heads predicting each column
        combined = model.average_growing_heads(ones)
        torch.testing.assert_close(combined, counts / torch.tensor([expected]))


def test_invalid_configurations_are_rejected() -> None:
    with pytest.raises(ValueError, match="ind_clf"):
        dataclasses.replace(SMALL, ind_clf="2-2")
    with pytest.raises(ValueError, match="local_up_to_layer"):
        dataclasses.replace(SMALL, depth=6, local_up_to_layer=6)
    with pytest.raises(ValueError, match="num_heads"):
        dataclasses.replace(SMALL, embed_dim=100, num_heads=12)
    with pytest.raises(ValueError, match="patch_size"):
        DyTox(dataclasses.replace(SMALL, input_size=18), 2)
    with pytest.raises(ValueError, match="positive"):
        DyTox(SMALL, 2).expand(0)


@pytest.mark.parametrize(("tasks", "classes", "published"), [(10, 10, 10.73), (20, 5, 10.74), (50, 2, 10.77)])
def test_parameter_counts_of_the_published_cifar_model(tasks: int, classes: int, published: float) -> None:
    """The paper's table gives millions truncated (not rounded) to 2 decimals: 10.745M reads 10.74."""
    cifar = model_config(parse_config(["--options", *(str(REPO_ROOT / "options" / name) for name in (
        "data/cifar100_10-10.yaml", "model/cifar_dytox.yaml"))]))
    assert cifar.head_div and (cifar.embed_dim, cifar.depth, cifar.local_up_to_layer) == (384, 6, 5)
    model = grown(cifar, [classes] * tasks)
    count = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head_div."))
    assert math.floor(count / 1e4) / 100 == published
    per_task = 384 + 2 * 384 + 385 * classes  # token, head LayerNorm, head Linear
    assert count == 10_683_564 + tasks * (per_task - 385 * classes) + 100 * 385


@pytest.mark.gpu_check
def test_expand_creates_parameters_on_the_models_device_and_dtype(device: torch.device) -> None:
    model = DyTox(SMALL, 4).double().to(device)
    model.expand(3)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {(device.type, torch.float64)}
    assert model(images().double().to(device)).logits.dtype == torch.float64


def test_frozen_encoder_records_no_autograd_graph() -> None:
    """Finetuning freezes the encoder (``sab``): its activations are not kept for a backward pass."""
    model = grown(SMALL, [4, 3])
    model.freeze(["sab"])
    encoder_outputs = []
    model.sabs[-1].register_forward_hook(lambda module, args, output: encoder_outputs.append(output))
    out = model(images())
    assert encoder_outputs[0].grad_fn is None and not encoder_outputs[0].requires_grad
    assert out.logits.requires_grad  # the decoder and heads still train


@pytest.mark.gpu_check
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_stays_close_to_float32_on_both_paths(dtype: torch.dtype, device: torch.device) -> None:
    """``--amp``: bfloat16 autocast on a CPU, float16 (the default) or bfloat16 on CUDA; float16 also runs
    on the CPU here (torch autocasts its products), so both dtypes are checked on every device. Stated
    tolerance: logits within 1 % of the largest float32 logit (here 1.6; bfloat16 keeps 8 bits, a relative
    step of 0.4 %, float16 11 bits), gradients within 5 % (relative norm) of the plain path's gradients
    under the same autocast. pos_proj.bias is excluded: its true gradient is zero (a per-head shift of the
    positional scores cancels in the softmax), so what is left of it is rounding."""
    torch.manual_seed(0)
    config = dataclasses.replace(SMALL, drop_path=0.0)
    plain = with_paths(grown_on(device, config, [5] + [3] * 9), fused=False, joint=False)
    fast = with_paths(plain, fused=True, joint=True)
    x = images(8).to(device)
    with torch.no_grad():
        reference = plain.eval()(x).logits
        with torch.autocast(device.type, dtype=dtype):
            low = {name: model.eval()(x).logits.float() for name, model in (("plain", plain), ("fast", fast))}
    for name, logits in low.items():
        assert (logits - reference).abs().max() <= 0.01 * reference.abs().max(), name
    grads = [autocast_gradients(model.train(), x, dtype) for model in (plain, fast)]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        if not name.endswith("pos_proj.bias"):
            assert (grads[1][name] - grads[0][name]).norm() <= 0.05 * grads[0][name].norm(), name


def autocast_gradients(model: DyTox, x: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of a weighted logit sum, the forward under ``dtype`` autocast."""
    with torch.autocast(x.device.type, dtype=dtype):
        logits = model(x).logits
    (logits.float() * torch.linspace(-1, 1, logits.shape[1], device=x.device)).sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.gpu_check
@pytest.mark.parametrize("joint", [True, False])
def test_every_gradient_has_its_parameters_strides(joint: bool, device: torch.device) -> None:
    """DDP's gradient layout contract: a gradient with other strides than its parameter is copied and warned
    about at every step ("Grad strides do not match bucket view strides"); the joint decoding's concatenated
    task tokens used to give each token such a gradient."""
    model = grown_on(device, dataclasses.replace(SMALL, joint_tokens=joint), [2, 2])
    out = model(torch.randn(3, 3, 16, 16).to(device))
    (out.logits.sum() + out.div_logits.sum()).backward()  # type: ignore[union-attr]
    mismatched = [name for name, p in model.named_parameters() if p.grad is not None and p.grad.stride() != p.stride()]
    assert mismatched == [] and model.task_tokens[0].grad is not None
