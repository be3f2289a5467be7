"""ResNets with torchvision's state_dict layout.

One family, one file (as in timm): :class:`ResNet` builds the CIFAR-style ResNet-18 (3x3 stem,
no max-pool, any width) and the ImageNet ResNet-50 (7x7 stem, max-pool, bottlenecks); torchvision's
checkpoints load without renaming. The family declares its own prunable units
(:meth:`ResNet.unit_groups`): a residual stream per stage and one group per inner conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .base import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, Backbone, register_model
from .units import IN, Slot, UnitGroup


class BasicBlock(nn.Module):
    expansion = 1
    inner = ("conv1",)  # convs whose outputs are block-internal units; the last one feeds the stream

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4
    inner = ("conv1", "conv2")

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


class ResNet(Backbone):
    """A ResNet whose parameter names match torchvision's ``resnet18``/``resnet50``.

    ``stem="cifar"``: 3x3 stride-1 conv, no max-pool (32x32 inputs); ``stem="imagenet"``: 7x7
    stride-2 conv and a 3x3 max-pool. ``num_classes=0`` builds a headless encoder (``fc`` is
    the identity), e.g. for a self-supervised backbone.
    """

    family = "resnet"
    classifier_name = "fc"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        width: float = 1.0,
        num_classes: int = 1000,
        stem: str = "imagenet",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        arch: str = "resnet",
    ) -> None:
        if not 0 < width <= 8:
            raise ConfigError(f"width must be in (0, 8], got {width}")
        if stem not in ("cifar", "imagenet"):
            raise ConfigError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        size = 32 if stem == "cifar" else 224
        super().__init__(mean, std, (3, size, size))
        widths = [max(1, round(64 * width * 2**i)) for i in range(4)]
        self.width, self.stem_kind, self.arch = width, stem, arch
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stage = []
            for j in range(blocks):
                stage.append(block(inplanes, planes, (1 if i == 0 else 2) if j == 0 else 1))
                inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes) if num_classes else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_features(self) -> int:
        last = self.layer4[-1]
        return getattr(last, f"bn{len(last.inner) + 1}").num_features

    @property
    def config(self) -> dict:
        return {"arch": self.arch, "width": self.width, "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def body_blocks(self) -> list[list[nn.Parameter]]:
        stem = [*self.conv1.parameters(), *self.bn1.parameters()]
        return [stem] + [list(block.parameters()) for i in range(1, 5) for block in getattr(self, f"layer{i}")]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def unit_groups(self) -> list[UnitGroup]:
        """The prunable channel groups in depth order (order of first use in the forward pass).

        A residual stream starts at the stem and again at every block with a shortcut conv; it
        holds the outputs of the blocks that add into it and is read by their successors. Every
        block adds one internal group per inner conv. CIFAR ResNet-18 has 12 groups (four streams
        named ``layer1``..``layer4``, eight ``layerS.B.conv1``); ResNet-50 has 37 (``stem``, four
        streams, 32 internal). Described explicitly rather than traced: a ResNet has exactly these
        couplings, the description needs no example input and works unchanged on a shrunk model;
        a test checks it against Torch-Pruning's DependencyGraph.
        """
        streams = [{"name": "stem", "producers": ["conv1", "bn1"], "consumers": []}]
        internal: list[UnitGroup] = []
        for s in range(1, 5):
            for b, block in enumerate(getattr(self, f"layer{s}")):
                p = f"layer{s}.{b}"
                streams[-1]["consumers"].append(f"{p}.conv1")
                if block.downsample is not None:
                    streams[-1]["consumers"].append(f"{p}.downsample.0")
                    streams.append({"name": f"layer{s}", "producers": [f"{p}.downsample.0", f"{p}.downsample.1"], "consumers": []})
                for i, conv in enumerate(block.inner, start=1):
                    internal.append(self._group(f"{p}.{conv}", [f"{p}.{conv}", f"{p}.bn{i}"], [f"{p}.conv{i + 1}"]))
                last = len(block.inner) + 1
                streams[-1]["producers"] += [f"{p}.conv{last}", f"{p}.bn{last}"]
                if streams[-1]["name"] == "stem":
                    streams[-1]["name"] = f"layer{s}"  # the stem's channels flow on through this stage
        if isinstance(self.fc, nn.Linear):  # a headless encoder has no head to feed
            streams[-1]["consumers"].append("fc")
        groups = internal + [self._group(st["name"], st["producers"], st["consumers"]) for st in streams]
        order = {name: i for i, (name, _) in enumerate(self.named_modules())}
        return sorted(groups, key=lambda g: min(order[p] for p in g.producers))

    def _group(self, name: str, producers: list[str], consumers: list[str]) -> UnitGroup:
        size = self.get_submodule(producers[0]).weight.shape[0]
        slots = tuple(Slot(m) for m in producers) + tuple(Slot(m, IN) for m in consumers)
        return UnitGroup(name, size, slots, probes=tuple(producers[1::2]))


@register_model("cifar_resnet18")
def cifar_resnet18(width: float = 1.0, num_classes: int = 100, mean: Sequence[float] = CIFAR100_MEAN,
                   std: Sequence[float] = CIFAR100_STD) -> ResNet:
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool), channel widths 64·w, 128·w, 256·w, 512·w."""
    return ResNet(BasicBlock, [2, 2, 2, 2], width, num_classes, "cifar", mean, std, arch="cifar_resnet18")


@register_model("resnet50")
def resnet50(num_classes: int = 1000, width: float = 1.0, mean: Sequence[float] = IMAGENET_MEAN,
             std: Sequence[float] = IMAGENET_STD) -> ResNet:
    """torchvision-layout ResNet-50 (bottleneck, ImageNet stem and normalisation)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], width, num_classes, "imagenet", mean, std, arch="resnet50")
