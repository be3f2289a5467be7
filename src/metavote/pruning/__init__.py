"""Structured pruning for any model family that declares its unit groups.

``subnetwork.py``: :class:`SubNetwork` (Omega per group), target widths, tensor indices of units and
the dense view. ``surgery.py``: :func:`extract` / :func:`shrink` /
:func:`mask` (cutting layers by type lives in :mod:`metavote.models.cutting`, re-exported here). ``result.py``: :class:`PruneResult`, what every method returns and the zoo stores. ``importance.py``: criteria as small classes. ``widths.py``: latency-aware widths (multiples of 8 at the ratio's FLOPs). ``schedule.py``: gradual schedules.
"""

from ..models.units import IN, OUT, Slot, UnitGroup
from .importance import (
    IMPORTANCES, ActivationImportance, Importance, MagnitudeImportance, RandomImportance, TaylorImportance, get_importance, keep_top,
    unit_norms,
)
from .result import PruneResult
from .schedule import pruning_schedule
from .subnetwork import SubNetwork, TensorIndex, dense_view, kind_targets, scatter, target_widths, units_per_kind
from .surgery import CUTTERS, cut, extract, mask, register_cutter, shrink, zero_units
from .widths import aligned_widths, host_aligned_widths, width_flops

__all__ = [
    "CUTTERS", "IMPORTANCES", "IN", "OUT", "ActivationImportance", "PruneResult", "Importance", "MagnitudeImportance", "RandomImportance", "Slot", "SubNetwork",
    "TaylorImportance", "TensorIndex", "UnitGroup", "aligned_widths", "cut", "host_aligned_widths", "dense_view", "extract", "get_importance", "keep_top", "kind_targets", "mask",
    "pruning_schedule", "register_cutter", "scatter", "shrink", "target_widths", "unit_norms", "units_per_kind", "width_flops", "zero_units",
]
