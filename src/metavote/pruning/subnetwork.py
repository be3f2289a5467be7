"""Sub-networks (Omega per unit group), the tensor indices they select, and the dense view.

A :class:`SubNetwork` is, per group, the sorted kept *unit* indices in the backbone's numbering:
channels, heads or MLP nodes alike. :class:`TensorIndex` turns units into tensor indices through
the groups' slots (a head is head_dim rows in each of q, k, v), so :func:`dense_view` (a compact
model's weights written back into the backbone's at Omega, what MVP averages) is one code path
for every family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..models.units import UnitGroup


@dataclass
class SubNetwork:
    """Per group, the sorted kept unit indices (Omega) in the backbone's numbering."""

    kept: dict[str, np.ndarray]
    sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, idx in self.kept.items():
            idx = np.unique(np.asarray(idx, dtype=np.int64))
            if name in self.sizes and idx.size and (idx[0] < 0 or idx[-1] >= self.sizes[name]):
                raise ConfigError(f"group {name}: kept indices outside 0..{self.sizes[name] - 1}")
            self.kept[name] = idx

    @classmethod
    def full(cls, groups: Sequence[UnitGroup]) -> SubNetwork:
        return cls({g.name: np.arange(g.size) for g in groups}, {g.name: g.size for g in groups})

    @property
    def names(self) -> list[str]:
        return list(self.kept)

    def widths(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.kept.items()}

    def kept_fraction(self) -> float:
        """Kept units over all units, across groups."""
        return sum(len(v) for v in self.kept.values()) / sum(self.sizes[k] for k in self.kept)

    def compose(self, local: Mapping[str, np.ndarray]) -> SubNetwork:
        """A sub-network of this one: ``local`` indexes this sub-network's kept units."""
        return SubNetwork({k: v[np.asarray(local[k], dtype=np.int64)] for k, v in self.kept.items()}, dict(self.sizes))

    def iou(self, other: SubNetwork) -> dict[str, float]:
        """Per-group intersection over union of the kept sets (1 for two empty sets)."""
        out = {}
        for k, v in self.kept.items():
            union = len(np.union1d(v, other.kept[k]))
            out[k] = len(np.intersect1d(v, other.kept[k])) / union if union else 1.0
        return out

    def check(self, groups: Sequence[UnitGroup]) -> None:
        """A clear error unless this sub-network fits ``groups`` (names, sizes, ranges, emptiness)."""
        names = [g.name for g in groups]
        if set(names) != set(self.kept):
            raise ConfigError(f"the sub-network's groups ({', '.join(self.kept)}) are not the model's ({', '.join(names)})")
        for g in groups:
            if self.sizes.get(g.name, g.size) != g.size:
                raise ConfigError(f"group {g.name}: the sub-network numbers {self.sizes[g.name]} units, the model has {g.size}")
            g.check(self.kept[g.name])

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"omega.{k}": torch.as_tensor(v) for k, v in self.kept.items()}
        out |= {f"size.{k}": torch.tensor([n]) for k, n in self.sizes.items()}
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> SubNetwork:
        kept = {k[len("omega."):]: v.numpy() for k, v in tensors.items() if k.startswith("omega.")}
        sizes = {k[len("size."):]: int(v[0]) for k, v in tensors.items() if k.startswith("size.")}
        return cls(kept, sizes)


def target_widths(groups: Sequence[UnitGroup], ratio: float) -> dict[str, int]:
    """Units kept per group at pruning ratio ``ratio``: round((1 - r) * n); zero only where a group may be empty."""
    if not 0 < ratio < 1:
        raise ConfigError(f"pruning ratio must be in (0, 1), got {ratio}")
    widths = {}
    for g in groups:
        keep = round((1 - ratio) * g.size)
        if keep < 1 and not g.can_be_empty:
            raise ConfigError(f"ratio {ratio} would prune group {g.name} ({g.size} units) to zero; use a smaller ratio")
        widths[g.name] = keep
    check_kinds(groups, widths, f"ratio {ratio}")
    return widths


def units_per_kind(groups: Sequence[UnitGroup], widths: Mapping[str, int] | None = None) -> dict[str, int]:
    """How many units of each kind (heads, nodes, channels) the groups hold in all, or (``widths``)
    how many of them those widths keep."""
    width = (lambda g: widths[g.name]) if widths is not None else (lambda g: g.size)  # noqa: E731
    return {kind: sum(width(g) for g in groups if g.kind == kind) for kind in dict.fromkeys(g.kind for g in groups)}


