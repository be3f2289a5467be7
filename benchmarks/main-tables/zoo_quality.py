"""Zoo quality: MVP from a zoo pruned with IFP at J = 1000 (the paper's zoo budget) against the CPU
profile's zoo (J = 200), on validation tasks (never the test tasks).

1. On the tasks both zoos hold (only how long the records were pruned differs): the same rows as
   `metavote ablate zoos --zoo runs/zoo-cpu --other-zoo runs/zoo-j1000 --tasks 30 --seed 7`.
2. Each zoo whole, at about the same zoo FLOPs: 100 records at J = 200 against 20 at J = 1000.

    metavote zoo build --zoo runs/zoo-j1000 --profile cpu --iterations 1000 --tasks 20 --seed 0 --workers 2 --threads 1
    python benchmarks/main-tables/zoo_quality.py --zoo runs/zoo-cpu --other-zoo runs/zoo-j1000 [--tasks 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from metavote.bench import ablate_zoos, bench_tasks, zoo_names
from metavote.experiments import context, zoos_notes
from metavote.profiles import get_profile
from metavote.training import set_threads
from metavote.zoo import Zoo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo-cpu")
    ap.add_argument("--other-zoo", default="runs/zoo-j1000")
    ap.add_argument("--tasks", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7, help="validation task seed (the test tasks use 1000)")
    ap.add_argument("--out", default="runs/zoo-quality")
    args = ap.parse_args()
    set_threads(2)
    ctx, other = context(args.zoo), Zoo(args.other_zoo)
    tasks = bench_tasks(ctx.dataset, ctx.zoo, args.tasks, seed=args.seed)  # the other zoo's tasks are among this zoo's
    names = zoo_names([ctx.zoo, other])
    zoos = dict(zip(names, (ctx.zoo, other)))
    parts, rows = [], {}
    for common, folder in ((True, "zoos"), (False, "whole")):
        rows[folder] = ablate_zoos(ctx, other, tasks, get_profile("cpu"), common=common, out=Path(args.out) / folder)
        acc = {n: {r["task"]: r["accuracy"] for r in rows[folder] if r["zoo"] == n} for n in names}
        diff = np.array([acc[names[1]][t] - acc[names[0]][t] for t in acc[names[0]]])
        parts.append(f"### {'The tasks both zoos hold' if common else 'Each zoo whole'}\n\n" + md_table(
            ["zoo", "tasks", "MVP accuracy (%)"], [[n, len(acc[n]), f"{100 * np.mean(list(acc[n].values())):.2f} ± "
                                                   f"{100 * np.std(list(acc[n].values())):.2f}"] for n in names])
            + f"\n\n{names[1]} minus {names[0]}: {100 * diff.mean():+.2f} ± {100 * diff.std():.2f} points, ahead on {(diff > 0).sum()} "
              f"of {len(diff)} ({(diff == 0).sum()} tied)." + zoos_notes(rows[folder], zoos, common))
    save("zoo_quality", rows, f"{len(tasks)} validation tasks (seed {args.seed}), MVP at J = 20 (CPU profile).\n\n" + "\n\n".join(parts))


if __name__ == "__main__":
    main()
