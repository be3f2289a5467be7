"""PoWER (Goyal et al., ICML 2020, "PoWER-BERT"), applied to the patch tokens of a ViT, at a budget of J steps.

PoWER-BERT removes *tokens*, not parameters: after each block's attention, a token's significance is
the attention it receives from the others, and only the most significant go on to the next blocks.
How many each block keeps (the retention configuration) is learned by a soft search, then the model
is retrained with hard extraction. The pruned model has every weight of the dense one; what shrinks
is the compute, so it is compared with the unit-pruning methods at matched FLOPs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..models.base import Backbone
from ..pruning import SubNetwork, shrink, target_widths
from ..training import cosine_lr, make_optimizer, step_flops, optimizer_step
from .base import Method, check_fraction, register, task_head


class SoftExtract(nn.Module):
    """A block of the configuration search: after its attention sublayer the k-th most significant
    patch token is multiplied by ``retention[k]`` in [0, 1] (the class token by 1)."""

    def __init__(self, block: nn.Module, patches: int) -> None:
        super().__init__()
        self.block = block
        self.retention = nn.Parameter(torch.ones(patches, device=next(block.parameters()).device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, received = self.block.attn.forward_received(self.block.norm1(x))
        x = x + out
        rank = received[:, 1:].argsort(dim=1, descending=True).argsort(dim=1)
        mass = self.retention.to(x.dtype)[rank].unsqueeze(-1)
        x = torch.cat([x[:, :1], x[:, 1:] * mass], dim=1)
        return x + self.block.mlp(self.block.norm2(x))


def retention_config(masses: np.ndarray, patches: int, fits: Callable[[list[int]], bool]) -> list[int]:
    """Patch tokens kept per block from the search's soft masses: made non-increasing with depth
    (a token gone is gone), then scaled as far as ``fits(config)`` allows (the largest scale whose
    configuration fits the budget), each block keeping between 0 and ``patches``."""
    mono = np.minimum.accumulate(np.clip(masses, 0, patches))
    if mono.sum() <= 0:  # the search kept nothing anywhere: spread the budget evenly
        mono = np.ones_like(mono)

    def kept(scale: float) -> list[int]:
        return np.minimum(patches, np.floor(scale * mono)).astype(int).tolist()

    low, high = 0.0, patches / max(mono[mono > 0].min(), 1e-9) + 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if fits(kept(mid)) else (low, mid)
    return kept(low)


def matched_flops(backbone: Backbone, ratio: float) -> int:
    """Inference FLOPs (one image) of ``backbone`` with round((1 - r) n) heads and MLP nodes kept in
    every block: the compute of MVP's, random pruning's and UVC's models at ratio r."""
    groups = backbone.unit_groups()
    widths = target_widths(groups, ratio)
    return step_flops(shrink(backbone, {g.name: np.arange(widths[g.name]) for g in groups}, groups), 1, backward=False)


