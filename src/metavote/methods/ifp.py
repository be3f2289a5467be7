"""Iterative filter pruning (IFP, the paper's Algorithm 2): conventional pruning, and how the zoo is made."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..data import Augment, BatchLoader
from ..pruning import SubNetwork, get_importance, keep_top, pruning_schedule, shrink
from ..training import cosine_lr, make_optimizer, train_steps
from .base import Method, check_fraction, register, task_head


def scoring_batches(data, batch_size: int, seed: int, device) -> tuple[Iterator, int]:
    """Un-augmented training batches to score importance on (seeded apart from the training batches) and their size."""
    loader = BatchLoader(data.train_images, data.train_labels, min(batch_size, len(data.train_labels)), Augment.none(), seed + 1, device)
    return iter(loader), loader.batch_size


def cut_by_importance(model, subnet: SubNetwork, groups, widths, criterion, batches, costs, n_batches: int, batch_size: int):
    """One pruning step: score every unit with ``criterion`` on ``n_batches`` of ``batches`` (their
    passes count as training costs when it reads data), keep the top ``widths`` per group, and cut
    the model physically: ``(small model, its Omega in the backbone's numbering, its groups)``."""
    scores = criterion(model, groups, (next(batches) for _ in range(n_batches)))
    if criterion.needs_data:
        costs.add_steps(model, n_batches, batch_size, backward=criterion.needs_grad, training=False)
    keep = keep_top(scores, widths)
    small = shrink(model, keep, groups)
    return small, subnet.compose(keep), small.unit_groups()


@register
@dataclass(kw_only=True)
class IFP(Method):
    """Iterative filter pruning of the backbone for one task.

    SGD (momentum 0.9, cosine-annealed ``lr``) runs ``iterations`` steps. Every ``h`` steps each
    group loses ``step_fraction`` of its remaining units, the least ``importance``-ant first
    (``activation``, ``taylor`` or ``random``, scored on ``importance_batches`` batches), and the
    model is physically shrunk, so later steps cost less; ``h`` spreads the pruning steps over the
    first ``prune_until`` of the run, and the rest fine-tunes the final sub-network. Defaults are the
    paper's (r = 0.9, J = 1000, lr 0.005, batch 128); p = 0.2 and h are ours: at r = 0.9 that is 11
    pruning steps, one every 54 iterations, pruning done by iteration 600.
    """

    key = "ifp"
    name = "IFP"

    iterations: int = 1000
    lr: float = 0.005
    importance: str = "activation"
    step_fraction: float = 0.2
    prune_until: float = 0.6
    importance_batches: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("prune_until", self.prune_until)
        get_importance(self.importance)  # a clear error for an unknown criterion, before any work

    def requirements(self) -> set[str]:
        return super().requirements() | ({"probes"} if get_importance(self.importance).needs_data else set())

    def prune(self, backbone, data, zoo, head_rows, costs, seed, prepared, progress):
        criterion = get_importance(self.importance)
        j = self.iterations
        model = copy.deepcopy(backbone)
        task_head(model, data, head_rows)
        groups = model.unit_groups()
        subnet = SubNetwork.full(groups)
        steps = pruning_schedule({g.name: g.size for g in groups}, self.widths(model, groups), self.step_fraction)
        every = max(1, math.floor(self.prune_until * j / max(len(steps), 1)))
        prune_at = {every * (k + 1): widths for k, widths in enumerate(steps)}
        device = next(model.parameters()).device
        batches = iter(data.loader(self.batch_size, seed=seed, device=device))
        score_batches, score_batch_size = scoring_batches(data, self.batch_size, seed, device)

        def prune_step(model, subnet, groups, widths):
            return cut_by_importance(model, subnet, groups, widths, criterion, score_batches, costs, self.importance_batches,
                                     score_batch_size)

        optimizer = make_optimizer(model, self.optimizer, self.lr)
        done = 0
        with tqdm(total=j, desc=f"IFP {data.task.id}", unit="it", disable=not progress, leave=False) as bar:
            for t in sorted(t for t in prune_at if t < j) + [j]:
                train_steps(model, batches, optimizer, t - done, lambda s: cosine_lr(s, j, self.lr), start=done, progress=bar)
                costs.add_steps(model, t - done, self.batch_size)
                done = t
                if t in prune_at:
                    model, subnet, groups = prune_step(model, subnet, groups, prune_at[t])
                    optimizer = make_optimizer(model, self.optimizer, self.lr)
        for widths in (prune_at[t] for t in sorted(prune_at) if t >= j):  # budget too short: finish pruning
            model, subnet, groups = prune_step(model, subnet, groups, widths)
        return model, subnet, {"prune_every": every, "pruning_steps": len(steps)}
