"""The demo's architectures written again in PyTorch, layer for layer, for speed comparisons in one process.

`cnn8_small` and `resnet18_small` as medkeras builds them (same widths, kernels, strides, BatchNorm, pooling,
linear head). Used only by benchmarks; torch is not a medkeras dependency.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(cin, cout, stride=1):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class PlainCNN(nn.Module):
    def __init__(self, widths=(32, 64, 128, 256), classes=2):
        super().__init__()
        layers, cin = [], 3
        for i, w in enumerate(widths):
            layers += _conv_bn_relu(cin, w) + _conv_bn_relu(w, w)
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))


class SmallResNet18(nn.Module):
    def __init__(self, widths=(32, 64, 128, 256), classes=2):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, widths[0]))
        blocks, cin = [], widths[0]
        for s, w in enumerate(widths):
            for b in range(2):
                blocks.append(BasicBlock(cin, w, 2 if (b == 0 and s > 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class Ensemble(nn.Module):
    """Pixels [0, 255] NHWC -> mean of the members' logits (each normalizes to [-1, 1] as medkeras' `tf` mode)."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2) / 127.5 - 1.0
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def demo_ensemble():
    return Ensemble([SmallResNet18(), PlainCNN()])
