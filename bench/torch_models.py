"""medkeras' architectures written again in PyTorch, layer for layer, for speed comparisons in one process.

The demo's `cnn8_small` and `resnet18_small`, and the lung-CT ensemble's `vgg19_bn`, `efficientnetb0` and
`resnet101` as medkeras builds them (same widths, kernels, strides, biases, BatchNorm, pooling, head), because
torchvision's wheels do not load against the CPU torch installed here (`torchvision::nms does not exist`).
Parameter counts are checked against the Keras models by the benchmarks. Used only by benchmarks; torch is not
a medkeras dependency.
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


# --- the lung-CT ensemble's members (configs/lung-ct-ensemble.yaml: linear head with dropout 0.3) -------------


class Head(nn.Module):
    def __init__(self, features, classes=2, dropout=0.3):
        super().__init__()
        self.dropout, self.fc = nn.Dropout(dropout), nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(self.dropout(x))


VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGG19BN(nn.Module):
    """medkeras.models.vgg.vgg_bn (= torchvision's vgg19_bn: biased convs + BN, adaptive 7x7 pool, fc 4096 x2)."""

    def __init__(self, classes=2, dropout=0.3):
        super().__init__()
        layers, cin = [], 3
        for item in VGG19:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.BatchNorm2d(item, eps=1e-5, momentum=0.1), nn.ReLU(True)]
            cin = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.body = nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(4096, 4096),
                                  nn.ReLU(True), nn.Dropout(0.5))
        self.head = Head(4096, classes, dropout)

    def forward(self, x):
        x = (x - _IMAGENET_MEAN.to(x)) / _IMAGENET_STD.to(x)  # torch-mode preprocessing as medkeras' vgg19_bn
        return self.head(self.body(torch.flatten(self.pool(self.features(x)), 1)))


_IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _bn(c, eps=1.001e-5):
    return nn.BatchNorm2d(c, eps=eps, momentum=0.01)


class Bottleneck(nn.Module):
    """keras.applications.resnet block1: stride on the first 1x1 conv, biased convs, BN eps 1.001e-5."""

    def __init__(self, cin, filters, stride, shortcut):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, filters, 1, stride), _bn(filters), nn.ReLU(True),
            nn.Conv2d(filters, filters, 3, 1, 1), _bn(filters), nn.ReLU(True),
            nn.Conv2d(filters, 4 * filters, 1), _bn(4 * filters),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(cin, 4 * filters, 1, stride), _bn(4 * filters)) if shortcut else None

    def forward(self, x):
        return torch.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


class ResNet101(nn.Module):
    """keras.applications.ResNet101 (v1, caffe preprocessing) with global average pooling and the head."""

    def __init__(self, classes=2, dropout=0.3, blocks=(3, 4, 23, 3)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3), _bn(64), nn.ReLU(True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for i, (filters, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            for b in range(n):
                layers.append(Bottleneck(cin, filters, (1 if i == 0 else 2) if b == 0 else 1, b == 0))
                cin = 4 * filters
        self.blocks = nn.Sequential(*layers)
        self.head = Head(cin, classes, dropout)

    def forward(self, x):
        x = (x + 1.0) * 127.5  # back to pixels, then caffe mode: BGR minus the ImageNet mean
        x = x.flip(1) - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1).to(x)
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class MBConv(nn.Module):
    """keras.applications.efficientnet block: expand 1x1, depthwise, squeeze-excite, project, drop-connect."""

    def __init__(self, cin, cout, kernel, stride, expand, drop_rate, se_ratio=0.25):
        super().__init__()
        mid = cin * expand
        layers = [nn.Conv2d(cin, mid, 1, bias=False), _bn(mid, 1e-3), nn.SiLU(True)] if expand != 1 else []
        layers += [nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), _bn(mid, 1e-3), nn.SiLU(True)]
        self.expand_dw = nn.Sequential(*layers)
        se = max(1, int(cin * se_ratio))
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, se, 1), nn.SiLU(True), nn.Conv2d(se, mid, 1),
                                nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), _bn(cout, 1e-3))
        self.residual = stride == 1 and cin == cout
        self.drop_rate = drop_rate

    def forward(self, x):
        y = self.expand_dw(x)
        y = self.project(y * self.se(y))
        if not self.residual:
            return y
        if self.training and self.drop_rate > 0:
            keep = torch.rand(y.shape[0], 1, 1, 1, device=y.device) >= self.drop_rate
            y = y * keep / (1.0 - self.drop_rate)
        return y + x


class EfficientNetB0(nn.Module):
    """keras.applications.EfficientNetB0 (its own [0, 255] input normalization, drop-connect 0.2) and the head."""

    BLOCKS = ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
              (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1))

    def __init__(self, classes=2, dropout=0.3, drop_connect=0.2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), _bn(32, 1e-3), nn.SiLU(True))
        total = sum(b[1] for b in self.BLOCKS)
        layers, index = [], 0
        for kernel, repeats, cin, cout, expand, stride in self.BLOCKS:
            for r in range(repeats):
                layers.append(MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand,
                                     drop_connect * index / total))
                index += 1
        self.blocks = nn.Sequential(*layers)
        self.top = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), _bn(1280, 1e-3), nn.SiLU(True))
        self.head = Head(1280, classes, dropout)

    def forward(self, x):
        x = ((x + 1.0) * 127.5 / 255.0 - _IMAGENET_MEAN.to(x)) / _IMAGENET_STD.to(x)
        return self.head(self.top(self.blocks(self.stem(x))).mean(dim=(2, 3)))


LUNG_CT = {"vgg19_bn": VGG19BN, "efficientnetb0": EfficientNetB0, "resnet101": ResNet101}


def lung_ct_member(name: str) -> nn.Module:
    """One member of the lung-CT ensemble alone (takes NHWC pixels like Ensemble)."""
    return Ensemble([LUNG_CT[name]()])


def lung_ct_ensemble(names=("vgg19_bn", "efficientnetb0", "resnet101")) -> nn.Module:
    return Ensemble([LUNG_CT[n]() for n in names])


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters plus BatchNorm running statistics, counted as Keras counts its weights."""
    trainable = sum(p.numel() for p in model.parameters())
    running = sum(b.numel() for name, b in model.named_buffers() if "running" in name)
    return trainable + running


class GatedAttentionMIL(nn.Module):
    """medkeras' series member in PyTorch: one shared encoder (`PlainCNN`'s features, mean-pooled) over every slice
    of a study (B, D, 3, H, W), gated attention (Ilse et al. 2018: V tanh, U sigmoid, w; 128 units), a linear head."""

    def __init__(self, widths=(32, 64, 128, 256), classes=2, units=128):
        super().__init__()
        self.encoder = PlainCNN(widths, classes).features
        self.V, self.U, self.w = nn.Linear(widths[-1], units), nn.Linear(widths[-1], units), nn.Linear(units, 1)
        self.head = nn.Linear(widths[-1], classes)

    def forward(self, x):
        b, d = x.shape[:2]
        h = self.encoder(x.flatten(0, 1) / 127.5 - 1.0).mean(dim=(2, 3)).view(b, d, -1)
        a = torch.softmax(self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h)))[..., 0], dim=1)
        return self.head((a[..., None] * h).sum(dim=1))
