"""Pruning methods, one file each, behind one base class and one registry.

``base.py``: :class:`Method` (keyword-only settings, the shared skeleton), :class:`PruneResult`,
:func:`create_method` and the registry ``METHODS``. ``ifp.py``: iterative filter pruning (how the
zoo is made; the upper bound). ``mvp.py``: Meta-Vote Pruning. ``random.py``: random sub-networks
(the lower bound). ``ahnp.py``: automatic head and node pruning (how a ViT zoo is made). A new method is a new file with a ``@register``-ed subclass, imported here.
"""

from .ahnp import AHNP, ScoreGates
from .base import METHODS, Method, PruneResult, create_method, get_method_class, method_settings, register, task_head
from .ifp import IFP
from .mvp import DEFAULT_TEMPERATURE, MVP, average_neighbours, sample_by_votes, vote_counts
from .random import PaperRandomPruning, RandomPruning, random_subnetwork

__all__ = [
    "AHNP", "PaperRandomPruning", "ScoreGates", "DEFAULT_TEMPERATURE", "IFP", "METHODS", "MVP", "Method", "PruneResult", "RandomPruning", "average_neighbours", "create_method",
    "get_method_class", "method_settings", "random_subnetwork", "register", "sample_by_votes", "task_head", "vote_counts",
]
