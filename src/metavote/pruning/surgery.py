"""Physical surgery: cut layers to the kept units (extract, shrink) or silence the dropped ones (mask).

Layers are cut by a table keyed by layer type (Torch-Pruning's pruner box): each entry knows how to
keep some output and some input indices of its layer. Which indices a group's units are comes from
its slots, so the same code cuts CNN channels, ViT heads (a ``qkv`` of fewer heads) and MLP nodes.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..models.base import Backbone
from ..models.units import OUT, UnitGroup
from .subnetwork import SubNetwork

Index = torch.Tensor | None


def _pick(t: torch.Tensor, out_idx: Index, in_idx: Index = None) -> torch.Tensor:
    t = t.detach()
    t = t if out_idx is None else t[out_idx]
    return t if in_idx is None else t[:, in_idx]


def _cut_conv(m: nn.Conv2d, out_idx: Index, in_idx: Index) -> nn.Conv2d:
    if m.groups != 1:
        raise ConfigError("cannot cut a grouped convolution")
    w = _pick(m.weight, out_idx, in_idx)
    new = nn.Conv2d(w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation, bias=m.bias is not None)
    new.weight.data.copy_(w)
    if m.bias is not None:
        new.bias.data.copy_(_pick(m.bias, out_idx))
    return new


def _cut_linear(m: nn.Linear, out_idx: Index, in_idx: Index) -> nn.Linear:
    w = _pick(m.weight, out_idx, in_idx)
    new = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None)
    new.weight.data.copy_(w)
    if m.bias is not None:
        new.bias.data.copy_(_pick(m.bias, out_idx))
    return new


def _cut_batchnorm(m: nn.BatchNorm2d, out_idx: Index, in_idx: Index) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(m.num_features if out_idx is None else len(out_idx), m.eps, m.momentum, m.affine, m.track_running_stats)
    for key in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, key).data.copy_(_pick(getattr(m, key), out_idx))
    new.num_batches_tracked.copy_(m.num_batches_tracked)
    return new


def _cut_layernorm(m: nn.LayerNorm, out_idx: Index, in_idx: Index) -> nn.LayerNorm:
    n = m.normalized_shape[0] if out_idx is None else len(out_idx)
    new = nn.LayerNorm(n, m.eps, m.elementwise_affine)
    if m.elementwise_affine:
        new.weight.data.copy_(_pick(m.weight, out_idx))
        new.bias.data.copy_(_pick(m.bias, out_idx))
    return new


CUTTERS: dict[type, Callable[[nn.Module, Index, Index], nn.Module]] = {
    nn.Conv2d: _cut_conv, nn.Linear: _cut_linear, nn.BatchNorm2d: _cut_batchnorm, nn.LayerNorm: _cut_layernorm,
}


def cut(module: nn.Module, out_idx: Index, in_idx: Index) -> nn.Module:
    """A copy of ``module`` with only the given output and input indices (None keeps all)."""
    cutter = CUTTERS.get(type(module))
    if cutter is None:
        raise ConfigError(f"cannot cut a {type(module).__name__}; known layers: {', '.join(t.__name__ for t in CUTTERS)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # a layer of a fully pruned group
        return cutter(module, out_idx, in_idx).to(module.weight.device).train(module.training)


def shrink(model: Backbone, keep: Mapping[str, np.ndarray], groups: Sequence[UnitGroup] | None = None) -> Backbone:
    """A physically smaller copy of ``model`` keeping, per group, the units ``keep[name]``
    (indices in ``model``'s *current* numbering). The model passed in is not modified."""
    groups = groups or model.unit_groups()
    out_idx: dict[str, torch.Tensor] = {}
    in_idx: dict[str, torch.Tensor] = {}
    for g in groups:
        units = np.asarray(keep[g.name])
        g.check(units)
        for slot in g.slots:
            (out_idx if slot.role == OUT else in_idx)[slot.module] = slot.indices(units, g.size)
    small = copy.deepcopy(model)
    for name in sorted(set(out_idx) | set(in_idx)):
        parent, _, attr = name.rpartition(".")
        holder = small.get_submodule(parent) if parent else small
        setattr(holder, attr, cut(model.get_submodule(name), out_idx.get(name), in_idx.get(name)))
    return small


def extract(backbone: Backbone, subnet: SubNetwork) -> Backbone:
    """The physically small module of ``subnet`` with the backbone's weights at Omega."""
    subnet.check(backbone.unit_groups())
    return shrink(backbone, subnet.kept)


@torch.no_grad()
def zero_units(model: nn.Module, groups: Sequence[UnitGroup], kept: Mapping[str, np.ndarray]) -> None:
    """In place: the units not in ``kept[group]`` output exactly zero. Every parameter of their
    ``out`` slots is zeroed (conv and linear rows, biases, norm scale and shift); a group with no
    unit left also loses the biases of the layers that read it, as its extracted block adds nothing."""
    for g in groups:
        dropped = np.setdiff1d(np.arange(g.size), kept[g.name])
        for slot in g.slots:
            module = model.get_submodule(slot.module)
            if slot.role == OUT:
                idx = slot.indices(dropped, g.size).to(next(module.parameters()).device)
                for p in module.parameters(recurse=False):
                    p[idx] = 0.0
            elif len(dropped) == g.size and getattr(module, "bias", None) is not None:
                module.bias.zero_()


def mask(backbone: Backbone, subnet: SubNetwork) -> Backbone:
    """A full-size copy of ``backbone`` whose dropped units output exactly zero (:func:`zero_units`).
    In eval mode the outputs equal those of :func:`extract`."""
    masked = copy.deepcopy(backbone)
    groups = backbone.unit_groups()
    subnet.check(groups)
    zero_units(masked, groups, subnet.kept)
    return masked
