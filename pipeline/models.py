"""Model architectures, chosen by ``train.arch``. Built from a plain dict (the model spec) that
is saved in the artifact, so scoring rebuilds exactly what was trained."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ConvNet(nn.Module):
    """The classic MNIST network (conv, conv, pool, dropout, dense, dropout, dense), sized by input."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(64 * (height // 2) * (width // 2), 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ResNet(nn.Module):
    """A small residual CNN: stem, two residual stages, global pooling."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int, width_mult: int = 32):
        super().__init__()
        c = width_mult
        self.net = nn.Sequential(
            nn.Conv2d(channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            _Block(c), nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(),
            _Block(2 * c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLP(nn.Module):
    def __init__(self, num_features: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def build_model(spec: dict[str, Any]) -> nn.Module:
    """spec: {"arch", "input_shape": [C, H, W] or [F], "num_classes"}."""
    arch, shape, n = spec["arch"], spec["input_shape"], spec["num_classes"]
    if arch == "cnn":
        return ConvNet(*shape, n)
    if arch == "resnet":
        return ResNet(*shape, n)
    if arch == "mlp":
        size = 1
        for d in shape:
            size *= d
        return MLP(size, n)
    raise ValueError(f"unknown train.arch {arch!r}; use cnn, resnet or mlp")
