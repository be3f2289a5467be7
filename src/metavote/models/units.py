"""Prunable units, as a model family declares them.

A *unit* is what pruning keeps or drops as one: a CNN channel, an attention head, an MLP node.
A :class:`UnitGroup` is a set of units kept or dropped together, with every place (a
:class:`Slot`) where they appear: one slot per layer, saying whether the units are that layer's
outputs or its inputs, and how one unit expands to tensor indices there. A channel is one index;
an attention head is ``head_dim`` rows in each of the q, k and v blocks of ``qkv``
(``width=head_dim, copies=3``) and ``head_dim`` input columns of ``proj`` (``width=head_dim``).
A bare parameter (a ConvNeXt layer scale, a Swin relative-position table) is a slot of its own
(``role="param"``, the unit dimension ``dim``). Voting, averaging, IoU, extraction and the dense
view work on units and use the slots only to find the indices (:meth:`Slot.tensors`), so they are
the same code for channels, heads and MLP nodes (Torch-Pruning's ``index_mapping`` plays this part
there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

OUT, IN, PARAM = "out", "in", "param"


@dataclass(frozen=True)
class Slot:
    """Where a group's units appear in one layer.

    ``role``: ``"out"`` when the units are the layer's outputs (weight rows, bias, norm parameters
    and statistics: dim 0 of every tensor), ``"in"`` when they are its inputs (dim 1 of the
    weight), or ``"param"`` when ``module`` names a bare parameter whose dimension ``dim`` holds
    the units. Unit ``u`` of a group of ``n`` units covers indices ``c·n·width + u·width + [0, width)``
    for each ``c < copies``.
    """

    module: str
    role: str = OUT
    width: int = 1
    copies: int = 1
    dim: int = 0

    def __post_init__(self) -> None:
        if self.role not in (OUT, IN, PARAM):
            raise ConfigError(f"slot role must be {OUT!r}, {IN!r} or {PARAM!r}, got {self.role!r}")
        if self.width < 1 or self.copies < 1:
            raise ConfigError(f"slot {self.module}: width and copies must be >= 1")

    def tensors(self, model: nn.Module) -> list[tuple[str, torch.Tensor, int]]:
        """``(state-dict key, tensor, unit dimension)`` of every tensor this slot indexes in ``model``:
        all of an ``out`` layer's parameters and statistics, an ``in`` layer's weight, a bare parameter."""
        if self.role == PARAM:
            return [(self.module, model.get_parameter(self.module), self.dim)]
        module = model.get_submodule(self.module)
        if self.role == IN:
            return [(f"{self.module}.weight", module.weight, 1)]
        persistent = {k: b for k, b in module._buffers.items() if k not in module._non_persistent_buffers_set}
        return [(f"{self.module}.{k}", t, 0) for k, t in {**module._parameters, **persistent}.items()  # the state dict's own tensors, in
                if t is not None and k != "num_batches_tracked"]                                      # its order, without building it

    def indices(self, units: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
        """Tensor indices of ``units`` (of a group of ``size`` units), in the order a compact layer holds them."""
        units = torch.as_tensor(np.asarray(units), dtype=torch.long)
        if self.width == 1 and self.copies == 1:
            return units
        span = (units[:, None] * self.width + torch.arange(self.width)).flatten()
        return torch.cat([c * size * self.width + span for c in range(self.copies)])


@dataclass(frozen=True)
class UnitGroup:
    """Units kept or dropped together: ``size`` units appearing in every ``slot``.

    ``kind``: what a unit is (``channel``, ``head``, ``node``). ``probes``: modules whose output
    carries one channel per unit (the BatchNorms of a CNN group), where activation and Taylor
    importance measure. ``can_be_empty``: whether pruning may remove every unit of the group (a ViT
    block without heads keeps its residual path; a CNN stream cannot); a model never loses every
    unit of a kind.
    """

    name: str
    size: int
    slots: tuple[Slot, ...]
    probes: tuple[str, ...] = ()
    can_be_empty: bool = False
    kind: str = "channel"

    @property
    def producers(self) -> tuple[str, ...]:
        """Modules whose outputs are the units (bare parameters left out)."""
        return tuple(s.module for s in self.slots if s.role == OUT)

    @property
    def consumers(self) -> tuple[str, ...]:
        """Modules that read the units as inputs."""
        return tuple(s.module for s in self.slots if s.role == IN)

    def check(self, kept: np.ndarray) -> None:
        """A clear error when a kept set is out of range or empty where it may not be."""
        kept = np.asarray(kept)
        if kept.size == 0 and not self.can_be_empty:
            raise ConfigError(f"group {self.name} would keep no units; use a smaller pruning ratio")
        if kept.size and (kept.min() < 0 or kept.max() >= self.size):
            raise ConfigError(f"group {self.name}: kept indices outside 0..{self.size - 1}")
