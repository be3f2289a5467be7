"""MEST (Yuan et al., NeurIPS 2021, "MEST: Accurate and Fast Memory-Economic Sparse Training"), at unit level."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..pruning import extract, unit_norms
from ..training import cosine_lr, make_optimizer, optimizer_step
from .base import Method, register, task_head
from .sparse import UnitMask, magnitude_subnetwork


@register
@dataclass(kw_only=True)
class MEST(Method):
    """Sparse training that stays at the target ratio and mutates which units are on.

    From the pre-trained model with the task's head, a one-shot magnitude prune keeps
    round((1 - r) n) units per group (the largest filters / qkv / fc1 rows by L2 norm). Training
    stays sparse: each step the gradients of the units that are off are masked before the optimizer
    step and their weights after it. Every ``interval`` steps (``max(5, round(J / 20))``: 5 at J =
    100, 2 updates at J = 20) each group's ``mutation`` share of its kept units (at least one) with
    the lowest score |w| + ``grad_weight`` |g| is switched off, and as many units that were off are
    switched back on at zero effect (small random producing weights, norm scale 1 and shift 0, zero
    weights where they are read, momentum reset). The share halves at 56% of J and mutation stops
    at 75% (the authors' bound switches at epochs 90 and 120 of 160). SGD with a cosine schedule;
    the final sub-network is extracted. J iterations in all.

    Adaptations (the authors' code is unstructured and trains from random initialisation):

    - Units, not weights: the score of a unit is the norm of its producing weights (plus, with
      ``grad_weight`` > 0, ``grad_weight`` times the norm of their gradient on the step's batch;
      the authors' default is 0, and their code reads the gradient after it was zeroed).
    - The EM schedule's bounds become a share of kept units: pruning to 0.92 and regrowing to 0.90
      at r = 0.9 swaps 20% of the kept weights, so ``mutation`` = 0.2; the authors' code has no
      filter-level regrowth, so it is written here: regrown units are drawn uniformly among those
      that are off (not the ones just removed).
    - A pre-trained start: lr from the profile (the notes advise 0.01–0.05; the authors' 0.1 is for
      random initialisation), the task head from the pre-trained rows (or imprinted).
    - FLOPs are those of the full-size masked model, which is what runs (the memory economy of
      sparse kernels is not reproduced).
    - Statistics: as for every method here, BatchNorm statistics are re-estimated after the last
      step (``refresh_bn``). The authors train for hundreds of epochs, so their running averages
      catch up; after 20 steps with units removed and regrown they do not, and MEST ended near
      chance without it (20.8% against 44.1% on eight validation tasks; docs/benchmarks/main-tables.md).
    """

    key = "mest"
    name = "MEST"

    mutation: float = 0.2
    grad_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.mutation < 1 or self.grad_weight < 0:
            raise ConfigError(f"MEST needs 0 <= mutation < 1 and grad_weight >= 0, got {self.mutation} and {self.grad_weight}")

    def interval(self) -> int:
        return max(5, round(self.iterations / 20))

    def share(self, step: int) -> float:
        """The share of each group's kept units swapped at a mutation after ``step`` steps."""
        j = self.iterations
        return self.mutation if step < 0.56 * j else self.mutation / 2 if step < 0.75 * j else 0.0

    def prune(self, backbone, data, zoo, head_rows, costs, seed, prepared, progress):
        model = copy.deepcopy(backbone)
        task_head(model, data, head_rows)
        groups = model.unit_groups()
        widths = self.widths(model, groups)
        units = UnitMask(model, groups, magnitude_subnetwork(model, groups, widths))
        units.apply()
        opt = make_optimizer(model, self.optimizer, self.lr)
        device = next(model.parameters()).device
        batches = iter(data.loader(self.batch_size, seed=seed, device=device))
        rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
        swaps: list[int] = []  # units swapped at each mutation
        model.train()
        for step in tqdm(range(self.iterations), desc=f"MEST {data.task.id}", unit="it", disable=not progress, leave=False):
            x, y = next(batches)
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, self.iterations, self.lr)
            share = self.share(step + 1) if (step + 1) % self.interval() == 0 and step + 1 < self.iterations else 0.0

            def mutate_then_mask(share=share):  # mutation scores may use this step's gradients
                if share > 0:
                    swaps.append(self._mutate(units, groups, share, opt, rng, generator))
                units.mask_grads()

            optimizer_step(model, opt, x, y, before_step=mutate_then_mask)
            units.apply()
            costs.add_steps(model, 1, self.batch_size)
        small = extract(model, units.subnet)
        return small, units.subnet, {"mutations": len(swaps), "units_swapped": sum(swaps), "interval": self.interval()}

    def _mutate(self, units: UnitMask, groups, share: float, opt, rng, generator) -> int:
        """Swap each group's lowest-scoring kept units for random units that were off; returns the count."""
        swapped = 0
        for g in groups:
            kept, off = units.kept[g.name], units.off(g)
            count = min(max(1, round(share * len(kept))), len(off), len(kept))
            if count <= 0:
                continue
            score = unit_norms(units.model, g)[kept].sqrt()
            if self.grad_weight:
                score = score + self.grad_weight * unit_norms(units.model, g, grad=True)[kept].sqrt()
            weakest = kept[np.argsort(score.numpy(), kind="stable")[:count]]
            grown = np.sort(rng.choice(off, count, replace=False))
            units.switch_off(g, weakest)
            units.regrow(g, grown, opt, generator)
            swapped += count
        return swapped

