"""Pruning methods, one file each, behind one base class and one registry.

``base.py``: :class:`Method` (keyword-only settings, the shared skeleton), :class:`PruneResult`,
:func:`create_method` and the registry ``METHODS``. ``ifp.py``: iterative filter pruning (how the
zoo is made; the upper bound). ``mvp.py``: Meta-Vote Pruning, and its start without the vote (the nearest record). ``random.py``: random sub-networks
(the lower bound). ``ahnp.py``: automatic head and node pruning (how a ViT zoo is made). ``uvc.py`` and
``power.py``: the paper's ViT baselines (UVC; PoWER-BERT on patch tokens). ``mest.py``,
``dlth.py`` and ``reptile.py``: its CNN baselines (MEST; DLTH's random sparse network
transformation; IHT-based Reptile), over ``sparse.py`` (training with units switched off). ``peer.py``: the pipelines
users already run, Torch-Pruning's ranking of the pre-trained model (one shot or iterative), then fine-tuning. A new method is a new file with a ``@register``-ed subclass, imported here, and its key in
``metavote/names.py`` (the command line's choices, read without importing torch).
"""

from .ahnp import AHNP, ScoreGates
from .dlth import DLTH
from .base import METHODS, Method, PruneResult, conventional_method, create_method, get_method_class, method_settings, register, task_head
from .ifp import IFP
from .mest import MEST
from .mvp import DEFAULT_TEMPERATURE, MVP, NearestRecord, average_neighbours, sample_by_votes, vote_counts, weigh_budget
from .peer import TorchPruning, TorchPruningIterative, TorchPruningTaylor
from .power import PoWER, retention_config
from .random import PaperRandomPruning, RandomPruning, random_subnetwork
from .reptile import IHTReptile
from .sparse import UnitMask, magnitude_subnetwork
from .uvc import UVC, distillation_loss

__all__ = [
    "AHNP", "DLTH", "TorchPruning", "TorchPruningIterative", "TorchPruningTaylor", "IHTReptile", "MEST", "UnitMask", "magnitude_subnetwork", "PaperRandomPruning", "PoWER", "UVC", "distillation_loss", "retention_config", "ScoreGates", "DEFAULT_TEMPERATURE", "IFP", "METHODS", "MVP", "Method", "NearestRecord", "PruneResult", "RandomPruning", "average_neighbours", "conventional_method", "create_method",
    "get_method_class", "method_settings", "random_subnetwork", "register", "sample_by_votes", "task_head", "vote_counts", "weigh_budget",
]
