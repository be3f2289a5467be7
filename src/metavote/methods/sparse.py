"""Training a full-size model with some units switched off: what MEST, DLTH and IHT-Reptile share.

A :class:`UnitMask` holds, per unit group, which units are on. Switched-off units output exactly
zero (every parameter of their ``out`` slots is zero: filters, biases, norm scale and shift), so the
masked model computes what the extracted sub-network computes, while units can still be switched
back on (MEST's regrowth, IHT's dense phases). Training steps run the full-size tensors and pay
their FLOPs; :func:`~metavote.pruning.extract` makes the small model at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..models.units import IN, OUT, UnitGroup
from ..pruning import SubNetwork, keep_top, unit_norms, zero_units


def magnitude_subnetwork(model: nn.Module, groups: Sequence[UnitGroup], widths: Mapping[str, int]) -> SubNetwork:
    """Per group, the ``widths[name]`` units whose producing weights have the largest L2 norm."""
    return SubNetwork(keep_top({g.name: unit_norms(model, g) for g in groups}, widths), {g.name: g.size for g in groups})


class UnitMask:
    """Per group, the units that are on, applied to a full-size model's weights and gradients."""

    def __init__(self, model: nn.Module, groups: Sequence[UnitGroup], subnet: SubNetwork) -> None:
        self.model, self.groups = model, list(groups)
        self.subnet = subnet

    @property
    def kept(self) -> dict[str, np.ndarray]:
        return self.subnet.kept

    def off(self, group: UnitGroup) -> np.ndarray:
        return np.setdiff1d(np.arange(group.size), self.kept[group.name])

    def out_params(self, group: UnitGroup, units: np.ndarray):
        """(parameter, row indices) of the given units in every ``out`` slot of the group."""
        for slot in group.slots:
            if slot.role != IN:
                for _, p, dim in slot.tensors(self.model):
                    if isinstance(p, nn.Parameter):
                        yield p, dim, slot.indices(units, group.size).to(p.device)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every parameter of the switched-off units (after each optimizer step: momentum and
        weight decay would otherwise revive them)."""
        zero_units(self.model, self.groups, self.kept)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of the switched-off units' parameters (before each optimizer step)."""
        for g in self.groups:
            for p, dim, idx in self.out_params(g, self.off(g)):
                if p.grad is not None:
                    p.grad.index_fill_(dim, idx, 0.0)

    @torch.no_grad()
    def regrow(self, group: UnitGroup, units: np.ndarray, optimizer: torch.optim.Optimizer | None, generator: torch.Generator,
               scale: float = 0.01) -> None:
        """Switch ``units`` of ``group`` back on at zero effect: small random producing weights (a
        hundredth of the kept rows' spread), norm scale 1 and shift 0, biases 0, and zero weights in
        the layers that read them (so the network's function is unchanged and their gradients are
        not), with their optimizer state (momentum) reset."""
        kept = self.kept[group.name]
        for slot in group.slots:
            idx = slot.indices(units, group.size)
            for _, p, dim in slot.tensors(self.model):
                if not isinstance(p, nn.Parameter):
                    continue
                owner = self.model.get_submodule(slot.module) if slot.role != "param" else None
                view = p.movedim(dim, 0)  # the unit dimension first (a view: writes go to p)
                if slot.role == IN:
                    p[:, idx.to(p.device)] = 0.0
                elif p.dim() >= 2 and slot.role == OUT:
                    spread = view[slot.indices(kept, group.size).to(p.device)].float().std() if len(kept) else p.float().std()
                    noise = torch.randn(view[idx].shape, generator=generator) * scale * float(spread)
                    view[idx.to(p.device)] = noise.to(p.device, p.dtype)
                elif p is getattr(owner, "weight", None) and isinstance(owner, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                    view[idx.to(p.device)] = 1.0
                else:
                    view[idx.to(p.device)] = 0.0
                state = optimizer.state.get(p, {}) if optimizer is not None else {}
                for buffer in state.values():
                    if isinstance(buffer, torch.Tensor) and buffer.shape == p.shape:
                        buffer.movedim(1 if slot.role == IN else dim, 0)[idx.to(p.device)] = 0.0
        self.subnet = SubNetwork(dict(self.kept) | {group.name: np.union1d(kept, units)}, dict(self.subnet.sizes))

    def switch_off(self, group: UnitGroup, units: np.ndarray) -> None:
        """Switch ``units`` of ``group`` off (their parameters are zeroed at the next :meth:`apply`)."""
        self.subnet = SubNetwork(dict(self.kept) | {group.name: np.setdiff1d(self.kept[group.name], units)}, dict(self.subnet.sizes))
