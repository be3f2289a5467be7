"""DLTH (Bai et al., ICLR 2022, "Dual Lottery Ticket Hypothesis"): Random Sparse Network Transformation, at unit level."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..pruning import extract
from ..training import finetune, make_optimizer, optimizer_step
from .base import Method, check_fraction, register, task_head
from .random import random_subnetwork
from .sparse import UnitMask, magnitude_subnetwork


@register
@dataclass(kw_only=True)
class DLTH(Method):
    """RST: pick the units to remove, move their information into the kept ones with a growing L2
    penalty, then remove them and fine-tune.

    A sub-network at ratio r is picked (``pick="random"``: the paper's random ticket, uniformly per
    group; ``"magnitude"``: the code's default, the smallest filters by norm). The dense model with
    the task's head trains with SGD at a constant lr, as the authors' regularisation phase does; after each backward pass lambda w is added to the gradients of
    every parameter of the units to be removed, lambda rising linearly over the first ``ramp`` of J
    to lambda_max = ``penalty`` / lr (so lr lambda_max = ``penalty``), then held for ``hold`` of J.
    Then the units are removed physically and the small model is fine-tuned for the rest of J
    (a new cosine schedule from lr, as the authors restart theirs). Training FLOPs: dense steps while the penalty works, small ones after.

    Adaptations, each forced by the budget or the like-for-like comparison:

    - The schedule: the authors raise lambda by 1e-4 every 5 steps up to 1 and hold it 40k steps
      (about 90k iterations before fine-tuning); here ramp / hold / fine-tune split J 40/20/40 and
      lr lambda_max = 0.075 (the notes: 0.05–0.1, so the penalty shrinks the doomed weights within
      the ramp; with momentum the per-step decay saturates near sqrt(0.9)).
    - Units: every group is pruned at ratio r (residual streams too), like every other method here;
      the authors' ResNet rules leave the last conv of each block, the shortcuts and the stem dense.
    - A pre-trained start (the method's premise is random initialisation) with the task's head.
    - Statistics: as for every method here, BatchNorm statistics are re-estimated after the last
      step (``refresh_bn``): the cut leaves running averages of the dense model that the few
      fine-tuning steps do not replace (20.7% against 43.9% on eight validation tasks without and with it).
    """

    key = "dlth"
    name = "DLTH"

    pick: str = "random"
    ramp: float = 0.4
    hold: float = 0.2
    penalty: float = 0.075

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("ramp", self.ramp)
        if self.pick not in ("random", "magnitude"):
            raise ConfigError(f"pick must be 'random' or 'magnitude', got {self.pick!r}")
        if not 0 <= self.hold < 1 or self.ramp + self.hold > 1 or self.penalty < 0:
            raise ConfigError(f"DLTH needs 0 <= hold, ramp + hold <= 1 and penalty >= 0, got {self.hold}, {self.ramp} and {self.penalty}")

    def prune(self, backbone, data, zoo, head_rows, costs, seed, prepared, progress):
        j = self.iterations
        model = copy.deepcopy(backbone)
        task_head(model, data, head_rows)
        groups = model.unit_groups()
        widths = self.widths(model, groups)
        subnet = (random_subnetwork(groups, self.ratio, seed, widths) if self.pick == "random"
                  else magnitude_subnetwork(model, groups, widths))
        ticket = UnitMask(model, groups, subnet)  # on: the units kept; off: the units to remove
        ramp = math.ceil(self.ramp * j)
        dense = min(j, ramp + math.floor(self.hold * j))
        top = self.penalty / self.lr
        opt = make_optimizer(model, self.optimizer, self.lr)
        device = next(model.parameters()).device
        batches = iter(data.loader(self.batch_size, seed=seed, device=device))
        params = list(ticket.out_params(g, ticket.off(g)) for g in groups)
        params = [item for per_group in params for item in per_group]
        model.train()
        for step in tqdm(range(dense), desc=f"DLTH {data.task.id}", unit="it", disable=not progress, leave=False):
            x, y = next(batches)
            lam = top * min(1.0, (step + 1) / max(ramp, 1))

            @torch.no_grad()
            def penalise(lam=lam):  # the L2 penalty's gradient on the units to remove
                for p, dim, idx in params:
                    if p.grad is not None:
                        p.grad.index_add_(dim, idx, lam * p.index_select(dim, idx))

            optimizer_step(model, opt, x, y, before_step=penalise)
            costs.add_steps(model, 1, self.batch_size)
        removed = float(np.sqrt(sum(p.index_select(dim, idx).detach().float().pow(2).sum().item() for p, dim, idx in params)))
        small = extract(model, subnet)
        finetune(small, data, j - dense, self.lr, self.batch_size, seed + 1, costs, f"DLTH fine-tune {data.task.id}", progress,
                 self.optimizer)
        return small, subnet, {"penalised_iterations": dense, "lambda_max": top, "removed_norm": removed}
