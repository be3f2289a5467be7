"""Candidate improvements to MVP on validation tasks (never the test tasks): each variant is MVP
with some settings changed, on the same tasks and the same LEEP neighbours, at the profile's budget.

    python benchmarks/mvp_variants.py --zoo runs/zoo-cpu [--tasks 8] [--seed 7]

Variants: the paper's MVP (voted units, weights averaged over the neighbours that hold them);
each kept weight from the most similar neighbour that holds it (``init="nearest-first"``); the
nearest neighbour's model as it is (``omega="nearest"``); and each of these with half the batch
and twice the steps (the same images and FLOPs).
"""

from __future__ import annotations

import argparse
import collections
import functools

import numpy as np

from metavote.bench import bench_tasks, run_variants
from metavote.bench.ablations import find_neighbours
from metavote.experiments import context
from metavote.methods import create_method
from metavote.profiles import get_profile
from metavote.training import set_threads

from _common import md_table, save

VARIANTS = {
    "MVP (paper)": {},
    "nearest-first weights": {"init": "nearest-first"},
    "nearest neighbour as it is": {"omega": "nearest"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", default="runs/zoo-cpu")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7, help="validation task seed (the test tasks use 1000)")
    ap.add_argument("--out", default="runs/mvp-variants")
    args = ap.parse_args()
    set_threads(2)
    ctx = context(args.zoo)
    profile = get_profile("cpu")
    base = profile.settings("mvp")
    tasks = bench_tasks(ctx.dataset, ctx.zoo, args.tasks, seed=args.seed)

    def variants(data, task, log):
        neighbours = functools.cache(lambda: find_neighbours(ctx, data)[0])  # the same LEEP neighbours for every variant
        for halve in (False, True):
            budget = {"iterations": 2 * base["iterations"], "batch_size": base["batch_size"] // 2} if halve else {}
            for name, settings in VARIANTS.items():
                yield f"{name}{', J x2 batch /2' if halve else ''}", {"family": name, "x": 2 if halve else 1}, \
                    lambda settings=settings, budget=budget: ctx.run(create_method("mvp", **(base | budget), neighbours=neighbours(), **settings), data)

    rows = run_variants(ctx, tasks, variants, args.out, True, "variants")
    by = collections.defaultdict(list)
    for r in rows:
        by[r["method"]].append(r)
    paper = {r["task"]: r["accuracy"] for r in by["MVP (paper)"]}
    results = []
    for name, sel in by.items():
        acc = np.array([r["accuracy"] for r in sel])
        diff = np.array([r["accuracy"] - paper[r["task"]] for r in sel])
        results.append({"variant": name, "tasks": len(sel), "accuracy": float(acc.mean()), "std": float(acc.std()),
                        "vs_paper": float(diff.mean()), "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()),
                        "tflops": float(np.mean([r["tflops"] for r in sel]))})
    table = md_table(["variant", "tasks", "accuracy (%)", "against the paper's MVP (points)", "tasks ahead / tied", "training TFLOPs"],
                     [[r["variant"], r["tasks"], f"{100 * r['accuracy']:.2f} ± {100 * r['std']:.2f}", f"{100 * r['vs_paper']:+.2f}",
                       f"{r['wins']} / {r['ties']}", f"{r['tflops']:.3f}"] for r in results])
    save("mvp_variants", results, table)


if __name__ == "__main__":
    main()
