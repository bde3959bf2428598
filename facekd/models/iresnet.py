"""IResNet backbones (Duta et al. 2020, "Improved Residual Networks"), as used by ArcFace.

The module tree reproduces insightface arcface_torch's ``backbones/iresnet.py`` exactly:
parameter and buffer names (``conv1``, ``bn1``, ``prelu``, ``layer1..4`` of
``IBasicBlock`` with ``bn1/conv1/bn2/prelu/conv2/bn3/downsample``, ``bn2``, ``dropout``,
``fc``, ``features``) and shapes are identical, so an insightface ``backbone.pth`` loads
with ``strict=True``.  Unlike the original, the input size is a parameter: the flatten
size of ``fc`` follows from it (``ceil(input_size / 16) ** 2`` positions).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

from facekd.models.registry import MODELS

BN_EPS = 1e-5


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN-conv-BN-PReLU-conv(stride)-BN (+ shortcut)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=BN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    """IResNet trunk + the ArcFace embedding head (BN-dropout-FC-BN).

    Args:
        layers: number of blocks in each of the four stages.
        embedding_size: output dimension (insightface's ``num_features``).
        input_size: side of the square input; 112 for insightface models.
        dropout: dropout probability before ``fc`` (insightface uses 0).
        width: channels of the four stages.
    """

    def __init__(self, layers: Sequence[int], embedding_size: int = 512, input_size: int = 112,
                 dropout: float = 0.0, width: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.feature_channels = width[-1]
        self.conv1 = conv3x3(3, width[0])
        self.bn1 = nn.BatchNorm2d(width[0], eps=BN_EPS)
        self.prelu = nn.PReLU(width[0])
        inplanes = width[0]
        for index, (blocks, planes) in enumerate(zip(layers, width), start=1):
            setattr(self, f"layer{index}", self._make_layer(inplanes, planes, blocks))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        side = input_size
        for _ in range(4):   # each stage halves the map: 3x3, stride 2, padding 1
            side = math.ceil(side / 2)
        self.fc = nn.Linear(inplanes * side * side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        self._init_weights()

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
        stage: List[nn.Module] = [IBasicBlock(inplanes, planes, stride=2)]
        stage += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(feature_map, embedding)``: the last stage's map and the embedding."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        feature_map = x
        x = torch.flatten(self.bn2(x), 1)
        embedding = self.features(self.fc(self.dropout(x)))
        return feature_map, embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a normalised ``N x 3 x S x S`` batch into ``N x embedding_size``."""
        return self.forward_features(x)[1]


_DEPTHS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3),
           "iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}


def _register(name: str, layers: Tuple[int, ...]) -> None:
    def factory(embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0,
                width: Sequence[int] = (64, 128, 256, 512)) -> IResNet:
        return IResNet(layers, embedding_size, input_size, dropout, width)

    factory.__name__ = name
    factory.__doc__ = f"IResNet with {layers} blocks per stage (insightface ``{name}``)."
    MODELS.register(name)(factory)


for _name, _layers in _DEPTHS.items():
    _register(_name, _layers)
