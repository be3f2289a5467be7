"""The face every model family shows, the architecture table (:data:`MODELS`), and task heads.

Shared code talks to a :class:`Backbone` only through this interface (timm's is the model):
``forward_features`` (unpooled), ``forward_head`` (pool + classifier, or the pooled pre-logits),
``features`` (pooled pre-logits of an image batch), ``get_classifier`` / ``set_classifier`` /
``reset_classifier``, ``num_features``, ``unit_groups()`` (the family declares its own prunable
units) and ``config`` (enough to rebuild it: :func:`~metavote.models.registry.create_model`). Input size and
normalisation are data beside the weights, as in timm's pretrained cfg: ``input_size``, ``mean``,
``std``. Models take RGB in [0, 1] and normalise inside (non-persistent buffers, so state-dict keys
stay those of the reference implementations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .units import UnitGroup

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class of every model family.

    Subclasses set ``family`` (a name: ``"resnet"``, ``"vit"``, ``"traced"``; which methods apply
    follows from :meth:`capabilities`), ``classifier_name``
    (the head module's attribute, ``fc`` or ``head``) and implement ``forward_features``,
    ``forward_head``, ``num_features``, ``unit_groups`` and ``config``.
    """

    family: ClassVar[str] = "base"
    classifier_name: ClassVar[str] = "head"

    def __init__(self, mean: Sequence[float], std: Sequence[float], input_size: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(tuple(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tuple(std)).view(1, 3, 1, 1), persistent=False)
        self.input_size = tuple(int(s) for s in input_size)

    # -- forward
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous NCHW: channels-last inputs through pruned (odd) widths corrupt memory in
        # torch 2.13's CPU convolution backward
        return (x.contiguous() - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits features of RGB images in [0, 1]."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    # -- head
    @property
    def num_features(self) -> int:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def set_classifier(self, head: nn.Module) -> None:
        setattr(self, self.classifier_name, head)

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised ``num_classes``-way head (identity for 0), on the model's device."""
        head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.set_classifier(head.to(self.mean.device))

    @property
    def num_classes(self) -> int:
        head = self.get_classifier()
        return head.out_features if isinstance(head, nn.Linear) else 0

    def classifier_keys(self) -> set[str]:
        """State-dict keys of the head (task-specific: left out of dense views and averages)."""
        return {f"{self.classifier_name}.{k}" for k in self.get_classifier().state_dict()}

    # -- description
    def unit_groups(self) -> list[UnitGroup]:
        raise NotImplementedError

    def shrunk_from(self, groups: Sequence[UnitGroup], sizes: dict[str, int]) -> None:
        """Called on the copy that :func:`~metavote.pruning.shrink` made, with the groups it cut and
        their new sizes. Families that read their groups off their layers need nothing; one that
        keeps a traced description updates it here."""

    def capabilities(self) -> set[str]:
        """What methods may ask of this model: ``units`` (unit groups), ``probes`` (every group has
        a layer where activation and Taylor importance measure), ``batchnorm``, ``heads`` (some group
        is attention heads), ``tokens`` (token pruning: metavote's own ViT)."""
        groups = self.unit_groups()
        caps = {"units"} if groups else set()
        caps |= {"probes"} if groups and all(g.probes for g in groups) else set()
        caps |= {"batchnorm"} if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules()) else set()
        return caps | ({"heads"} if any(g.kind == "head" for g in groups) else set())

    def body_blocks(self) -> list[list[nn.Parameter]]:
        """The body's parameters block by block in forward order, the stem first and the head left
        out: what a partial freeze counts (:func:`~metavote.training.frozen`)."""
        raise NotImplementedError

    @property
    def config(self) -> dict:
        raise NotImplementedError

    @property
    def pretrained_cfg(self) -> dict:
        """Input size, normalisation and head name, as timm's pretrained cfg gives them."""
        return {"input_size": self.input_size, "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
                "classifier": self.classifier_name}

    def flops_key(self) -> tuple:
        """What the cost of a step depends on besides batch and input size (default: the parameter
        shapes). A model whose cost depends on more (tokens kept, say) adds it here."""
        return tuple((k, tuple(p.shape)) for k, p in self.named_parameters())


# ----------------------------------------------------------------------------- registry

MODELS: dict[str, Callable[..., Backbone]] = {}


def register_model(name: str) -> Callable:
    """Decorator: make a model constructor available to :func:`~metavote.models.registry.create_model` under ``name``."""

    def add(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        MODELS[name] = fn
        return fn

    return add


# ----------------------------------------------------------------------------- heads


def replace_head(model: Backbone, num_classes: int, rows: Sequence[int | Sequence[int] | None] | None = None) -> Backbone:
    """Give ``model`` a fresh ``num_classes``-way head, in place.

    With ``rows`` (one entry per new class), the new head starts from those rows of the old one: a
    task of classes the pre-training saw keeps their logits. An entry may be several rows (their
    mean: a class whose pre-training classes are its kinds, as ImageNet's brown, black and polar
    bears are CIFAR's bear) or None (that row stays freshly initialised, for the caller to fill).
    """
    old = model.get_classifier()
    if rows is not None:
        if not isinstance(old, nn.Linear):
            raise ConfigError("the model has no head to take rows from")
        if len(rows) != num_classes:
            raise ConfigError(f"{len(rows)} head rows given for a {num_classes}-way head")
    model.reset_classifier(num_classes)
    if rows is not None:
        new = model.get_classifier()
        with torch.no_grad():
            for k, r in enumerate(rows):
                if r is not None:
                    idx = [r] if isinstance(r, (int, np.integer)) else list(r)
                    new.weight[k] = old.weight[idx].mean(0)
                    new.bias[k] = old.bias[idx].mean(0)
    return model


def head_rows_for(pretrained_classes: Sequence[str] | None, classes: Sequence[str]) -> list[int] | None:
    """Rows of a pre-trained head for ``classes``, or None if the pre-training did not see them all."""
    if not pretrained_classes:
        return None
    lookup = {c: i for i, c in enumerate(pretrained_classes)}
    return [lookup[c] for c in classes] if all(c in lookup for c in classes) else None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
