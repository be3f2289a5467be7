"""A zoo grown by `prune` (issue 31): what `auto`'s own J = 20 records do to later tasks, whether weighing a record's
budget in the search helps, and what `zoo refine` makes of those records.

The scenario: a user prunes a task, then a related one. For each of 10 validation tasks (seed 2000) and the main
table's first 10 test tasks (seed 1000, both disjoint from the published zoo's), an *earlier* task swaps one of its
five classes for another (seeded): `prune --method auto` (the nearest record, J = 20) prunes it into a layer on the
published zoo, as `prune --save-to` does. Then each later task is pruned at J = 20 by the nearest record and by MVP
from: the published records only (today's search: the zoo's source method, so the layer changes nothing); every
record at the ratio (`zoo_method="all"`: the J = 20 records compete), with the budget weighed in at several weights
(`quality`); and the same after `zoo refine` has trained the layer's records to the zoo's 1000 steps (a copy of
the layer). The next 10 test tasks, with no earlier task of their own, are the control (nearest record only).

    python benchmarks/peer/grown_zoo.py grow
    python benchmarks/peer/grown_zoo.py refine
    python benchmarks/peer/grown_zoo.py run
    python benchmarks/peer/grown_zoo.py report
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
from metavote.experiments import PUBLISHED_ZOO, context, prune, published_zoo, with_layer  # noqa: E402
from metavote.methods import create_method  # noqa: E402
from metavote.profiles import get_profile  # noqa: E402
from metavote.training import set_threads  # noqa: E402
from metavote.zoo import Zoo, refine_zoo  # noqa: E402

OUT = Path("runs/grown-zoo")
LAYER, REFINED = OUT / "layer", OUT / "refined"
QUALITIES = (0.0, 0.3, 1.0, 3.0)


def base_context():
    return context(published_zoo(None) or PUBLISHED_ZOO, read_only=True)


def task_sets(ctx, n: int) -> dict[str, list]:
    return {"validation": bench_tasks(ctx.dataset, ctx.zoo, n, seed=2000), "test": bench_tasks(ctx.dataset, ctx.zoo, n, seed=1000)}


def earlier(ctx, task, seed: int):
    """The task with one of its classes (drawn) swapped for a class outside it (drawn)."""
    rng = np.random.default_rng(seed)
    classes = list(task.classes)
    others = [c for c in ctx.dataset.classes if c not in classes]
    classes[rng.integers(len(classes))] = others[rng.integers(len(others))]
    return ctx.dataset.task(classes)


def grow(args) -> None:
    ctx = base_context()
    grown = with_layer(ctx, LAYER)
    for name, tasks in task_sets(ctx, args.tasks).items():
        for i, task in enumerate(tasks):
            first = earlier(ctx, task, 10_000 + i + (0 if name == "test" else 500))
            if not grown.zoo.find(first.id):
                result, _ = prune(grown, first.classes, "auto", progress=False)
                print(f"{name} {i}: earlier task {', '.join(first.classes)}: {result.method} J=20 {100 * result.accuracy:.1f}%")


def refine(args) -> None:
    if not REFINED.exists():
        shutil.copytree(LAYER, REFINED)
    report = refine_zoo(REFINED)
    print(f"refined {len(report.refined)} records in {report.seconds / 60:.1f} min")
    (OUT / "refine.json").write_text(json.dumps(report.refined, indent=1))


def run(args) -> None:
    ctx = base_context()
    profile = get_profile("cpu")
    zoos = {"grown": with_layer(ctx, LAYER), "refined": with_layer(ctx, REFINED)}

    def nearest_only(data, task, log):
        for label, extra, run in variants(data, task, log):
            if label.startswith("nearest record") and label.endswith(("quality 0", "published records")):
                yield label, extra, run

    def variants(data, task, log):
        for zoo_name, grown in zoos.items():
            for key in ("nearest", "mvp"):
                settings = profile.settings(key) | {"dataset": ctx.dataset}
                cases = [("published records", {"zoo_method": None})] if zoo_name == "grown" else []  # the zoo's IFP records
                cases += [(f"all records, quality {q:g}", {"zoo_method": "all", "quality": q}) for q in QUALITIES
                          if key == "nearest" or q in (0.0, args.mvp_quality)]
                for case, extra in cases:
                    m = create_method(key, **settings, **extra)
                    label = f"{m.name} {zoo_name if extra.get('zoo_method') else ''} {case}".replace("  ", " ")
                    yield label, {"family": label, "x": m.iterations, "zoo": zoo_name}, lambda m=m, g=grown: g.run(m, data)

    sets = task_sets(ctx, args.tasks)
    sets["unrelated"] = bench_tasks(ctx.dataset, ctx.zoo, 2 * args.tasks, seed=1000)[args.tasks:]  # no earlier task of their own
    for name, tasks in sets.items():
        run_variants(ctx, tasks, variants if name != "unrelated" else nearest_only, OUT / name, True, name)


def report(args) -> None:
    text, results = "", {}
    with Zoo(LAYER, read_only=True) as layer:
        layer_tasks = {r.task.id for r in layer.records() if r.origin == layer.root}
    for name in ("validation", "test", "unrelated"):
        rows = [json.loads(line) for line in open(OUT / name / "rows.jsonl")]
        cell = defaultdict(dict)
        for r in rows:
            cell[r["method"]][r["task"]] = r
        tasks = sorted(cell["nearest record published records"])
        base = {key: cell[f"{key} published records"] for key in ("nearest record", "MVP")}
        table, out = [], []
        for label, per in cell.items():
            if not all(t in per for t in tasks):
                continue
            ref = base["MVP" if label.startswith("MVP") else "nearest record"]
            d = 100 * np.array([per[t]["accuracy"] - ref[t]["accuracy"] for t in tasks])
            acc = 100 * np.array([per[t]["accuracy"] for t in tasks])
            own = sum((per[t]["neighbours"] or [""])[0] in layer_tasks for t in tasks)
            out.append({"label": label, "accuracy": float(acc.mean()), "se": float(acc.std(ddof=1) / np.sqrt(len(acc))),
                        "difference": float(d.mean()), "difference_se": float(d.std(ddof=1) / np.sqrt(len(d))),
                        "nearest_from_layer": int(own)})
            table.append([label, f"{acc.mean():.2f} ± {out[-1]['se']:.2f}", f"{d.mean():+.2f} ± {out[-1]['difference_se']:.2f}",
                          f"{int((d > 0).sum())} / {int((d < 0).sum())}", f"{own} of {len(tasks)}"])
        results[name] = out
        how = ("each after its earlier task (one class swapped) was pruned into the layer by `auto`" if name != "unrelated" else
               "the next 10 test tasks, with no earlier task of their own (the layer holds the 20 above)")
        text += (f"\n\n{name.capitalize()} tasks ({len(tasks)}), J = 20, {how}:\n\n"
                 + md_table(["method, zoo, candidates", "accuracy (%)", "− published records only (points)", "ahead / behind",
                             "nearest is a layer record"], table))
    refined = json.loads((OUT / "refine.json").read_text()) if (OUT / "refine.json").exists() else []
    if refined:
        before, after = (100 * np.array([r[k] for r in refined]) for k in ("before", "after"))
        text += (f"\n\n`zoo refine` on the layer's {len(refined)} J = 20 records (to 1000 steps): their own accuracy "
                 f"{before.mean():.2f} → {after.mean():.2f}%, {np.mean([r['tflops'] for r in refined]):.2f} TFLOPs and "
                 f"{np.mean([r['seconds'] for r in refined]):.0f} s per record.")
    save("grown_zoo", {"results": results, "refine": refined}, text.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["grow", "refine", "run", "report"])
    ap.add_argument("--tasks", type=int, default=10, help="validation and test tasks each")
    ap.add_argument("--mvp-quality", type=float, default=1.0, help="the quality weight MVP also runs at")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    {"grow": grow, "refine": refine, "run": run, "report": report}[args.stage](args)


if __name__ == "__main__":
    main()
