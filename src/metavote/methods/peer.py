"""The pipelines users already run: Torch-Pruning's pruning of the pre-trained model, then fine-tuning the small model.

Thin adapters: the ranking is Torch-Pruning's own (its dependency graph and its group criteria,
:class:`~metavote.pruning.importance.TorchPruningImportance`); the widths, the cut and the recipe
after it are every other method's, so a row of the table differs from MVP's only in where its
sub-network and weights come from.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..errors import ConfigError
from ..pruning import SubNetwork, get_importance
from ..training import cosine_lr, make_optimizer, recalibrate_bn, train_steps
from .base import Method, check_fraction, register, task_head
from .ifp import cut_by_importance, scoring_batches


def linear_widths(sizes: dict[str, int], final: dict[str, int], steps: int) -> list[dict[str, int]]:
    """Torch-Pruning's linear schedule (``iterative_pruning_ratio_scheduler``): after step k of
    ``steps``, each group keeps size - (size - final) k / steps units (rounded), the last step ``final``."""
    return [{g: round(n - (n - final[g]) * k / steps) for g, n in sizes.items()} for k in range(1, steps + 1)]


@register
@dataclass(kw_only=True)
class TorchPruning(Method):
    """Torch-Pruning's pipeline: the pre-trained model (with the task's head) ranked by Torch-Pruning's
    ``criterion`` and cut to the ratio's widths in one shot (``iterative_steps`` 1: ``pruner.step()``
    once), then ``iterations`` steps at the final width; or in ``iterative_steps`` steps of its linear
    schedule over the first ``prune_until`` of the budget with training between them, as its
    ``iterative_steps`` pruner runs. BatchNorm statistics are re-estimated on ``bn_batches`` batches
    after every cut, as MVP's are after its one. ``criterion``: ``magnitude`` (group L2 of the
    pre-trained weights: no data) or ``taylor`` (on ``importance_batches`` task batches, counted in the
    training FLOPs). Learning rate, schedule and batch are the profile's, as for every method."""

    key = "tp-magnitude"
    name = "Torch-Pruning magnitude"

    criterion: str = "magnitude"
    iterative_steps: int = 1
    prune_until: float = 0.5
    importance_batches: int = 2
    bn_batches: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("prune_until", self.prune_until)
        if self.iterative_steps < 1:
            raise ConfigError(f"iterative_steps must be >= 1, got {self.iterative_steps}")
        get_importance(f"tp-{self.criterion}")  # a clear error for an unknown criterion, before any work

    def prune(self, backbone, data, zoo, head_rows, costs, seed, prepared, progress):
        criterion = get_importance(f"tp-{self.criterion}")
        j = self.iterations
        model = copy.deepcopy(backbone)
        task_head(model, data, head_rows)
        groups = model.unit_groups()
        subnet = SubNetwork.full(groups)
        steps = linear_widths({g.name: g.size for g in groups}, self.widths(model, groups), self.iterative_steps)
        every = math.floor(self.prune_until * j / self.iterative_steps) if self.iterative_steps > 1 else 0
        device = next(model.parameters()).device
        score_batches, score_batch_size = scoring_batches(data, self.batch_size, seed, device)
        batches = iter(data.loader(self.batch_size, seed=seed, device=device))
        optimizer, done = None, 0
        with tqdm(total=j, desc=f"{self.name} {data.task.id}", unit="it", disable=not progress, leave=False) as bar:
            for k, widths in enumerate(steps):
                if k and every:  # train between the cuts of the iterative pipeline
                    train_steps(model, batches, optimizer, every, lambda s: cosine_lr(s, j, self.lr), start=done, progress=bar)
                    costs.add_steps(model, every, self.batch_size)
                    done += every
                model, subnet, groups = cut_by_importance(model, subnet, groups, widths, criterion, score_batches, costs,
                                                          self.importance_batches, score_batch_size)
                recalibrate_bn(model, data, self.bn_batches, self.batch_size, seed, costs)
                optimizer = make_optimizer(model, self.optimizer, self.lr)
            rest = max(0, j - done)
            train_steps(model, batches, optimizer, rest, lambda s: cosine_lr(s, j, self.lr), start=done, progress=bar)
            costs.add_steps(model, rest, self.batch_size)
        return model, subnet, {"prune_every": every}


@register
@dataclass(kw_only=True)
class TorchPruningTaylor(TorchPruning):
    """:class:`TorchPruning` with Torch-Pruning's Taylor criterion (task-specific: weights times the gradients of the task loss)."""

    key = "tp-taylor"
    name = "Torch-Pruning Taylor"

    criterion: str = "taylor"


@register
@dataclass(kw_only=True)
class TorchPruningIterative(TorchPruning):
    """:class:`TorchPruning` run as Torch-Pruning's iterative pruner: magnitude, 5 steps of its linear
    schedule over the first half of the budget, training between them."""

    key = "tp-iterative"
    name = "Torch-Pruning iterative"

    iterative_steps: int = 5
