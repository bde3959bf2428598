"""MobileFaceNet (Chen et al. 2018, "MobileFaceNets: Efficient CNNs for Accurate Real-Time
Face Verification on Mobile Devices").

Table 1 of the paper, at 112x112 input::

    conv3x3 s2 64 -> depthwise conv3x3 64 -> bottlenecks (t, c, n, s):
    (2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)
    -> conv1x1 512 -> linear GDConv7x7 512 -> linear conv1x1 D -> BN

PReLU is the non-linearity; the global depthwise convolution (GDConv) replaces global
average pooling so that the network can weight face positions differently.  With a
128-d embedding it has ~0.99M parameters and ~221M multiply-accumulates.  The GDConv
kernel follows the input size, so ``input_size=56`` gives a 4x4 GDConv.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import nn

from facekd.models.registry import MODELS

# (expansion t, output channels c, repeats n, first stride s) from Table 1.
BOTTLENECK_SETTINGS: Tuple[Tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm, followed by PReLU unless ``linear``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1,
                 groups: int = 1, linear: bool = False, padding: int = None) -> None:
        padding = (kernel - 1) // 2 if padding is None else padding
        layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False),
                  nn.BatchNorm2d(out_ch)]
        if not linear:
            layers.append(nn.PReLU(out_ch))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """MobileNetV2 inverted residual: expand 1x1 -> depthwise 3x3 -> linear project 1x1."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.block = nn.Sequential(
            ConvBN(in_ch, hidden, 1),
            ConvBN(hidden, hidden, 3, stride, groups=hidden),
            ConvBN(hidden, out_ch, 1, linear=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet backbone.

    Args:
        embedding_size: output dimension (128 in the paper; 512 as in insightface's ``mbf``).
        input_size: side of the square input; the GDConv kernel is ``ceil(input_size / 16)``.
        settings: bottleneck table ``(t, c, n, s)``.
    """

    def __init__(self, embedding_size: int = 128, input_size: int = 112,
                 settings: Sequence[Tuple[int, int, int, int]] = BOTTLENECK_SETTINGS) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.conv1 = ConvBN(3, 64, 3, stride=2)
        self.dw_conv1 = ConvBN(64, 64, 3, groups=64)
        blocks, in_ch = [], 64
        for expansion, out_ch, repeats, stride in settings:
            for index in range(repeats):
                blocks.append(Bottleneck(in_ch, out_ch, stride if index == 0 else 1, expansion))
                in_ch = out_ch
        self.bottlenecks = nn.Sequential(*blocks)
        self.conv2 = ConvBN(in_ch, 512, 1)
        self.feature_channels = 512
        side = input_size
        for _ in range(4):   # the four stride-2 layers, each 3x3 with padding 1
            side = math.ceil(side / 2)
        self.gdconv = ConvBN(512, 512, side, groups=512, linear=True, padding=0)
        self.linear = nn.Conv2d(512, embedding_size, 1, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(feature_map, embedding)``; the map is the 512-channel conv2 output."""
        feature_map = self.conv2(self.bottlenecks(self.dw_conv1(self.conv1(x))))
        embedding = self.bn(torch.flatten(self.linear(self.gdconv(feature_map)), 1))
        return feature_map, embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a normalised ``N x 3 x S x S`` batch into ``N x embedding_size``."""
        return self.forward_features(x)[1]


@MODELS.register("mobilefacenet")
def mobilefacenet(embedding_size: int = 128, input_size: int = 112) -> MobileFaceNet:
    """MobileFaceNet as in Chen et al. 2018 (128-d by default)."""
    return MobileFaceNet(embedding_size, input_size)
