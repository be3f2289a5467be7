"""Pruning methods behind one interface, so the bench treats them all alike.

A :class:`Method` holds its hyper-parameters and has one call, ``run(backbone, data, zoo,
head_rows) -> PruneResult``; ``label`` names it in tables. Methods that need no zoo ignore it.

    >>> methods = [IFP(ratio=0.8, iterations=200), MVP(ratio=0.8, iterations=20), RandomPruning(ratio=0.8, iterations=20)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .baselines import random_pruning
from .data import ImageDataset, TaskData
from .errors import ConfigError
from .models import ResNet
from .mvp import DEFAULT_TEMPERATURE, mvp
from .pruning import PruneResult, ifp
from .similarity import make_similarity
from .zoo import Zoo, ZooRecord


@dataclass
class Method:
    """Base class: the shared budget of every method (ratio r, iterations J, lr, batch size)."""

    ratio: float = 0.9
    iterations: int = 100
    lr: float = 0.01
    batch_size: int = 128
    name = "method"

    @property
    def label(self) -> str:
        return f"{self.name} (J={self.iterations})"

    def run(self, backbone: ResNet, data: TaskData, zoo: Zoo | None = None, head_rows: list[int] | None = None,
            progress: bool = False) -> PruneResult:
        raise NotImplementedError


@dataclass
class IFP(Method):
    """Iterative filter pruning (:func:`~metavote.pruning.ifp`): conventional pruning, the upper bound."""

    importance: str = "activation"
    name = "IFP"

    def run(self, backbone, data, zoo=None, head_rows=None, progress=False):
        return ifp(backbone, data, self.ratio, self.iterations, self.lr, self.batch_size, self.importance, head_rows=head_rows, progress=progress)


@dataclass
class RandomPruning(Method):
    """A uniformly random sub-network of the same widths, fine-tuned J iterations: the lower bound."""

    name = "random"

    def run(self, backbone, data, zoo=None, head_rows=None, progress=False):
        return random_pruning(backbone, data, self.ratio, self.iterations, self.lr, self.batch_size, head_rows, progress=progress)


@dataclass
class MVP(Method):
    """Meta-Vote Pruning (:func:`~metavote.mvp.mvp`) from the ``neighbours`` nearest zoo tasks by
    ``similarity`` (``leep``, ``wordnet`` or ``embedding``), searched among the zoo's records of
    ``zoo_method`` (default ``ifp``: MVP's own results are not voted on). ``preselect`` ranks only
    the embedding's top 20 by the similarity."""

    neighbours: int = 3
    similarity: str = "leep"
    temperature: float = DEFAULT_TEMPERATURE
    preselect: bool = False
    zoo_method: str | None = "ifp"
    dataset: ImageDataset | None = field(default=None, repr=False, compare=False)
    name = "MVP"

    def __post_init__(self) -> None:
        self._measures: dict = {}  # built once: the embedding caches its class means

    def _measure(self, name: str, backbone: ResNet):
        if name not in self._measures:
            if name == "embedding" and self.dataset is None:
                raise ConfigError("the embedding similarity needs the zoo's dataset (MVP(dataset=...))")
            self._measures[name] = make_similarity(name, backbone=backbone, dataset=self.dataset)
        return self._measures[name]

    def run(self, backbone, data, zoo=None, head_rows=None, progress=False, records: Sequence[ZooRecord] | None = None):
        if zoo is None:
            raise ConfigError("MVP needs a zoo of pruned models (--zoo)")
        pool = zoo.records(method=self.zoo_method)
        if not pool:
            raise ConfigError(f"zoo {zoo.root} has no records{f' of method {self.zoo_method}' if self.zoo_method else ''}; build it with `metavote zoo build`")
        if records is not None:  # neighbours given: no search
            measure = pre = None
        else:
            measure = self._measure(self.similarity, backbone)
            pre = self._measure("embedding", backbone) if self.preselect else None
        return mvp(backbone, data, zoo, records if records is not None else self.neighbours, measure, pool=pool, preselect=pre,
                   ratio=self.ratio, temperature=self.temperature, iterations=self.iterations, lr=self.lr,
                   batch_size=self.batch_size, head_rows=head_rows, progress=progress)
