"""ResNet backbones with torchvision's state_dict layout, and their weights files.

One family, one file (as in timm): :class:`ResNet` builds the CIFAR-style ResNet-18 (3x3 stem,
no max-pool, any width) and the ImageNet ResNet-50 (7x7 stem, max-pool, bottlenecks); both take
RGB in [0, 1] and normalise inside (the mean/std are non-persistent buffers, so the state_dict
keys are exactly torchvision's and its checkpoints load without renaming).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data import ImageDataset
from .errors import CheckpointError, ConfigError, one_line
from .files import atomic_path, file_digest

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    expansion = 1

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


class ResNet(nn.Module):
    """A ResNet whose parameter names match torchvision's ``resnet18``/``resnet50``.

    ``stem="cifar"``: 3x3 stride-1 conv, no max-pool (32x32 inputs); ``stem="imagenet"``: 7x7
    stride-2 conv and a 3x3 max-pool. ``num_classes=0`` builds a headless encoder (``fc`` is
    the identity), e.g. for a self-supervised backbone.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        width: float = 1.0,
        num_classes: int = 1000,
        stem: str = "imagenet",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if not 0 < width <= 8:
            raise ConfigError(f"width must be in (0, 8], got {width}")
        if stem not in ("cifar", "imagenet"):
            raise ConfigError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        widths = [max(1, round(64 * width * 2**i)) for i in range(4)]
        self.width, self.stem_kind = width, stem
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
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
        self.num_features = inplanes
        self.fc = nn.Linear(inplanes, num_classes) if num_classes else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_classes(self) -> int:
        return self.fc.out_features if isinstance(self.fc, nn.Linear) else 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features of RGB images in [0, 1]."""
        # contiguous NCHW: channels-last inputs through pruned (odd) widths corrupt memory in
        # torch 2.13's CPU convolution backward
        x = (x.contiguous() - self.mean) / self.std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def cifar_resnet18(width: float = 1.0, num_classes: int = 100) -> ResNet:
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool), channel widths 64·w, 128·w, 256·w, 512·w."""
    return ResNet(BasicBlock, [2, 2, 2, 2], width, num_classes, "cifar", CIFAR100_MEAN, CIFAR100_STD)


