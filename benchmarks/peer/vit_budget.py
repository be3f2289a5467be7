"""The ViT half of issue 31's comparison (issue 37): `prune --method auto` against Torch-Pruning's pipelines and AHNP at
every budget J on the CPU ViT (`vit-cpu` profile), at equal size, on 20 test tasks (seed 1000, disjoint from the zoo),
with an AHNP zoo (no ViT zoo is published). `auto` runs MVP there (the zoo holds r = 0.8 and was built by AHNP:
`experiments.default_method`); the nearest record and MVP at the ratio's widths per block (the paper's layout) beside it.

The zoo, then parts that write their own rows (the peers need no zoo, so they ran while it was built), then the report.
The zoo's tasks are those of seed 0 whether or not its build finished: the build was stopped at 58 of 100 for time.

    metavote zoo build --zoo runs/zoo-vit100 --profile vit-cpu --tasks 100 --seed 0 --workers 2 --threads 1 \
        --backbone ../shared/pretrained/cifar100_vit_d192_l6_h6.safetensors
    python benchmarks/peer/vit_budget.py peers --peer-iterations 10 20 50
    python benchmarks/peer/vit_budget.py peers --peer-iterations 100 200 --ahnp 200
    python benchmarks/peer/vit_budget.py validate --tasks 10          # item 2: MVP's variants on validation tasks (seed 2000)
    python benchmarks/peer/vit_budget.py zoo --mvp 10 20 50 100 200 --nearest 10 20 50 --paper-mvp 20
    python benchmarks/peer/vit_budget.py peers --tasks 4 --peer-iterations 1000       # J = 1000 on the first 4 tasks
    python benchmarks/peer/vit_budget.py zoo --tasks 4 --mvp 1000
    python benchmarks/peer/vit_budget.py report
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, mean_se, save  # noqa: E402

from metavote.bench import pipeline_families, run_variants, size_notes, summarize  # noqa: E402
from metavote.bench.harness import profile_method  # noqa: E402
from metavote.data import sample_tasks  # noqa: E402
from metavote.experiments import budget_notes, context  # noqa: E402
from metavote.profiles import get_profile  # noqa: E402
from metavote.training import set_threads  # noqa: E402

ZOO, ZOO_TASKS, ZOO_SEED = "runs/zoo-vit100", 100, 0
VIT = Path(__file__).resolve().parents[3] / "shared" / "pretrained" / "cifar100_vit_d192_l6_h6.safetensors"
OUT = Path("runs/vit-budget")
PROFILE = get_profile("vit-cpu")


def setup(args):
    set_threads(args.threads)
    ctx = context(args.zoo, backbone=args.backbone, read_only=True)
    # the zoo's tasks are those of its seed, whether or not its build has finished: the test tasks do not move with it
    zoo_tasks = sample_tasks(ctx.dataset, 5, ZOO_TASKS, seed=ZOO_SEED)
    test = sample_tasks(ctx.dataset, 5, 20, seed=1000, exclude=zoo_tasks)
    return ctx, zoo_tasks, test


def method(key: str, j: int, dataset=None, **settings):
    return profile_method(PROFILE, key, dataset, iterations=j, **settings)


def peers(args) -> None:
    ctx, _, test = setup(args)
    runs = [(k, j) for j in args.peer_iterations for k in args.peers] + [("ahnp", j) for j in args.ahnp]

    def variants(data, task, log):
        for key, j in runs:
            m = method(key, j, ctx.dataset)
            yield f"{m.name} J={j}", {"family": m.name, "x": j}, lambda m=m: ctx.run(m, data)
    run_variants(ctx, test[: args.tasks], variants, OUT / "peers", True, "peers")


def zoo(args) -> None:
    ctx, _, test = setup(args)
    runs = [("nearest", j, {}) for j in args.nearest] + [("mvp", j, {"layout": "neighbours"}) for j in args.mvp]
    runs += [("mvp", j, {"layout": "ratio"}) for j in args.paper_mvp]  # the paper's per-group widths: MVP before issue 37

    def variants(data, task, log):
        for key, j, settings in runs:
            m = method(key, j, ctx.dataset, **settings)
            name = f"{m.name} (ratio widths)" if settings.get("layout") == "ratio" else m.name
            yield f"{name} J={j}", {"family": name, "x": j}, lambda m=m: ctx.run(m, data)
    run_variants(ctx, test[: args.tasks], variants, OUT / "zoo", True, "zoo methods")


VALIDATION = {  # item 2: what holds MVP back on the ViT, each at J = 20 on validation tasks
    "MVP (the paper: ratio widths, averaged weights)": ("mvp", {}),
    "MVP, neighbours' layout": ("mvp", {"layout": "neighbours"}),
    "MVP, neighbours' layout, backbone weights": ("mvp", {"layout": "neighbours", "init": "backbone"}),
    "MVP, neighbours' layout, nearest-first weights": ("mvp", {"layout": "neighbours", "init": "nearest-first"}),
    "MVP, ratio widths, backbone weights": ("mvp", {"init": "backbone"}),
    "MVP, neighbours' layout, 1 neighbour": ("mvp", {"layout": "neighbours", "neighbours": 1}),
    "MVP, neighbours' layout, 5 neighbours": ("mvp", {"layout": "neighbours", "neighbours": 5}),
    "MVP, neighbours' layout, lr 1e-4": ("mvp", {"layout": "neighbours", "lr": 1e-4}),
    "MVP, neighbours' layout, lr 5e-4": ("mvp", {"layout": "neighbours", "lr": 5e-4}),
    "nearest record": ("nearest", {}),
    "nearest record, lr 5e-4": ("nearest", {"lr": 5e-4}),
    "Torch-Pruning Taylor": ("tp-taylor", {}),
    "random": ("random", {}),
}


def validate(args) -> None:
    ctx, zoo_tasks, test = setup(args)
    tasks = sample_tasks(ctx.dataset, 5, args.tasks, seed=2000, exclude=[*zoo_tasks, *test])

    def variants(data, task, log):
        for name, (key, settings) in VALIDATION.items():
            m = method(key, args.j, ctx.dataset, **settings)
            yield name, {"family": name, "x": args.j}, lambda m=m: ctx.run(m, data)
    rows = run_variants(ctx, tasks, variants, OUT / "validate", True, "validation")
    report_validation(rows, ctx)


def omega_table(ctx) -> str:
    """How the zoo's AHNP records lay out their heads and nodes: per group, the units kept (mean, min, max over records)
    against the ratio's per-group width, and the mean pairwise IoU of Omega against random draws at the same widths."""
    from metavote.pruning import target_widths
    from metavote.study import chance_iou, iou_matrices

    names, ious, sizes, kept = iou_matrices(ctx.zoo, ctx.zoo.records())
    widths = target_widths(ctx.backbone.unit_groups(), PROFILE.ratio)
    pairs = np.triu_indices(ious.shape[1], 1)
    table = []
    for g, name in enumerate(names):
        chance = np.mean([chance_iou(sizes[name], int(kept[g, a]), int(kept[g, b])) for a, b in zip(*pairs)])
        table.append([name, sizes[name], widths[name], f"{kept[g].mean():.1f} ({kept[g].min():.0f}–{kept[g].max():.0f})",
                      f"{ious[g][pairs].mean():.3f}", f"{chance:.3f}"])
    return (f"The zoo's {ious.shape[1]} AHNP records, group by group:\n\n"
            + md_table(["group", "units", "the ratio's width", "kept by a record: mean (min–max)", "mean pairwise IoU", "random draws"], table))


