"""Baselines that MVP is measured against, beside IFP (:func:`metavote.pruning.ifp`).

``random_pruning`` is the paper's lower bound: a sub-network of the same widths as MVP's, drawn
uniformly at random from the pre-trained model, fine-tuned for the same iterations.
"""

from __future__ import annotations

import numpy as np

from .data import TaskData
from .models import ResNet
from .pruning import PruneResult, SubNetwork, UnitGroup, extract, target_widths, task_head, unit_groups
from .training import Costs, Timer, finetune, recalibrate_bn


def random_subnetwork(groups: list[UnitGroup], ratio: float, seed: int = 0) -> SubNetwork:
    """Per group, round((1 - r) n) units drawn uniformly without replacement."""
    rng = np.random.default_rng(seed)
    widths = target_widths(groups, ratio)
    return SubNetwork({g.name: np.sort(rng.choice(g.size, widths[g.name], replace=False)) for g in groups}, {g.name: g.size for g in groups})


def random_pruning(
    backbone: ResNet,
    data: TaskData,
    ratio: float = 0.9,
    iterations: int = 100,
    lr: float = 0.01,
    batch_size: int = 128,
    head_rows: list[int] | None = None,
    bn_batches: int = 5,
    seed: int | None = None,
    progress: bool = False,
) -> PruneResult:
    """A random sub-network of ``backbone`` at ratio ``ratio`` with the pre-trained weights and the
    task's head (pre-trained rows, else imprinting), its BatchNorm statistics re-estimated on
    ``bn_batches`` batches as MVP's are, fine-tuned ``iterations`` steps."""
    seed = data.task.seed if seed is None else seed
    costs = Costs()
    with Timer() as timer:
        subnet = random_subnetwork(unit_groups(backbone), ratio, seed)
        model = extract(backbone, subnet)  # a compact copy; the head's rows or imprinting use its own features
        task_head(model, data, head_rows)
        recalibrate_bn(model, data, bn_batches, batch_size, seed, costs)
        accuracy = finetune(model, data, iterations, lr, batch_size, seed, costs, f"random {data.task.id}", progress)
    costs.seconds = timer.seconds
    params = {"ratio": ratio, "iterations": iterations, "lr": lr, "batch_size": batch_size, "bn_batches": bn_batches, "seed": seed}
    return PruneResult(model, subnet, costs, accuracy, "random", params)
