"""The ResNet-18 encoder: shapes, token layout, published state dict keys, blocks, init, BatchNorm, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

from continual.model.resnet import RESNET_EMBED_DIM, ReducedResNet18, ResNetEncoder, SumBasicBlock


def images(batch: int = 2, size: tuple[int, int] = (32, 32), chans: int = 3) -> torch.Tensor:
    return torch.randn(batch, chans, *size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def encoder() -> ResNetEncoder:
    torch.manual_seed(0)
    return ResNetEncoder().eval()


def test_embed_dim() -> None:
    assert RESNET_EMBED_DIM == 504
    assert ResNetEncoder.embed_dim == 504


@pytest.mark.parametrize(("size", "grid"), [((32, 32), (4, 4)), ((64, 64), (8, 8)), ((24, 40), (3, 5))])
def test_output_shapes(encoder: ResNetEncoder, size: tuple[int, int], grid: tuple[int, int]) -> None:
    with torch.no_grad():
        tokens, maps = encoder(images(3, size))
    h, w = grid
    assert tokens.shape == (3, h * w, 504)
    assert [tuple(m.shape) for m in maps] == [
        (3, 64, 2 * h * 2, 2 * w * 2),
        (3, 128, 2 * h, 2 * w),
        (3, 256, h, w),
        (3, 256, h, w),
    ]


def test_cifar_gives_16_tokens_and_published_feature_maps(encoder: ResNetEncoder) -> None:
    with torch.no_grad():
        tokens, (f1, f2, f3, f4) = encoder(images())
    assert tokens.shape == (2, 16, 504)
    assert f1.shape == (2, 64, 16, 16)
    assert f2.shape == (2, 128, 8, 8)
    assert f3.shape == (2, 256, 4, 4)
    assert f4.shape == (2, 256, 4, 4)
    torch.testing.assert_close(f4, F.relu(f3), rtol=0, atol=0)
    # The layer outputs are taken before the ReLU (the blocks end at the residual sum): they have negatives.
    assert (f1 < 0).any() and (f2 < 0).any() and (f3 < 0).any()


def test_tokens_are_the_head_output_in_published_layout(encoder: ResNetEncoder) -> None:
    x = images()
    with torch.no_grad():
        tokens, _ = encoder(x)
        f1 = encoder.layer1(encoder.maxpool(F.relu(encoder.bn1(encoder.conv1(x)))))
        f3 = encoder.layer3(F.relu(encoder.layer2(F.relu(f1))))
        fmap = encoder.head(F.relu(f3))  # (B, 504, 4, 4)
    torch.testing.assert_close(tokens, fmap.view(2, 504, -1).permute(0, 2, 1), rtol=0, atol=0)
    width = fmap.shape[3]
    for h, w in [(0, 0), (0, 3), (1, 2), (3, 1)]:
        torch.testing.assert_close(tokens[:, h * width + w, :], fmap[:, :, h, w], rtol=0, atol=0)


def expected_state_dict_keys() -> list[str]:
    """torchvision's resnet18 keys for conv1, bn1 and layer1-3, plus the head's (ReLUs at 2 and 5 have none)."""
    kept = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
    keys = [k for k in resnet18(weights=None).state_dict() if k.startswith(kept)]
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    head = ["head.0.weight", "head.0.bias", *[f"head.1.{p}" for p in bn]]
    head += ["head.3.weight", "head.3.bias", *[f"head.4.{p}" for p in bn]]
    return keys + head


def test_state_dict_keys_are_the_published_backbone_keys(encoder: ResNetEncoder) -> None:
    keys = list(encoder.state_dict())
    expected = expected_state_dict_keys()
    assert sorted(keys) == sorted(expected)
    assert len(keys) == len(set(keys))
    assert {"conv1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer3.1.bn2.bias"} <= set(keys)
    assert not [k for k in keys if k.startswith(("layer4.", "fc.", "avgpool."))]
    assert not hasattr(encoder, "layer4") and not hasattr(encoder, "fc")
    tv = resnet18(weights=None).state_dict()
    for key, value in encoder.state_dict().items():
        if key.startswith(("bn1.", "layer")):
            assert value.shape == tv[key].shape, key
    assert encoder.state_dict()["conv1.weight"].shape == (64, 3, 3, 3)
    assert encoder.state_dict()["head.3.weight"].shape == (504, 384, 1, 1)


def test_stem_is_the_cifar_conv(encoder: ResNetEncoder) -> None:
    conv = encoder.conv1
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    assert conv.bias is None and conv.in_channels == 3 and conv.out_channels == 64
    pool = encoder.maxpool
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    assert ResNetEncoder(in_chans=1).conv1.weight.shape == (64, 1, 3, 3)


def test_in_chans(encoder: ResNetEncoder) -> None:
    with torch.no_grad():
        tokens, _ = ResNetEncoder(in_chans=1).eval()(images(chans=1))
    assert tokens.shape == (2, 16, 504)


def test_layers_are_torchvision_resnet18_with_the_same_init() -> None:
    torch.manual_seed(3)
    enc = ResNetEncoder()
    torch.manual_seed(3)
    tv = resnet18(weights=None).state_dict()
    for key, value in enc.state_dict().items():
        if key.startswith(("bn1.", "layer")):
            torch.testing.assert_close(value, tv[key], rtol=0, atol=0, msg=key)
    assert all(isinstance(b, SumBasicBlock) and isinstance(b, BasicBlock) for b in enc.layer1)


def test_blocks_end_at_the_residual_sum_as_published() -> None:
    """The published BasicBlock comments out torchvision's last ReLU: torchvision's block is relu(ours)."""
    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(64, 128, 1, stride=2, bias=False), nn.BatchNorm2d(128))
    ours = SumBasicBlock(64, 128, stride=2, downsample=downsample).eval()
    theirs = BasicBlock(64, 128, stride=2, downsample=downsample).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        out = ours(x)
        manual = ours.bn2(ours.conv2(F.relu(ours.bn1(ours.conv1(x))))) + downsample(x)
        torch.testing.assert_close(out, manual, rtol=0, atol=0)
        torch.testing.assert_close(theirs(x), F.relu(out), rtol=0, atol=0)
    assert (out < 0).any()


def test_init_stem_kaiming_fan_out_head_pytorch_default() -> None:
    torch.manual_seed(1)
    enc = ResNetEncoder()
    # kaiming_normal_(mode="fan_out", nonlinearity="relu"): std sqrt(2 / (64 * 3 * 3)).
    std = enc.conv1.weight.std().item()
    assert math.isclose(std, math.sqrt(2 / (64 * 9)), rel_tol=0.1)
    # PyTorch's default conv init is uniform within 1 / sqrt(fan_in), with a bias; BatchNorm starts at 1 and 0.
    for index, fan_in in [(0, 256), (3, 384)]:
        conv = enc.head[index]
        assert isinstance(conv, nn.Conv2d)
        assert conv.weight.abs().max().item() <= 1 / math.sqrt(fan_in)
        assert conv.bias is not None and conv.bias.abs().max().item() > 0
    for index in (1, 4):
        norm = enc.head[index]
        assert isinstance(norm, nn.BatchNorm2d)
        torch.testing.assert_close(norm.weight, torch.ones_like(norm.weight))
        torch.testing.assert_close(norm.bias, torch.zeros_like(norm.bias))


def test_batchnorm_statistics_update_in_train_mode_only() -> None:
    torch.manual_seed(0)
    enc = ResNetEncoder()
    before = enc.bn1.running_mean.clone()
    enc.train()
    with torch.no_grad():
        enc(images())
    after_train = enc.bn1.running_mean.clone()
    assert not torch.equal(after_train, before)
    enc.eval()
    with torch.no_grad():
        enc(images())
    torch.testing.assert_close(enc.bn1.running_mean, after_train, rtol=0, atol=0)


def test_gradients_reach_the_stem() -> None:
    torch.manual_seed(0)
    enc = ResNetEncoder().train()
    tokens, maps = enc(images())
    weights = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(2))
    (tokens * weights).sum().backward()
    grad = enc.conv1.weight.grad
    assert grad is not None and grad.abs().sum().item() > 0
    assert all(p.grad is not None for p in enc.parameters())


def test_the_cifar_baselines_resnet18_is_torchvision_s_with_a_3x3_stem_and_no_maxpool() -> None:
    """resnet18_cifar: torchvision's ResNet-18 whose 7x7 stride-2 conv and max-pool are a 3x3 stride-1 conv and
    nothing; 32x32 images reach layer4 at 4x4 and the feature is its average, 512 wide."""
    torch.manual_seed(0)
    encoder = ReducedResNet18().eval()
    reference = resnet18()
    ours = {k: v.shape for k, v in encoder.net.state_dict().items()}
    theirs = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert ours == {**theirs, "conv1.weight": torch.Size([64, 3, 3, 3])}
    images = torch.randn(2, 3, 32, 32)
    net = encoder.net
    x = net.relu(net.bn1(F.conv2d(images, net.conv1.weight, stride=1, padding=1)))  # no max-pool after it
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    assert x.shape == (2, 512, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), x.mean(dim=(2, 3)))
    assert isinstance(net.layer1[0], BasicBlock) and not isinstance(net.layer1[0], SumBasicBlock)