def report_validation(rows, ctx=None) -> str:
    by = defaultdict(dict)
    for r in rows:
        by[r["family"]][r["task"]] = r["accuracy"]
    base = by["MVP (the paper: ratio widths, averaged weights)"]
    table = []
    for name, acc in by.items():
        common = [t for t in base if t in acc]
        d = 100 * (np.array([acc[t] for t in common]) - np.array([base[t] for t in common]))
        table.append([name, len(acc), f"{100 * np.mean(list(acc.values())):.2f}",
                      f"{d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(len(d)):.2f}" if len(d) > 1 else "–", f"{int((d > 0).sum())} of {len(d)}"])
    text = md_table(["variant (J = 20)", "tasks", "accuracy (%)", "− the paper's MVP (points, mean ± s.e.)", "ahead"], table)
    if ctx is not None:
        text += "\n\n" + omega_table(ctx)
    save("vit_validation", {"rows": rows}, text)
    return text


def load(part):
    path = OUT / part / "rows.jsonl"
    return [json.loads(line) for line in open(path)] if path.exists() else []


AUTO = "MVP"  # what `prune --method auto` runs in an AHNP zoo at its ratio (experiments.default_method)


def report(args) -> None:
    rows = load("peers") + load("zoo")
    cell = defaultdict(dict)
    for r in rows:
        cell[(r["family"], r["x"])][r["task"]] = r
    tasks = sorted(cell[(AUTO, 20)])
    budgets = sorted({x for f, x in cell if f == AUTO})
    pipelines = pipeline_families(rows)
    others = ["nearest record", "MVP (ratio widths)"]

    def column(family, j, common):
        got = cell.get((family, j), {})
        return mean_se([got[t]["accuracy"] for t in common]) if common and all(t in got for t in common) else "–"

    table, results = [], []
    for j in budgets:
        auto = cell[(AUTO, j)]
        common = [t for t in tasks if t in auto and all(t in cell[(p, j)] for p in pipelines if cell.get((p, j)))]
        present = [p for p in pipelines if common and all(t in cell.get((p, j), {}) for t in common)]
        if not present:
            continue
        best = max(present, key=lambda p: np.mean([cell[(p, j)][t]["accuracy"] for t in common]))
        d = [auto[t]["accuracy"] - cell[(best, j)][t]["accuracy"] for t in common]
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
        results.append({"J": j, "tasks": len(common), "auto": float(np.mean([auto[t]["accuracy"] for t in common])), "best_peer": best,
                        "peer": float(np.mean([cell[(best, j)][t]["accuracy"] for t in common])), "difference": float(np.mean(d)),
                        "se": se, "ahead": int(sum(x > 0 for x in d)), "tasks_ids": common})
        table.append([j, len(common), column(AUTO, j, common), *[column(f, j, common) for f in others],
                      *[column(p, j, common) for p in pipelines], best,
                      f"{100 * np.mean(d):+.2f}" + (f" ± {100 * se:.2f}" if se is not None else ""), f"{results[-1]['ahead']} of {len(d)}"])
    text = md_table(["J", "tasks", "auto (MVP, the neighbours' layout)", *others, *pipelines, "best peer at J",
                     "auto − best peer (points, mean ± s.e.)", "auto ahead"], table)
    summary = summarize([r for r in rows if r["task"] in tasks])
    text += "\n\n" + "\n".join(size_notes(summary))
    full = {key for key, got in cell.items() if all(t in got for t in tasks)}  # (family, J) run on every task
    on_all = [r for r in rows if r["task"] in tasks and (r["family"], r["x"]) in full]  # the ratio on the 20 tasks
    text += f"\n\nOn the {len(tasks)} tasks, every (method, J) run on all of them:" + budget_notes(on_all, "AHNP")
    long = sorted(t for t in cell.get((AUTO, 1000), {}) if all(t in cell.get((p, 1000), {}) for p in pipelines if cell.get((p, 1000))))
    if long:
        on_long = {key for key, got in cell.items() if all(t in got for t in long)}
        text += f"\n\nOn the {len(long)} tasks that also ran J = 1000:" + budget_notes(
            [r for r in rows if r["task"] in long and (r["family"], r["x"]) in on_long], "AHNP")
    save("vit_budget", {"budgets": results, "rows": rows}, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)
    for name in ("peers", "zoo", "validate", "report"):
        p = sub.add_parser(name)
        p.add_argument("--zoo", default=ZOO)
        p.add_argument("--backbone", default=str(VIT))
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--tasks", type=int, default=10 if name == "validate" else 20)
        if name == "peers":
            p.add_argument("--peer-iterations", type=int, nargs="*", default=())
            p.add_argument("--peers", nargs="*", default=("tp-taylor", "tp-magnitude"))
            p.add_argument("--ahnp", type=int, nargs="*", default=())
        if name == "zoo":
            p.add_argument("--nearest", type=int, nargs="*", default=())
            p.add_argument("--mvp", type=int, nargs="*", default=())
            p.add_argument("--paper-mvp", type=int, nargs="*", default=(), help="J of MVP with the ratio's widths per group")
        if name == "validate":
            p.add_argument("--j", type=int, default=20)
    args = ap.parse_args()
    {"peers": peers, "zoo": zoo, "validate": validate, "report": report}[args.stage](args)


if __name__ == "__main__":
    main()
