"""Random sub-networks: the lower bound MVP is measured against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..models.units import UnitGroup
from ..pruning import SubNetwork, extract, target_widths
from .base import Method, register, task_head


def random_subnetwork(groups: Sequence[UnitGroup], ratio: float, seed: int = 0, widths: Mapping[str, int] | None = None) -> SubNetwork:
    """Per group, round((1 - r) n) units (or ``widths[g]``) drawn uniformly without replacement."""
    rng = np.random.default_rng(seed)
    widths = widths if widths is not None else target_widths(groups, ratio)
    return SubNetwork({g.name: np.sort(rng.choice(g.size, widths[g.name], replace=False)) for g in groups}, {g.name: g.size for g in groups})


@register
@dataclass(kw_only=True)
class RandomPruning(Method):
    """A uniformly random sub-network at ratio ``ratio`` with the pre-trained weights and the task's
    head (``head="task"``: pre-trained rows, else imprinting), its BatchNorm statistics re-estimated
    on ``bn_batches`` batches as MVP's are, fine-tuned ``iterations`` steps: the lower bound, at
    MVP's widths. ``head="new"``: a randomly initialised head instead."""

    key = "random"
    name = "random"

    bn_batches: int = 5
    head: str = "task"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head not in ("task", "new"):
            raise ConfigError(f"head must be 'task' or 'new', got {self.head!r}")

    def prune(self, backbone, data, zoo, head_rows, costs, seed, prepared, progress):
        groups = backbone.unit_groups()
        subnet = random_subnetwork(groups, self.ratio, seed, self.widths(backbone, groups))
        model = extract(backbone, subnet, groups)  # a compact copy; the head's rows or imprinting use its own features
        if self.head == "task":
            task_head(model, data, head_rows)
        else:
            model.reset_classifier(data.task.n_way)
        self.fine_tune(model, data, costs, seed, progress, self.bn_batches)
        return model, subnet, {}


@register
@dataclass(kw_only=True)
class PaperRandomPruning(RandomPruning):
    """The paper's random baseline: a random sub-network with the pre-trained weights, a new randomly
    initialised head and no re-estimation of normalisation statistics (before or after), fine-tuned ``iterations`` steps."""

    key = "random-paper"
    name = "random (paper)"

    bn_batches: int = 0
    refresh_bn: int = 0
    head: str = "new"
