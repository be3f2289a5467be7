"""Importance criteria: small classes with one call that scores every unit of every group.

As in Torch-Pruning, a criterion is ``__call__(model, groups, batches) -> {group name: scores}``,
one score per current unit, higher = more important. Activation and Taylor importance measure at
a group's ``probes`` (the BatchNorms of a CNN group).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.units import OUT, UnitGroup


def _probes(groups: Sequence[UnitGroup], criterion: str) -> None:
    bare = [g.name for g in groups if not g.probes]
    if bare:
        raise ConfigError(f"{criterion} importance needs groups with probe layers; {', '.join(bare[:3])} have none")


class Importance:
    """Scores every unit of every group of a (possibly already pruned) model on some batches."""

    name = "base"
    needs_grad = False
    needs_data = True

    def __call__(self, model: nn.Module, groups: Sequence[UnitGroup], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ActivationImportance(Importance):
    """Mean post-ReLU activation of each channel over the data (Molchanov et al. 2016), summed over
    the probes of a group. The paper's default criterion."""

    name = "activation"

    @torch.no_grad()
    def __call__(self, model, groups, batches):
        _probes(groups, self.name)
        model.eval()
        sums: dict[str, torch.Tensor] = {}

        def hook(name):
            def record(_module, _inp, out):
                s = F.relu(out).float().mean((0, 2, 3))
                sums[name] = sums.get(name, 0) + s
            return record

        handles = [model.get_submodule(n).register_forward_hook(hook(n)) for g in groups for n in g.probes]
        try:
            for x, _ in batches:
                model(x.to(next(model.parameters()).device))
        finally:
            for h in handles:
                h.remove()
        return {g.name: sum(sums[n] for n in g.probes).cpu() for g in groups}


class TaylorImportance(Importance):
    """First-order Taylor importance (Molchanov et al. 2019): (gamma * dL/dgamma + beta * dL/dbeta)^2
    of each channel's BatchNorm probe, accumulated over batches and summed over a group's probes."""

    name = "taylor"
    needs_grad = True

    def __call__(self, model, groups, batches):
        _probes(groups, self.name)
        model.eval()  # gradients without updating BatchNorm statistics
        scores = {g.name: torch.zeros(g.size) for g in groups}
        device = next(model.parameters()).device
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            for g in groups:
                for n in g.probes:
                    bn = model.get_submodule(n)
                    scores[g.name] += ((bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).detach() ** 2).cpu()
        model.zero_grad(set_to_none=True)
        return scores


class RandomImportance(Importance):
    """Uniform random scores: the control criterion (no data, no cost)."""

    name = "random"
    needs_data = False

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, model, groups, batches):
        return {g.name: torch.rand(g.size, generator=self.generator) for g in groups}


def unit_norms(model: nn.Module, group: UnitGroup, role: str = OUT, grad: bool = False) -> torch.Tensor:
    """Squared L2 norm of each unit's weights in the group's ``role`` slots: its rows of the layers
    that produce it (``out``: conv filters, qkv rows, fc1 rows; norm layers' scales left out) or its
    columns of the layers that read it (``in``: the next conv's input channels, proj or fc2 columns).
    ``grad``: of the weights' gradients instead (zero where there is none)."""
    total = torch.zeros(group.size)
    for slot in group.slots:
        weight = model.get_submodule(slot.module).weight
        weight = (weight.grad if grad else weight) if weight.dim() >= 2 else None
        if slot.role != role or weight is None:
            continue
        weight = weight.detach().float()
        rows = (weight if role == OUT else weight.transpose(0, 1)).flatten(1).pow(2).sum(1)
        total += rows.reshape(slot.copies, group.size, slot.width).sum((0, 2)).cpu()
    return total


class MagnitudeImportance(Importance):
    """The L2 norm of each unit's producing weights (filters, qkv rows, fc1 rows); no data. The
    criterion of the magnitude-based baselines (MEST, IHT)."""

    name = "magnitude"
    needs_data = False

    def __call__(self, model, groups, batches):
        return {g.name: unit_norms(model, g).sqrt() for g in groups}


IMPORTANCES = {"activation": ActivationImportance, "taylor": TaylorImportance, "random": RandomImportance,
               "magnitude": MagnitudeImportance}


def get_importance(name: str) -> Importance:
    if name not in IMPORTANCES:
        raise ConfigError(f"unknown importance {name!r}; choose from {', '.join(IMPORTANCES)}")
    return IMPORTANCES[name]()


def keep_top(scores: Mapping[str, torch.Tensor], widths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Per group, the sorted indices of the ``widths[name]`` highest scores (ties: lower index)."""
    keep = {}
    for name, s in scores.items():
        order = torch.argsort(-s.double(), stable=True)[: widths[name]]
        keep[name] = np.sort(order.numpy())
    return keep