@register
@dataclass(kw_only=True)
class PoWER(Method):
    """PoWER-BERT's token elimination on a ViT's patch tokens, adapted to J iterations (ViT only).

    ``ratio`` r sets the compute: the token-pruned model may cost no more inference FLOPs than the
    ViT with round((1 - r) n) heads and MLP nodes kept in each block (MVP's, random pruning's and
    UVC's models at r), so the methods are compared at matched FLOPs. Search (the first ``search``
    J steps): every block's patch tokens, ranked by the attention they receive, are multiplied by a
    learnable retention r_jk in [0, 1] (init 1) with loss CE + ``lam`` sum_j j sum_k r_jk; AdamW, the
    weights at ``lr`` and the retentions at ``retention_lr``. The configuration is the per-block mass
    sum_k r_jk, made non-increasing with depth and scaled as far as the FLOPs budget allows. Retrain (the remaining
    steps): hard extraction, the class token and the top tokens by attention received, in their
    original order; the retention parameters are gone. Training FLOPs are what runs: the dense
    search steps, then the retrain steps on the kept tokens.

    Adaptations, each forced by the budget or the like-for-like comparison:

    - Stage 1 (fine-tuning the dense model) is skipped: the dense pre-trained model with the task's
      head (pre-trained rows, or imprinted) is already a model of the task. The notes' 20/40/40
      split becomes 40/60 (``search`` = 0.4).
    - The retention learning rate is raised to 2.5 / (search steps) when that is more than
      ``retention_lr``: Adam moves a retention by about its learning rate a step, so at 3e-3 and a
      few dozen steps nothing would be eliminated.
    - PoWER-BERT's lambda does not target a compute; the learned configuration is rescaled to the
      FLOPs budget instead (its shape across blocks is the search's, its total the budget's). The
      first block's attention always sees every token, so at r = 0.8 the budget leaves few tokens
      to the later blocks; the share of (token x block) slots kept is in the result's params. A
      first version kept (1 - r) of the token slots instead: on one zoo task of the ``vit-cpu``
      recipe that cost 1.6 times the FLOPs of the unit-pruned models (0.070 against 0.043 GFLOPs).
    - The class token is kept in the soft stage too (PoWER-BERT ranks it with the others there and
      forces it in only in the hard stage).
    - The soft extract multiplies the residual stream after the attention sublayer, where PoWER-BERT
      (post-norm BERT) puts it; in a pre-norm ViT the next LayerNorm hides part of that scaling.
    """

    key = "power"
    aligns = False
    name = "PoWER"
    requires = frozenset({"tokens"})
    builds_zoo = False  # it prunes tokens, not units: nothing for a zoo record to keep

    iterations: int = 100
    lr: float = 2e-4
    optimizer: str = "adamw"
    search: float = 0.4
    lam: float = 1e-3
    retention_lr: float = 3e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("search", self.search)
        if self.lam < 0 or self.retention_lr <= 0:
            raise ConfigError(f"PoWER needs lam >= 0 and retention_lr > 0, got {self.lam} and {self.retention_lr}")

    def prune(self, backbone, data, zoo, head_rows, costs, seed, prepared, progress):
        j = self.iterations
        model = copy.deepcopy(backbone)
        task_head(model, data, head_rows)
        patches, depth = model.num_tokens - 1, len(model.blocks)
        budget = matched_flops(model, self.ratio)

        def fits(kept: list[int]) -> bool:
            model.set_tokens_kept([k + 1 for k in kept])
            return step_flops(model, 1, backward=False) <= budget

        if not fits([0] * depth):
            raise ConfigError(f"ratio {self.ratio} leaves less compute than the class token alone needs (the first block's "
                              "attention sees every token); use a smaller ratio")
        model.set_tokens_kept(None)
        search = max(1, math.ceil(self.search * j)) if j else 0
        retention_lr = max(self.retention_lr, 2.5 / max(search, 1))
        opt = make_optimizer(model, self.optimizer, self.lr)  # the weights, before the retentions exist
        blocks = list(model.blocks)
        model.blocks = nn.Sequential(*[SoftExtract(b, patches) for b in blocks])
        retention = [b.retention for b in model.blocks]
        opt.add_param_group({"params": retention, "lr": retention_lr, "weight_decay": 0.0, "retention": True})
        device = next(model.parameters()).device
        batches = iter(data.loader(self.batch_size, seed=seed, device=device))
        model.train()
        bar = tqdm(total=j, desc=f"PoWER {data.task.id}", unit="it", disable=not progress, leave=False)
        for step in range(search):
            x, y = next(batches)
            scale = cosine_lr(step, j, 1.0)
            for group in opt.param_groups:
                group["lr"] = (retention_lr if group.get("retention") else self.lr) * scale
            optimizer_step(model, opt, x, y, penalty=lambda: self.lam * sum((i + 1) * r.sum() for i, r in enumerate(retention)))
            with torch.no_grad():
                for r in retention:
                    r.clamp_(0, 1)
            costs.add_steps(model, 1, self.batch_size)
            bar.update(1)
        masses = np.array([r.detach().sum().item() for r in retention])
        model.blocks = nn.Sequential(*blocks)
        model.set_tokens_kept([k + 1 for k in retention_config(masses, patches, fits)])
        opt = make_optimizer(model, self.optimizer, self.lr)
        model.train()
        for step in range(search, j):
            x, y = next(batches)
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, j, self.lr)
            optimizer_step(model, opt, x, y)
            costs.add_steps(model, 1, self.batch_size)
            bar.update(1)
        bar.close()
        slots = sum(model.tokens_kept) / (depth * model.num_tokens)
        return model, SubNetwork.full(model.unit_groups()), {
            "tokens_kept": model.tokens_kept, "flops_budget": budget, "token_slots_kept": round(slots, 4), "search_iterations": search,
            "search_masses": [round(float(m), 2) for m in masses], "retention_lr_used": retention_lr}
