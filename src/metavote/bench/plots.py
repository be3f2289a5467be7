"""Figures of the bench and the ablations."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_ablation(rows: Sequence[dict], path: str | os.PathLike, title: str, xlabel: str, logx: bool = False, bars: bool = False) -> Path:
    """Accuracy (mean ± std over tasks) against ``x``, one line (or bar set) per ``family``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in rows))
    xs = list(dict.fromkeys(r["x"] for r in rows))  # names keep their order; numbers are sorted
    if all(isinstance(x, (int, float)) for x in xs):
        xs.sort()
    fig, ax = plt.subplots(figsize=(7, 4) if all(len(str(x)) < 12 for x in xs) else (9, 4.6))
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
        ax.set_xticks(np.arange(len(xs)), [textwrap.fill(str(x), 16) for x in xs], fontsize=8)
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
    return _save(fig, path)


def plot_budget(rows: Sequence[dict], path: str | os.PathLike, title: str) -> Path:
    """Accuracy (mean ± std over tasks) against training TFLOPs (log scale), one line per method
    family (MVP, the nearest record, IFP, Torch-Pruning's pipelines, random), MVP also with its
    neighbour search's FLOPs added (dashed); MVP with another search at one budget is one point,
    its search included."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for fam in dict.fromkeys(r["family"] for r in rows):
        xs = sorted({r["x"] for r in rows if r["family"] == fam})
        sel = [[r for r in rows if r["family"] == fam and r["x"] == x] for x in xs]
        acc = [100 * np.mean([r["accuracy"] for r in s]) for s in sel]
        std = [100 * np.std([r["accuracy"] for r in s]) for s in sel]
        tf = [np.mean([r["tflops"] for r in s]) for s in sel]
        searched = [np.mean([r["tflops"] + r.get("search_tflops", 0.0) for r in s]) for s in sel]
        if len(xs) == 1 and fam.startswith("MVP ("):  # one budget, another neighbour search: its point with the search's FLOPs
            ax.plot(searched, acc, marker="D", ls="none", label=f"{fam}, J={xs[0]}, search included")
            continue
        line = ax.errorbar(tf, acc, yerr=std, marker="o", capsize=3, label=fam)
        for x, t, a in zip(xs, tf, acc):
            ax.annotate(f"J={x}", (t, a), textcoords="offset points", xytext=(4, -10), fontsize=7)
        if any(s > t for s, t in zip(searched, tf)):
            ax.plot(searched, acc, ls="--", marker=".", color=line[0].get_color(), label=f"{fam} + neighbour search")
    tasks = len({r["task"] for r in rows})
    ax.set_xscale("log")
    ax.set(xlabel="training TFLOPs per task (log)", ylabel="test accuracy (%)", title=f"{title} ({tasks} tasks, mean ± std)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
