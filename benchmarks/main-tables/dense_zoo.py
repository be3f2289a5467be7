"""A deliberately dense zoo: do neighbours that share the target's classes help MVP?

The zoo's tasks are drawn from a small universe of classes (``--universe`` of CIFAR-100's 100,
seeded), so that the nearest zoo tasks of a target from the same universe share most of its
classes. On validation targets from that universe (never the test tasks), MVP at J with LEEP
neighbours from the dense zoo is set against MVP with neighbours from the broad zoo (``--zoo``,
tasks over all 100 classes), and both against IFP at J and at 10·J.

    python benchmarks/main-tables/dense_zoo.py --zoo runs/zoo-cpu --dense runs/zoo-dense [--universe 10] [--zoo-tasks 16] [--tasks 8]

The dense zoo is built first (resumable; IFP with the CPU profile, 2 workers of 1 thread).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from pathlib import Path

import numpy as np

from metavote.bench import ablate_zoos, bench, main_methods, plot_ablation, zoo_names
from metavote.data import sample_tasks
from metavote.experiments import context, zoos_notes
from metavote.methods import create_method
from metavote.models import locate_backbone
from metavote.profiles import get_profile
from metavote.training import set_threads
from metavote.zoo import build_zoo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import FIGURES, md_table, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", default="runs/zoo-cpu", help="the broad zoo (tasks over every class)")
    ap.add_argument("--dense", default="runs/zoo-dense", help="the dense zoo's folder (built if missing)")
    ap.add_argument("--universe", type=int, default=10, help="classes the dense zoo and the targets are drawn from")
    ap.add_argument("--universe-seed", type=int, default=7)
    ap.add_argument("--zoo-tasks", type=int, default=16)
    ap.add_argument("--tasks", type=int, default=8, help="validation targets")
    ap.add_argument("--seed", type=int, default=7, help="validation task seed (the test tasks use 1000)")
    ap.add_argument("--out", default="runs/dense-zoo")
    args = ap.parse_args()

    broad = context(args.zoo)
    dataset, profile = broad.dataset, get_profile("cpu")
    universe = [dataset.classes[i] for i in sorted(np.random.default_rng(args.universe_seed).choice(dataset.num_classes, args.universe, replace=False))]
    print("universe:", ", ".join(universe), flush=True)
    zoo_tasks = sample_tasks(dataset, 5, args.zoo_tasks, seed=0, classes=universe)
    build_zoo(args.dense, zoo_tasks, locate_backbone(), create_method("ifp", **profile.settings("ifp", iterations=200)), dataset.name,
              workers=2, threads=1)
    set_threads(2)
    ctx = context(args.dense)
    dense, broad_zoo = ctx.zoo, broad.zoo
    targets = sample_tasks(dataset, 5, args.tasks, seed=args.seed, classes=universe,
                           exclude=[r.task for z in (dense, broad_zoo) for r in z.records(status=None)])

    rows = ablate_zoos(ctx, broad_zoo, targets, profile, common=False, nearest_record=False, out=Path(args.out) / "mvp")
    rows += bench(ctx, main_methods(profile)[1:3], targets, Path(args.out) / "ifp", True)  # IFP at 10·J and at J
    names = dict(zip(zoo_names([dense, broad_zoo]), ("dense", "broad")))
    for r in rows:
        r["family"], r["x"] = f"targets from {args.universe} classes", f"MVP, {names[r['zoo']]} zoo" if "zoo" in r else r["method"]
    figure = plot_ablation(rows, Path(args.out) / "dense_zoo.png", f"MVP (J={profile.iterations}) from a dense and a broad zoo", "",
                           bars=True)
    shutil.copy(figure, FIGURES / "ablation_dense_zoo.png")

    by = collections.defaultdict(dict)
    for r in rows:
        by[r["method"]][r["task"]] = r["accuracy"]
    ifp_high = by[main_methods(profile)[1].label]
    table = md_table(["rows", "tasks", "accuracy (%)", "against IFP at 10·J (points)", "tasks ahead"],
                     [[m, len(acc), f"{100 * np.mean(list(acc.values())):.2f}",
                       f"{100 * np.mean([a - ifp_high[t] for t, a in acc.items()]):+.2f}", sum(a > ifp_high[t] for t, a in acc.items())]
                      for m, acc in by.items()])
    notes = zoos_notes([r for r in rows if "zoo" in r], dict(zip(zoo_names([dense, broad_zoo]), (dense, broad_zoo))), common=False)
    save("dense_zoo", {"universe": universe, "zoo_tasks": [t.id for t in zoo_tasks], "targets": [t.id for t in targets], "rows": rows},
         f"Universe ({args.universe} classes): {', '.join(universe)}; dense zoo {len(zoo_tasks)} tasks, broad zoo "
         f"{len(broad_zoo.records(method=broad_zoo.source_method))}; {len(targets)} validation targets (seed {args.seed}).\n\n"
         f"![dense zoo](../../../docs/figures/ablation_dense_zoo.png)\n\n{table}{notes}")


if __name__ == "__main__":
    main()
