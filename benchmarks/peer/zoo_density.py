"""Zoos at equal zoo FLOPs (issue 31): IFP at J = 1000 against Torch-Pruning magnitude + 1000 steps of the small
model, whose records cost about a fifth as much, so the same zoo FLOPs buy about 5 times the records. IFP: the
published zoo's records of seed 0's first 10 tasks (a copy of the zoo with the other 10 removed); Torch-Pruning: seed
0's first 54 tasks (the same 10 and 44 more). Each zoo is judged by what a later task gets from it: the nearest record
(what `auto` runs) and MVP at J = 20 on 20 test tasks (seed 1000) disjoint from both zoos, paired.

    metavote zoo build --zoo runs/zoo-density/tp-magnitude54 --method tp-magnitude --profile cpu --iterations 1000 \\
        --tasks 54 --seed 0 --workers 2 --threads 1
    python benchmarks/peer/zoo_density.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, save  # noqa: E402

from metavote.bench import bench_tasks, run_variants  # noqa: E402
from metavote.data import load_dataset, sample_tasks  # noqa: E402
from metavote.experiments import PUBLISHED_ZOO, context, published_zoo  # noqa: E402
from metavote.methods import create_method  # noqa: E402
from metavote.profiles import get_profile  # noqa: E402
from metavote.training import set_threads  # noqa: E402
from metavote.zoo import Zoo  # noqa: E402

OUT = Path("runs/zoo-density")


def ifp_subset(source: Path, count: int) -> Path:
    """A writable copy of the published zoo holding the records of seed 0's first ``count`` tasks."""
    target = OUT / f"ifp{count}"
    if not target.exists():
        shutil.copytree(source, target)
        for p in [target, *target.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
        with Zoo(target) as zoo:
            keep = {t.id for t in sample_tasks(load_dataset(zoo.dataset_source()[0]), 5, count, seed=0)}
            for r in zoo.records():
                if r.task.id not in keep:
                    zoo.remove(r.record_id)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ifp-records", type=int, default=10)
    ap.add_argument("--other", default=str(OUT / "tp-magnitude54"))
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    zoos = {"IFP J = 1000": ifp_subset(Path(published_zoo(None) or PUBLISHED_ZOO), args.ifp_records),
            "Torch-Pruning magnitude + 1000": Path(args.other)}
    ctxs = {name: context(path) for name, path in zoos.items()}
    first = next(iter(ctxs.values()))
    tasks = bench_tasks(first.dataset, ctxs["Torch-Pruning magnitude + 1000"].zoo, args.tasks, seed=1000)  # its tasks include IFP's
    profile = get_profile("cpu")

    def variants(data, task, log):
        for name, ctx in ctxs.items():
            for key in ("nearest", "mvp"):
                m = create_method(key, **profile.settings(key), dataset=ctx.dataset)
                yield f"{m.name} from {name}", {"family": name, "x": m.iterations}, lambda m=m, c=ctx: c.run(m, data)

    rows = run_variants(first, tasks, variants, OUT / "rows", True, "zoo density")
    cell = defaultdict(dict)
    for r in rows:
        cell[r["method"]][r["task"]] = r
    table, out = [], {}
    for name, ctx in ctxs.items():
        records = ctx.zoo.records()
        zoo_tf = sum(r.flops for r in records) / 1e12
        out[name] = {"records": len(records), "zoo_tflops": zoo_tf, "records_accuracy": float(np.mean([r.accuracy for r in records]))}
        cells = []
        for key in ("nearest record", "MVP"):
            acc = 100 * np.array([cell[f"{key} from {name}"][t.id]["accuracy"] for t in tasks])
            out[name][key] = float(acc.mean())
            cells.append(f"{acc.mean():.2f} ± {acc.std(ddof=1) / np.sqrt(len(acc)):.2f}")
        table.append([name, len(records), f"{zoo_tf:.1f}", f"{100 * out[name]['records_accuracy']:.2f}", *cells])
    names = list(ctxs)
    lines = []
    for key in ("nearest record", "MVP"):
        d = 100 * np.array([cell[f"{key} from {names[1]}"][t.id]["accuracy"] - cell[f"{key} from {names[0]}"][t.id]["accuracy"]
                            for t in tasks])
        out[f"{key} difference"] = {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))), "ahead": int((d > 0).sum())}
        lines.append(f"- {key}, {names[1]} − {names[0]}: {d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(len(d)):.2f} points "
                     f"({int((d > 0).sum())} of {len(d)} ahead, {int((d < 0).sum())} behind)")
    text = (f"{len(tasks)} test tasks (seed 1000, disjoint from both zoos), J = 20, r = 0.8, `ann` search:\n\n"
            + md_table(["zoo", "records", "zoo TFLOPs", "records' own accuracy (%)", "nearest record J = 20 (%)", "MVP J = 20 (%)"], table)
            + "\n\n" + "\n".join(lines))
    save("zoo_density", {"zoos": out, "rows": rows}, text)
    (OUT / "summary.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