def resnet50(num_classes: int = 1000, width: float = 1.0) -> ResNet:
    """torchvision-layout ResNet-50 (bottleneck, ImageNet stem and normalisation)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], width, num_classes, "imagenet", IMAGENET_MEAN, IMAGENET_STD)


ARCHITECTURES = {"cifar_resnet18": cifar_resnet18, "resnet50": resnet50}


def build_model(arch: str, width: float = 1.0, num_classes: int = 100) -> ResNet:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](width=width, num_classes=num_classes)


# ----------------------------------------------------------------------------- heads


def replace_head(model: ResNet, num_classes: int, rows: Sequence[int] | None = None) -> ResNet:
    """Give ``model`` a fresh ``num_classes``-way head, in place.

    With ``rows`` (indices into the current head, one per new class), the new head starts
    from those rows of the old one: a task of classes the pre-training saw keeps their logits.
    """
    new = nn.Linear(model.num_features, num_classes)
    if rows is not None:
        if not isinstance(model.fc, nn.Linear):
            raise ConfigError("the model has no head to take rows from")
        if len(rows) != num_classes:
            raise ConfigError(f"{len(rows)} head rows given for a {num_classes}-way head")
        with torch.no_grad():
            new.weight.copy_(model.fc.weight[list(rows)])
            new.bias.copy_(model.fc.bias[list(rows)])
    model.fc = new.to(next(model.parameters()).device)
    return model


def head_rows_for(pretrained_classes: Sequence[str] | None, classes: Sequence[str]) -> list[int] | None:
    """Rows of a pre-trained head for ``classes``, or None if the pre-training did not see them all."""
    if not pretrained_classes:
        return None
    lookup = {c: i for i, c in enumerate(pretrained_classes)}
    return [lookup[c] for c in classes] if all(c in lookup for c in classes) else None


# ----------------------------------------------------------------------------- weights files


def save_weights(path: str | os.PathLike, model: nn.Module, metadata: dict | None = None) -> Path:
    """Write ``model.state_dict()`` as safetensors, atomically; every metadata value is stored JSON-encoded
    (so ``"2012"`` comes back a string); values of files written elsewhere that are not JSON load as text."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def _decode_meta(meta: dict[str, str] | None) -> dict:
    out = {}
    for k, v in (meta or {}).items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict and metadata from a ``.safetensors`` file, or from a ``.pt``/``.pth`` state_dict
    (read with ``weights_only=True``: no pickled code is ever run)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
            return load_file(str(path)), _decode_meta(meta)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, KeyError, IndexError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path} is not a readable weights file ({type(e).__name__}: {one_line(e)})") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    return state, {}


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict`` that reports mismatched keys and shapes in one readable line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
        if items:
            problems.append(f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
    if problems:
        raise CheckpointError(f"{source} does not match the architecture: {'; '.join(problems)}")
    model.load_state_dict(state)


def infer_width(state: dict[str, torch.Tensor]) -> float:
    """A ResNet's width multiplier from its stem's output channels."""
    if "conv1.weight" not in state:
        raise CheckpointError("not a ResNet state_dict (no conv1.weight)")
    return state["conv1.weight"].shape[0] / 64


DEFAULT_BACKBONE = "cifar100_resnet18_w0.5.safetensors"


def backbone_search_path(path: str | os.PathLike | None = None) -> list[Path]:
    """Where a backbone is looked for: ``path``, ``$METAVOTE_BACKBONE``, ``../shared/pretrained/<default>``."""
    places = [Path(p) for p in (path, os.environ.get("METAVOTE_BACKBONE")) if p]
    places.append(Path.cwd().parent / "shared" / "pretrained" / DEFAULT_BACKBONE)
    places.append(Path(__file__).resolve().parents[3] / "shared" / "pretrained" / DEFAULT_BACKBONE)
    return places


def locate_backbone(path: str | os.PathLike | None = None) -> Path:
    """The first existing backbone file of :func:`backbone_search_path`, or a clear error."""
    if path is not None and not Path(path).exists():
        raise CheckpointError(f"backbone {path} does not exist")
    places = backbone_search_path(path)
    for p in places:
        if p.exists():
            return p
    raise CheckpointError(
        f"no pre-trained backbone found (looked in: {', '.join(map(str, places))}); "
        "pass --backbone PATH, set METAVOTE_BACKBONE, or make one with `metavote pretrain`"
    )


def load_backbone(
    path: str | os.PathLike, arch: str | None = None, width: float | None = None, dataset: ImageDataset | None = None
) -> tuple[ResNet, dict]:
    """Build a model and load a weights file into it, checking every key and shape.

    The architecture, width and class count come from the file's metadata when present,
    else from ``arch`` (default ``cifar_resnet18``) and the tensors' shapes. The returned
    metadata always holds ``arch``, ``width``, ``classes`` (or None) and ``fingerprint``
    (sha256 of the file), which the zoo uses to refuse mixing backbones. Given the ``dataset``
    the head was trained on, ``classes`` is filled from it when the file names only the dataset.
    """
    state, meta = load_weights(path)
    arch = arch or meta.get("arch") or "cifar_resnet18"
    width = float(width or meta.get("width") or infer_width(state))
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 0
    model = build_model(arch, width, num_classes)
    load_state_checked(model, state, str(path))
    meta.update(arch=arch, width=width, fingerprint=file_digest(path))
    meta.setdefault("classes", None)
    if meta["classes"] is None and dataset is not None and meta.get("dataset") == dataset.name and num_classes == dataset.num_classes:
        meta["classes"] = list(dataset.classes)  # files that name only their dataset (like the shared backbone)
    return model, meta


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
