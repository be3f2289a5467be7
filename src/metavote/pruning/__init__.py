"""Structured pruning for any model family that declares its unit groups.

``subnetwork.py``: :class:`SubNetwork` (Omega per group), target widths, tensor indices of units and
the dense view. ``surgery.py``: cutting layers by type, :func:`extract` / :func:`shrink` /
:func:`mask`. ``importance.py``: criteria as small classes. ``schedule.py``: gradual schedules.
"""

from ..models.units import IN, OUT, Slot, UnitGroup
from .importance import IMPORTANCES, ActivationImportance, Importance, RandomImportance, TaylorImportance, get_importance, keep_top
from .schedule import pruning_schedule
from .subnetwork import SubNetwork, TensorIndex, dense_view, scatter, target_widths
from .surgery import CUTTERS, cut, extract, mask, shrink

__all__ = [
    "CUTTERS", "IMPORTANCES", "IN", "OUT", "ActivationImportance", "Importance", "RandomImportance", "Slot", "SubNetwork",
    "TaylorImportance", "TensorIndex", "UnitGroup", "cut", "dense_view", "extract", "get_importance", "keep_top", "mask",
    "pruning_schedule", "scatter", "shrink", "target_widths",
]
