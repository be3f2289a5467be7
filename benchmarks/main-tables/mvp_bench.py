"""MVP's main table and ablations on a zoo, checked against the bars of the MVP issue.

Runs `metavote bench` (MVP at J, IFP at J and 10·J, random at J on --tasks test tasks disjoint
from the zoo) and the ablations named by --ablations (each on --ablation-tasks tasks), resuming
from runs/bench and runs/ablations. Figures go to docs/figures/, numbers to
benchmarks/main-tables/results/mvp_bench.*, with a verdict for each bar:

- MVP at J within 1 point of IFP at 10·J (or better);
- at least 30x fewer training FLOPs than that IFP (the wall-time ratio beside it);
- random pruning at J at least 25 points below MVP;
- MVP with group-1 neighbours clearly above group-5 (LEEP and WordNet), from the groups ablation.

    python benchmarks/main-tables/mvp_bench.py --zoo runs/zoo-cpu [--tasks 20] [--ablations groups,iterations,neighbours,task-size]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from metavote.bench import summarize
from metavote.experiments import context, run_ablation, run_bench
from metavote.profiles import get_profile
from metavote.training import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import FIGURES, save  # noqa: E402


def _by(summary: list[dict], prefix: str) -> dict:
    return next(s for s in summary if s["method"].startswith(prefix))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--ablations", default="groups,iterations,neighbours,task-size", help="comma-separated; '' for none")
    ap.add_argument("--ablation-tasks", type=int, default=10)
    ap.add_argument("--out", default="runs")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    set_threads(args.threads)
    ctx = context(args.zoo)
    t0 = time.perf_counter()
    rows, table = run_bench(ctx, args.profile, args.tasks, out=Path(args.out) / "bench")
    bench_minutes = (time.perf_counter() - t0) / 60
    summary = summarize(rows)
    j = get_profile(args.profile).iterations
    mvp, ifp10, rnd = _by(summary, "MVP"), _by(summary, f"IFP (J={10 * j})"), _by(summary, "random")
    gap = 100 * (ifp10["accuracy_mean"] - mvp["accuracy_mean"])
    flops_ratio = ifp10["tflops"] / mvp["tflops"]
    wall_ratio = ifp10["seconds"] / mvp["seconds"]
    wall_ratio_search = ifp10["seconds"] / (mvp["seconds"] + mvp["search_seconds"])
    bars = [
        ("MVP at J within 1 point of IFP at 10·J", f"{100 * mvp['accuracy_mean']:.2f} vs {100 * ifp10['accuracy_mean']:.2f} (gap {gap:+.2f})", gap <= 1.0),
        ("≥ 30x fewer training FLOPs than IFP at 10·J", f"{flops_ratio:.1f}x (wall time {wall_ratio:.1f}x; {wall_ratio_search:.1f}x with the LEEP search)", flops_ratio >= 30),
        ("random at J ≥ 25 points below MVP", f"{100 * (mvp['accuracy_mean'] - rnd['accuracy_mean']):.2f} points below", mvp["accuracy_mean"] - rnd["accuracy_mean"] >= 0.25),
    ]
    sections = [f"### Main table\n\n{table}"]
    FIGURES.mkdir(parents=True, exist_ok=True)
    results = {"summary": summary, "bench_minutes": bench_minutes, "ablations": {}}
    for name in [a for a in args.ablations.split(",") if a]:
        t0 = time.perf_counter()
        ab_rows, ab_table, figure = run_ablation(ctx, name, args.profile, args.ablation_tasks, out=Path(args.out) / "ablations")
        minutes = (time.perf_counter() - t0) / 60
        shutil.copy(figure, FIGURES / f"ablation_{name}.png")
        results["ablations"][name] = {"summary": summarize(ab_rows), "minutes": minutes}
        sections.append(f"### Ablation: {name}\n\n![{name}](../../../docs/figures/ablation_{name}.png)\n\n{ab_table}")
        if name == "groups":
            for sim in ("leep", "wordnet"):
                acc = {g: np.mean([r["accuracy"] for r in ab_rows if r["method"] == f"{sim} group {g}"]) for g in (1, 5)}
                diff = 100 * (acc[1] - acc[5])
                bars.append((f"MVP group 1 clearly above group 5 ({sim})", f"{100 * acc[1]:.2f} vs {100 * acc[5]:.2f} ({diff:+.2f} points)", bool(diff >= 3)))
    verdicts = "| bar | measured | met |\n|---|---|---|\n" + "\n".join(f"| {b} | {m} | {'yes' if ok else '**no**'} |" for b, m, ok in bars)
    results["bars"] = [{"bar": b, "measured": m, "met": bool(ok)} for b, m, ok in bars]
    save("mvp_bench", results, verdicts + "\n\n" + "\n\n".join(sections))


if __name__ == "__main__":
    main()
