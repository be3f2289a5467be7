"""Figures of the bench and the ablations."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_ablation(rows: Sequence[dict], path: str | os.PathLike, title: str, xlabel: str, logx: bool = False, bars: bool = False) -> Path:
    """Accuracy (mean ± std over tasks) against ``x``, one line (or bar set) per ``family``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in rows))
    xs = sorted({r["x"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(families)
    for k, fam in enumerate(families):
        mean = [100 * np.mean([r["accuracy"] for r in rows if r["family"] == fam and r["x"] == x] or [np.nan]) for x in xs]
        std = [100 * np.std([r["accuracy"] for r in rows if r["family"] == fam and r["x"] == x] or [np.nan]) for x in xs]
        if bars:
            pos = np.arange(len(xs)) + (k - (len(families) - 1) / 2) * width
            ax.bar(pos, mean, width, yerr=std, capsize=3, label=fam)
        else:
            ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=fam)
    if bars:
        ax.set_xticks(np.arange(len(xs)), [str(x) for x in xs])
        low = min(100 * (np.mean(a) - np.std(a)) for fam in families for x in xs
                  if (a := [r["accuracy"] for r in rows if r["family"] == fam and r["x"] == x]))
        ax.set_ylim(bottom=max(0.0, 10 * np.floor(low / 10) - 10))  # bars of close heights stay readable
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
    tasks = len({r["task"] for r in rows})
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=f"{title} ({tasks} tasks, mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