def kind_targets(groups: Sequence[UnitGroup], ratio: float) -> dict[str, int]:
    """Units kept per kind in the whole model at ratio ``ratio``: as many as :func:`target_widths`
    keeps of that kind group by group (round((1 - r) n) per group), so a global pruner (AHNP)
    lands on the size of every other method; which blocks keep them is left open. A group of the
    kind that cannot run empty counts at least one (a traced model's attention: 12 blocks of 3
    heads at r = 0.9 keep 12 heads), so a global pruner can always meet its target without
    emptying such a group; where every group may be empty and each rounds to none, round((1 - r) n)
    of the kind's n in all."""
    if not 0 < ratio < 1:
        raise ConfigError(f"pruning ratio must be in (0, 1), got {ratio}")
    targets = {}
    for kind, n in units_per_kind(groups).items():
        members = [g for g in groups if g.kind == kind]
        targets[kind] = sum(max(round((1 - ratio) * g.size), 0 if g.can_be_empty else 1) for g in members) or round((1 - ratio) * n)
    empty = [kind for kind, n in targets.items() if n == 0]
    if empty:
        raise ConfigError(f"ratio {ratio} would leave the model without any {empty[0]}; use a smaller pruning ratio")
    return targets


def check_kinds(groups: Sequence[UnitGroup], widths: Mapping[str, int], what: str) -> None:
    """A clear error when ``widths`` would leave the model without any unit of some kind (every head, say)."""
    for kind in dict.fromkeys(g.kind for g in groups):
        if sum(widths[g.name] for g in groups if g.kind == kind) == 0:
            raise ConfigError(f"{what} would leave the model without any {kind}; use a smaller pruning ratio")


class TensorIndex:
    """For every state-dict tensor a model's groups touch: which dims their units index, through which slot.

    Built once per backbone; ``indices(subnet)`` gives, per tensor key, ``{dim: tensor indices}``.
    An ``out`` slot indexes dim 0 of every tensor of its module (weight, bias, norm statistics),
    an ``in`` slot dim 1 of its weight, a ``param`` slot its parameter's unit dimension.
    """

    def __init__(self, model: nn.Module, groups: Sequence[UnitGroup]) -> None:
        self.groups = {g.name: g for g in groups}
        self.entries: dict[str, list[tuple[int, str, object]]] = {}
        for g in groups:
            for slot in g.slots:
                for key, _, dim in slot.tensors(model):
                    self.entries.setdefault(key, []).append((dim, g.name, slot))

    def indices(self, subnet: SubNetwork) -> dict[str, dict[int, torch.Tensor]]:
        return {key: {dim: slot.indices(subnet.kept[name], self.groups[name].size) for dim, name, slot in entries}
                for key, entries in self.entries.items()}


def scatter(full: torch.Tensor, compact: torch.Tensor, index: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """A copy of ``full`` with ``compact`` written at ``index`` (per dim: the positions it fills)."""
    out = full.clone()
    compact = compact.to(out.device, out.dtype)
    if len(index) == 2:
        (d0, i0), (d1, i1) = sorted(index.items())
        if (d0, d1) != (0, 1):
            raise ConfigError(f"two unit dimensions {d0} and {d1} of one tensor are not supported")
        out[i0[:, None], i1[None, :]] = compact
    elif index:
        (dim, idx), = index.items()
        out[(slice(None),) * dim + (idx,)] = compact
    else:
        out.copy_(compact)
    return out


def dense_view(backbone_state: Mapping[str, torch.Tensor], subnet: SubNetwork, compact_state: Mapping[str, torch.Tensor],
               index: TensorIndex, skip: set[str] | frozenset = frozenset()) -> dict[str, torch.Tensor]:
    """The backbone's state dict with the sub-network's weights written in at Omega.

    Keys in ``skip`` (the task head: task-specific rows) and keys the compact model lacks are left out.
    """
    positions = index.indices(subnet)
    return {key: scatter(full, compact_state[key], positions.get(key, {}))
            for key, full in backbone_state.items() if key not in skip and key in compact_state}
