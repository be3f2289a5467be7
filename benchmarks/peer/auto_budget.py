"""`prune --method auto` against Torch-Pruning's pipelines at every budget J (issue 31), on the main table's 20 test
tasks (seed 1000) with the published zoo: what `auto` runs there (the nearest record: the zoo holds r = 0.8), MVP, and
Torch-Pruning's one-shot magnitude and Taylor and its iterative pruning, each fine-tuned J steps with the same recipe.
The J = 20 and J = 200 rows of `metavote bench` (`runs/bench-peers`, docs/benchmarks/peer.md) are the same runs on the
same tasks, so `report` reads them beside these instead of running them again. `run --leep` also runs the nearest
record found by exhaustive LEEP instead of the `ann` search, at J = 20, on the same tasks and the issue's task.

    python benchmarks/peer/auto_budget.py run --nearest 10 50 100 200 --mvp 10 50 100 200 --peer-iterations 10 50 100 --leep --threads 1
    python benchmarks/peer/auto_budget.py run --nearest 1000 --peer-iterations 1000 --peers tp-magnitude
    python benchmarks/peer/auto_budget.py report runs/auto-budget/rows.jsonl runs/bench-peers/rows.jsonl
    python benchmarks/peer/auto_budget.py report runs/auto-budget/rows.jsonl benchmarks/peer/results/auto_budget.json   # J = 1000 added
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

from metavote.bench import ablate_budget, bench_tasks, pipeline_families, run_variants  # noqa: E402
from metavote.experiments import PUBLISHED_ZOO, budget_notes, context, published_zoo  # noqa: E402
from metavote.methods import create_method  # noqa: E402
from metavote.profiles import get_profile  # noqa: E402
from metavote.training import set_threads  # noqa: E402

OUT = "runs/auto-budget"
ISSUE_TASK = ["chimpanzee", "couch", "orange", "streetcar", "tiger"]  # ann's record 78.0%, exhaustive LEEP's 89.0% (issue 31)


def run(args) -> None:
    set_threads(args.threads)
    ctx = context(published_zoo(None) or PUBLISHED_ZOO, read_only=True)
    profile = get_profile("cpu")
    tasks = bench_tasks(ctx.dataset, ctx.zoo, args.tasks, seed=1000)
    others = {"nearest": args.nearest, **{peer: args.peer_iterations for peer in args.peers}}
    ablate_budget(ctx, tasks, profile, mvp_iterations=args.mvp, conventional_iterations=(), searches=(), others=others, out=args.out)
    if args.leep:
        def variants(data, task, log):
            for similarity in ("ann", "leep"):
                m = create_method("nearest", **profile.settings("nearest"), similarity=similarity, dataset=ctx.dataset)
                yield f"nearest record ({similarity}) J={m.iterations}", {"family": f"nearest record ({similarity})", "x": m.iterations}, \
                    lambda m=m: ctx.run(m, data)
        run_variants(ctx, [*tasks, ctx.dataset.task(ISSUE_TASK)], variants, args.out, True, "ann or LEEP")


def report(args) -> None:
    rows, seen = [], set()
    for path in args.rows:  # the first file's row wins where two hold the same (family, J, task)
        found = json.load(open(path))["results"]["rows"] if path.endswith(".json") else map(json.loads, open(path))
        for r in found:  # rows.jsonl of a run, or an earlier report's JSON (benchmarks/peer/results/auto_budget.json)
            if (r["family"], r["x"], r["task"]) not in seen:
                seen.add((r["family"], r["x"], r["task"]))
                rows.append(r)
    cell = defaultdict(dict)
    for r in rows:
        cell[(r["family"], r["x"])][r["task"]] = r
    tasks = sorted(cell[("nearest record", 20)])
    budgets = sorted({x for f, x in cell if f == "nearest record"})
    peers = [f for f in pipeline_families(rows) if f != "IFP"]

    table, results = [], []
    for j in budgets:
        auto = cell[("nearest record", j)]
        common = [t for t in tasks if t in auto]
        present = {p: cell[(p, j)] for p in peers if all(t in cell[(p, j)] for t in common)}
        if not present or not common:
            continue
        best = max(present, key=lambda p: np.mean([present[p][t]["accuracy"] for t in common]))
        d = [auto[t]["accuracy"] - present[best][t]["accuracy"] for t in common]
        mvp = cell.get(("MVP", j), {})
        results.append({"J": j, "tasks": len(common), "auto": float(np.mean([auto[t]["accuracy"] for t in common])), "best_peer": best,
                        "peer": float(np.mean([present[best][t]["accuracy"] for t in common])), "difference": float(np.mean(d)),
                        "se": float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None, "ahead": int(sum(x > 0 for x in d))})
        table.append([j, len(common), mean_se([auto[t]["accuracy"] for t in common]),
                      mean_se([mvp[t]["accuracy"] for t in common]) if all(t in mvp for t in common) else "–",
                      *[mean_se([cell[(p, j)][t]["accuracy"] for t in common]) if p in present else "–" for p in peers],
                      best, f"{100 * np.mean(d):+.2f} ± {100 * results[-1]['se']:.2f}" if len(d) > 1 else f"{100 * np.mean(d):+.2f}",
                      f"{results[-1]['ahead']} of {len(d)}"])
    text = md_table(["J", "tasks", "auto (nearest record)", "MVP", *peers, "best peer at J", "auto − best peer (points, mean ± s.e.)",
                     "auto ahead"], table)
    leep = cell.get(("nearest record (leep)", 20), {})
    if leep:
        ann = cell[("nearest record (ann)", 20)]
        both = [t for t in leep if t in ann]
        same = sum(ann[t]["neighbours"] == leep[t]["neighbours"] for t in both)
        d = [leep[t]["accuracy"] - ann[t]["accuracy"] for t in both]
        text += (f"\n\nThe nearest record at J = 20 found by `ann` and by exhaustive LEEP on {len(both)} tasks (the test tasks and the issue's "
                 f"{', '.join(ISSUE_TASK)}): the same record on {same}; accuracy ann {mean_se([ann[t]['accuracy'] for t in both])}, "
                 f"LEEP {mean_se([leep[t]['accuracy'] for t in both])}, LEEP − ann {100 * np.mean(d):+.2f} ± "
                 f"{100 * np.std(d, ddof=1) / np.sqrt(len(d)):.2f} points; search TFLOPs ann "
                 f"{np.mean([ann[t]['search_tflops'] for t in both]):.4f}, LEEP {np.mean([leep[t]['search_tflops'] for t in both]):.4f}.")
        for t in both:
            if ann[t]["neighbours"] != leep[t]["neighbours"]:
                text += f"\n- {', '.join(ann[t]['classes'])}: ann {100 * ann[t]['accuracy']:.1f}%, LEEP {100 * leep[t]['accuracy']:.1f}%"
    text += budget_notes([r for r in rows if r["task"] in tasks and r["family"] in ("nearest record", "MVP", "IFP", *peers)])
    save("auto_budget", {"budgets": results, "rows": rows}, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)
    r = sub.add_parser("run")
    r.add_argument("--nearest", type=int, nargs="*", default=(), help="J of the nearest record (what auto runs)")
    r.add_argument("--mvp", type=int, nargs="*", default=(), help="J of MVP and random pruning")
    r.add_argument("--peer-iterations", type=int, nargs="*", default=(), help="J of each Torch-Pruning pipeline")
    r.add_argument("--peers", nargs="*", default=get_profile("cpu").peers)
    r.add_argument("--tasks", type=int, default=20)
    r.add_argument("--leep", action="store_true")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--out", default=OUT)
    p = sub.add_parser("report")
    p.add_argument("rows", nargs="+")
    args = ap.parse_args()
    run(args) if args.stage == "run" else report(args)


if __name__ == "__main__":
    main()
