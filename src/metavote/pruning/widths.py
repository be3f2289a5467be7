"""Latency-aware widths: kept widths the CPU kernels run fast, at no more FLOPs than the ratio's.

A pruned layer's latency is not its FLOPs. ONNX Runtime's CPU convolutions (MLAS) work on
channel blocks of 8 floats with AVX2 (16 with AVX-512); a width off the block is padded to it
and reordered between layers. Measured here (``benchmarks/deployment/latency.py``: the r = 0.8 CIFAR ResNet-18, batch 1, one
thread), the widths 6/13/26/51 of round((1 - r) n) ran 1.8x slower than 8/8/24/48-56, which has
*fewer* FLOPs. :func:`aligned_widths` moves each group's width onto the grid of ``multiple``
while keeping the model's forward FLOPs at or under those of the widths asked for, staying as
close as it can to each group's own share (the ratio's per-layer widths)::

    widths = target_widths(groups, 0.8)               # {'layer1': 6, 'layer2': 13, ...}
    aligned_widths(backbone, widths, multiple=8)      # {'layer1': 8, 'layer2': 8, 'layer3': 24, ...}

Methods take it as their ``align`` setting (``metavote prune --align 8``). It is off by default: it
cost MVP 2.6 points at J = 20 on 10 tasks (``benchmarks/deployment/deploy_accuracy.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..models.base import Backbone
from ..models.units import UnitGroup
from ..training import step_flops
from .surgery import shrink


def width_flops(model: Backbone, widths: Mapping[str, int], groups: Sequence[UnitGroup] | None = None) -> int:
    """Forward FLOPs at batch 1 of ``model`` with each group cut to its first ``widths[g]`` units."""
    groups = groups if groups is not None else model.unit_groups()
    keep = {g.name: np.arange(widths.get(g.name, g.size)) for g in groups}
    return step_flops(shrink(model, keep, groups), 1, backward=False)


def aligned_widths(model: Backbone, widths: Mapping[str, int], multiple: int = 8, groups: Sequence[UnitGroup] | None = None) -> dict[str, int]:
    """``widths`` moved to multiples of ``multiple`` with forward FLOPs never above theirs.

    Groups of fewer than ``2 * multiple`` units (a ViT's heads, say) keep their width. The others
    start at the nearest multiple and stay between the multiples just below and above their width
    (at least one block); while the FLOPs are over, the group furthest above its own width loses a
    block; then, while a block fits, the group furthest below its width gains one. Only when every
    group is at its floor and the FLOPs are still over do groups go lower. Deterministic; about two
    FLOP counts per group.
    """
    if multiple < 1:
        raise ConfigError(f"align must be >= 1, got {multiple}")
    groups = groups if groups is not None else model.unit_groups()
    widths = {g.name: int(widths[g.name]) for g in groups}
    if multiple == 1:
        return widths
    budget = width_flops(model, widths, groups)
    movable = [g.name for g in groups if g.size >= 2 * multiple and widths[g.name] > 0]
    # each width stays within the blocks around it: floor and ceiling multiples (at least one block, at most the group)
    low = {g.name: max(multiple, widths[g.name] // multiple * multiple) for g in groups if g.name in movable}
    high = {g.name: min(-(-widths[g.name] // multiple) * multiple, g.size // multiple * multiple) for g in groups if g.name in movable}
    out = dict(widths)
    for name in movable:
        out[name] = min(max(low[name], multiple * round(widths[name] / multiple)), high[name])

    def share(name: str) -> float:  # this group's width over the width asked for
        return out[name] / widths[name]

    flops = width_flops(model, out, groups)
    while flops > budget:
        over = [n for n in movable if out[n] > low[n]] or [n for n in movable if out[n] > multiple]
        if not over:
            raise ConfigError(f"no widths in multiples of {multiple} fit the FLOPs of these widths; use a smaller align")
        name = max(over, key=lambda n: (share(n), widths[n]))
        out[name] -= multiple
        flops = width_flops(model, out, groups)
    tried: set[str] = set()
    while True:
        under = sorted((n for n in movable if n not in tried and out[n] < high[n]), key=lambda n: (share(n), -widths[n]))
        if not under:
            return out
        name = under[0]
        out[name] += multiple
        if width_flops(model, out, groups) > budget:
            out[name] -= multiple
            tried.add(name)


def host_aligned_widths(model: Backbone, widths: Mapping[str, int], groups: Sequence[UnitGroup] | None = None) -> dict[str, int]:
    """``widths`` aligned for the CPU this runs on (``align="auto"``, ``prune --align auto``): on its
    channel block (:func:`~metavote.cpu.channel_block`: 16 with AVX-512, else 8) where widths of
    that block fit the FLOPs, else on 8. Measured on an AVX-512 CPU (``benchmarks/deployment/cpu_types.py``), a
    convolution's time steps at multiples of 16, and widths that are multiples of 8 (or 4) stay on
    ONNX Runtime's blocked path while others fall off it; so 8 serves AVX2 and AVX-512 alike, and 16
    buys only the width up to the next step. At r = 0.8 of the width-0.5 ResNet-18 no widths in
    multiples of 16 fit the FLOPs (its first stage keeps 6 of 32 channels), so there ``auto`` is 8."""
    from ..cpu import channel_block

    for multiple in dict.fromkeys((channel_block(), 8)):
        try:
            return aligned_widths(model, widths, multiple, groups)
        except ConfigError:
            continue
    raise ConfigError("no widths in multiples of 8 fit the FLOPs of these widths; leave out align")
