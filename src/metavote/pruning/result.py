"""What every pruning method returns (the zoo stores it, so it lives below the methods)."""

from __future__ import annotations

from dataclasses import dataclass

from ..models.base import Backbone
from ..training import Costs
from .subnetwork import SubNetwork


@dataclass
class PruneResult:
    """The compact model with its task head, Omega, and costs."""

    model: Backbone
    subnet: SubNetwork
    costs: Costs
    accuracy: float
    method: str
    params: dict
