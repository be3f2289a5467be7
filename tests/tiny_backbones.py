"""Constructors that tests name as backbones (``--backbone py:tiny_backbones:FUNCTION``), and a model
of PyTorch's own attention layers (``nn.TransformerEncoderLayer``, so ``nn.MultiheadAttention``)."""

from __future__ import annotations

import torch
from torch import nn

from metavote.models import register_model


def tiny_cnn(image_size: int = 16) -> nn.Module:
    """A plain classifier of 10 classes (fixed seed: the same weights at every call, as a pre-trained model has)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def not_a_model() -> str:
    return "a string"


def broken() -> nn.Module:
    raise RuntimeError("checkpoint missing")


@register_model("tiny_transformer")
class TinyTransformer(nn.Module):
    """Patches, ``nn.TransformerEncoder`` of pre-norm ``nn.TransformerEncoderLayer``s, mean pooling, a head."""

    def __init__(self, num_classes: int = 3, dim: int = 32, heads: int = 4, depth: int = 2, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Conv2d(3, dim, 8, 8)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=batch_first, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = self.encoder(t if self.batch_first else t.transpose(0, 1))
        return self.fc(self.norm(t.mean(1 if self.batch_first else 0)))


class ShuffleUnit(nn.Module):
    """ShuffleNet's unit: a grouped 1x1 convolution, a channel shuffle, a depthwise 3x3 convolution, a
    grouped 1x1 convolution, and the residual add."""

    def __init__(self, channels: int, mid: int, groups: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, mid, 1, groups=groups, bias=False), nn.BatchNorm2d(mid)
        self.shuffle = nn.ChannelShuffle(groups)
        self.dw, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn3 = nn.Conv2d(mid, channels, 1, groups=groups, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(torch.relu(self.bn1(self.conv1(x))))
        return torch.relu(x + self.bn3(self.conv2(self.bn2(self.dw(y)))))


@register_model("tiny_shufflenet")
class TinyShuffleNet(nn.Module):
    """A stem and ShuffleNet units of ``mid`` inner channels in ``groups`` groups."""

    def __init__(self, num_classes: int = 3, channels: int = 24, mid: int = 36, groups: int = 3, units: int = 2) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.units = nn.Sequential(*[ShuffleUnit(channels, mid, groups) for _ in range(units)])
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.units(torch.relu(self.bn(self.stem(x)))).mean((2, 3)))
