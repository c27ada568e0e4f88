"""The ResNet-18 encoder of the published DyTox code (``--resnet``): convolutional tokens for the decoder.

    images -> CIFAR stem (3x3 conv, bn, relu, maxpool) -> layer1 -> relu -> layer2 -> relu -> layer3 -> relu
           -> 1x1 conv head to 504 channels -> tokens (B, H*W, 504)

The layers are torchvision's ResNet-18 (same block construction, initialisation
and parameter names), so that the state dict keys are those of the published
``backbone.*`` minus the prefix and its checkpoints load unchanged. Two
departures from torchvision, both from the published code: the stem is a 3x3
stride-1 conv (32x32 images keep their resolution up to the maxpool), and the
residual blocks end at the sum, without torchvision's last ReLU (the published
copy comments it out; the encoder applies a ReLU between layers instead).
layer4, the pooling and the classifier are dropped: the published encoder
replaces layer4 by an Identity and never uses the rest.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import resnet as tv_resnet

from continual.model.config import RESNET_EMBED_DIM  # channels of the head, the token width the decoder sees

RESNET18_LAYERS = [2, 2, 2, 2]  # blocks per layer, as torchvision.models.resnet18


class SumBasicBlock(tv_resnet.BasicBlock):
    """torchvision's BasicBlock without the ReLU after the residual sum, as in the published copy.

    Only ``forward`` changes: construction, initialisation and parameter names
    are torchvision's, so ``torchvision.models.resnet18`` weights load into it.
    """

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + identity


def cifar_stem_conv(in_chans: int) -> nn.Conv2d:
    """The published 3x3 stride-1 stem conv, initialised as torchvision initialises its convs."""
    conv = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def token_head(in_channels: int = 256, embed_dim: int = RESNET_EMBED_DIM) -> nn.Sequential:
    """1x1 convs from layer3's channels to the token width. PyTorch's default init: the published
    head is built after the ResNet's init loop."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 384, kernel_size=1),
        nn.BatchNorm2d(384),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, embed_dim, kernel_size=1),
        nn.BatchNorm2d(embed_dim),
        nn.ReLU(inplace=True),
    )


class ResNetEncoder(nn.Module):
    """ResNet-18 up to layer3 with a CIFAR stem and a 1x1 conv head: images -> (B, H*W, 504) tokens.

    ``forward`` also returns the four feature maps that POD distillation compares
    between the old and the new model.
    """

    embed_dim = RESNET_EMBED_DIM

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        # torchvision.models.resnet18(weights=None) is ResNet(BasicBlock, [2, 2, 2, 2]); only the block's
        # forward differs here. Its 7x7 conv1, layer4, avgpool and fc are not kept.
        net = tv_resnet.ResNet(SumBasicBlock, RESNET18_LAYERS)
        self.conv1 = cifar_stem_conv(in_chans)
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.head = token_head(256, self.embed_dim)

    def stem(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 64, ceil(H / 2), ceil(W / 2))."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, C, H, W) -> tokens (B, H/8 * W/8, 504), token h * W' + w for cell (h, w); and [f1, f2, f3, f4].

        f1..f3 are the layer outputs before the ReLU that follows them; f4 = relu(f3)
        (the published layer4 is an Identity) is what the head reads.
        """
        f1 = self.layer1(self.stem(images))  # (B, 64, H/2, W/2)
        f2 = self.layer2(F.relu(f1))  # (B, 128, H/4, W/4)
        f3 = self.layer3(F.relu(f2))  # (B, 256, H/8, W/8)
        f4 = F.relu(f3)
        x = self.head(f4)  # (B, 504, H/8, W/8)
        tokens = x.view(x.shape[0], self.embed_dim, -1).permute(0, 2, 1)  # (B, H/8 * W/8, 504)
        return tokens, [f1, f2, f3, f4]


class ReducedResNet18(nn.Module):
    """``--encoder resnet18_cifar``: the ResNet-18 of the CIFAR baselines in the DyTox paper (iCaRL, WA, DER), for
    the networks with one pooled feature (the baseline's, DER's extractors): images -> (B, 512).

    torchvision's ResNet-18 (its blocks, with their last ReLU, its initialisation and parameter names) with a 3x3
    stride-1 stem and no max-pool, so that 32x32 images reach layer4 at 4x4; the global average pool is kept and
    the classifier dropped (the method puts its own on the feature).
    """

    embed_dim = 512

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        net = tv_resnet.ResNet(tv_resnet.BasicBlock, RESNET18_LAYERS)
        net.conv1 = cifar_stem_conv(in_chans)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 512), the average of layer4's map."""
        return self.net(images)
