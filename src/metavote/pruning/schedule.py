"""Pruning schedules: how a group's width shrinks over the steps of a gradual pruning run."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..errors import ConfigError


def pruning_schedule(sizes: Mapping[str, int], targets: Mapping[str, int], step_fraction: float) -> list[dict[str, int]]:
    """Widths after each pruning step: every step removes ``step_fraction`` of each group's
    remaining units (at least one) until the group reaches its target width."""
    if not 0 < step_fraction <= 1:
        raise ConfigError(f"step fraction must be in (0, 1], got {step_fraction}")
    steps, current = [], dict(sizes)
    while any(current[k] > targets[k] for k in current):
        current = {k: max(targets[k], min(n - 1, math.floor(n * (1 - step_fraction)))) if n > targets[k] else n for k, n in current.items()}
        steps.append(dict(current))
    return steps
