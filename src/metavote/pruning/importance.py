"""Importance criteria: small classes with one call that scores every unit of every group.

As in Torch-Pruning, a criterion is ``__call__(model, groups, batches) -> {group name: scores}``,
one score per current unit, higher = more important. Activation and Taylor importance measure at
a group's ``probes`` (the BatchNorms of a CNN group).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.units import IN, OUT, UnitGroup


def channel_dim(module: nn.Module) -> int:
    """The dimension of a probe's output that holds its channels: the last for linear layers and
    channels-last norms (a ViT's tokens, a ConvNeXt's inverted bottleneck), else 1 (NCHW)."""
    channels_last = isinstance(module, (nn.Linear, nn.LayerNorm)) and getattr(module, "data_format", "channels_last") == "channels_last"
    return -1 if channels_last else 1


def per_unit(channel_scores: torch.Tensor, size: int) -> torch.Tensor:
    """Per-channel scores summed over each unit's channels (a unit of ``width`` channels: a
    grouped convolution's group); unchanged when every unit is one channel."""
    if len(channel_scores) == size:
        return channel_scores
    return channel_scores.reshape(size, -1).sum(1)


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
            def record(module, _inp, out):
                channels = channel_dim(module) % out.dim()
                s = F.relu(out).float().mean(tuple(d for d in range(out.dim()) if d != channels))
                sums[name] = sums.get(name, 0) + s
            return record

        handles = [model.get_submodule(n).register_forward_hook(hook(n)) for g in groups for n in g.probes]
        try:
            for x, _ in batches:
                model(x.to(next(model.parameters()).device))
        finally:
            for h in handles:
                h.remove()
        return {g.name: sum(per_unit(sums[n], g.size) for n in g.probes).cpu() for g in groups}


class TaylorImportance(Importance):
    """First-order Taylor importance (Molchanov et al. 2019): (gamma * dL/dgamma + beta * dL/dbeta)^2
    of each channel's probe (its norm's scale and shift; a probe that is a conv or linear layer sums
    w * dL/dw over each output's weights), accumulated over batches and summed over a group's probes."""

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
                    probe = model.get_submodule(n)
                    s = sum((p * p.grad).detach().flatten(1).sum(1) if p.dim() > 1 else (p * p.grad).detach()
                            for p in (probe.weight, probe.bias) if p is not None and p.grad is not None)
                    scores[g.name] += per_unit(s**2, g.size).cpu()
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
        if slot.role not in (OUT, IN):
            continue  # bare parameters (layer scales) are no unit's weights
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


class TorchPruningImportance(Importance):
    """Torch-Pruning's own group criteria on its own dependency graph, scored for metavote's groups:
    ``tp-magnitude`` (``GroupMagnitudeImportance(p=2)``: the group L2 norm of the weights, the same
    ranking for every task) or ``tp-taylor`` (``GroupTaylorImportance``: weight times gradient of the
    task loss on the batches). For each group, Torch-Pruning's pruning group rooted at the group's
    first producing layer is scored by Torch-Pruning; a unit's score is the sum over its rows there (a
    channel: one; a head: its head_dim rows in each of q, k and v). What Torch-Pruning's pruners rank
    by, without its pruner: metavote cuts the same widths as every other method, so the comparison
    is at equal size (Torch-Pruning's ``MetaPruner`` rounds widths its own way)."""

    def __init__(self, criterion: str = "magnitude") -> None:
        if criterion not in ("magnitude", "taylor"):
            raise ConfigError(f"Torch-Pruning's criteria here are magnitude and taylor, not {criterion!r}")
        self.criterion, self.name = criterion, f"tp-{criterion}"
        self.needs_data = self.needs_grad = criterion == "taylor"

    def __call__(self, model, groups, batches):
        import torch_pruning as tp

        device = next(model.parameters()).device
        was_training = model.training
        model.eval()  # gradients without updating BatchNorm statistics, as TaylorImportance
        try:
            example = torch.rand(1, *model.input_size, generator=torch.Generator().manual_seed(0)).to(device)
            with warnings.catch_warnings():  # bare parameters (a class token): Torch-Pruning guesses their dimension, and says so
                warnings.simplefilter("ignore")
                graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
            model.zero_grad(set_to_none=True)
            if self.criterion == "taylor":
                for x, y in batches:
                    F.cross_entropy(model(x.to(device)), y.to(device)).backward()  # accumulated, as Torch-Pruning's examples do
            criterion = tp.importance.GroupMagnitudeImportance(p=2) if self.criterion == "magnitude" else tp.importance.GroupTaylorImportance()
            scores = {}
            for g in groups:
                slot = next((s for s in g.slots if s.role == OUT and isinstance(model.get_submodule(s.module), (nn.Linear, nn.modules.conv._ConvNd))),
                            None)
                if slot is None:
                    raise ConfigError(f"Torch-Pruning scores a group from its producing convolution or linear layer; {g.name} has none")
                layer = model.get_submodule(slot.module)
                pruner = graph.get_pruner_of_module(layer)
                n = pruner.get_out_channels(layer)
                with torch.no_grad():
                    rows = criterion(graph.get_pruning_group(layer, pruner.prune_out_channels, list(range(n))))
                if rows is None or len(rows) != n or n != slot.copies * g.size * slot.width:
                    raise ConfigError(f"Torch-Pruning gave no score for the {n} outputs of {slot.module}")
                # a unit's rows: ``width`` consecutive ones in each of ``copies`` blocks (Slot.indices' layout)
                scores[g.name] = rows.detach().float().cpu().reshape(slot.copies, g.size, slot.width).sum((0, 2))
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        return scores


IMPORTANCES = {"activation": ActivationImportance, "taylor": TaylorImportance, "random": RandomImportance,
               "magnitude": MagnitudeImportance, "tp-magnitude": lambda: TorchPruningImportance("magnitude"),
               "tp-taylor": lambda: TorchPruningImportance("taylor")}


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
