"""Physical surgery: extract a sub-network (cut layers to the kept units) or mask it (silence the dropped ones).

How each layer type is cut, :func:`shrink` and :func:`zero_units` live in
:mod:`metavote.models.cutting` (the tracer's cut-out check uses them too); they are re-exported here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from ..models.base import Backbone
from ..models.cutting import CUTTERS, Cutter, Index, _param, cut, cut_, find_cutter, register_cutter, shrink, zero_units
from ..models.units import UnitGroup
from .subnetwork import SubNetwork

__all__ = ["CUTTERS", "Cutter", "Index", "cut", "cut_", "extract", "find_cutter", "mask", "register_cutter", "shrink", "zero_units", "_param"]


def extract(backbone: Backbone, subnet: SubNetwork, groups: Sequence[UnitGroup] | None = None) -> Backbone:
    """The physically small module of ``subnet`` with the backbone's weights at Omega
    (``groups``: the backbone's unit groups, when the caller has them already)."""
    groups = groups or backbone.unit_groups()
    subnet.check(groups)
    return shrink(backbone, subnet.kept, groups)


def mask(backbone: Backbone, subnet: SubNetwork) -> Backbone:
    """A full-size copy of ``backbone`` whose dropped units output exactly zero (:func:`zero_units`).
    In eval mode the outputs equal those of :func:`extract`."""
    masked = copy.deepcopy(backbone)
    groups = backbone.unit_groups()
    subnet.check(groups)
    zero_units(masked, groups, subnet.kept)
    return masked
