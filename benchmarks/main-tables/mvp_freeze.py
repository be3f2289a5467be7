"""MVP with its first blocks frozen while it fine-tunes: cheaper steps, so more of them per FLOP.

MVP at J = 20 fine-tunes on too few images to catch IFP at 10·J (docs/benchmarks/main-tables.md, "Where MVP's gain
comes from"). Its shallow units are the ones that tasks share most, so they may not need training:
with a share ``f`` of the body's blocks frozen (``MVP(freeze=f)``), a step neither updates nor
back-propagates through them, and costs fewer FLOPs. The measure is the FLOPs ratio at equal
accuracy of each variant against the paper's MVP (plain MVP's FLOPs for the variant's accuracy over
the variant's; above 1: the variant is cheaper for the same accuracy), then against IFP.

    python benchmarks/main-tables/mvp_freeze.py validation --zoo runs/zoo-cpu               # choose f (8 tasks, seed 7)
    python benchmarks/main-tables/mvp_freeze.py test --zoo runs/zoo-cpu --freeze F \\
        --out runs/budget-test/budget                                          # once, on the main table's tasks

``test`` resumes the rows of `metavote ablate budget --tasks 20 --seed 1000 --out runs/budget-test`,
so only the variant's rows are new.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from metavote.bench import ablate_budget, bench_tasks, flops_ratio
from metavote.experiments import context
from metavote.profiles import get_profile
from metavote.training import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, save  # noqa: E402


def ratios(rows: list[dict], families: list[str], reference: str) -> list[list]:
    table = []
    for family in families:
        for r in flops_ratio(rows, family, reference):
            bound = r["bound"].replace("=", "")
            table.append([f"{family} J={r['x']}", f"{100 * r['accuracy']:.2f}", f"{r['tflops']:.4f}", f"{bound}{r['reference_tflops']:.4f}",
                          f"{bound}{r['ratio']:.2f}x"])
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["validation", "test"])
    ap.add_argument("--zoo", default="runs/zoo-cpu")
    ap.add_argument("--freeze", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--tasks", type=int)
    ap.add_argument("--out")
    args = ap.parse_args()
    set_threads(2)
    ctx, profile = context(args.zoo), get_profile("cpu")
    variants = {f"MVP (freeze {f:g})": {"freeze": f} for f in args.freeze}
    zoo = f"neighbours from {args.zoo} ({len(ctx.zoo.records(method=ctx.zoo.source_method))} records)"
    if args.stage == "validation":
        tasks = bench_tasks(ctx.dataset, ctx.zoo, args.tasks or 8, seed=7)
        rows = ablate_budget(ctx, tasks, profile, mvp_iterations=(10, 20, 50), conventional_iterations=(), searches=(),
                             mvp_variants=variants, out=args.out or "runs/mvp-freeze")
        plain = {(r["task"], r["x"]): r["accuracy"] for r in rows if r["family"] == "MVP"}
        steps = md_table(["variant", "J", "accuracy (%)", "against MVP at the same J", "tasks ahead", "training TFLOPs"],
                         [[fam, j, f"{100 * np.mean([r['accuracy'] for r in sel]):.2f}",
                           f"{100 * np.mean([r['accuracy'] - plain[(r['task'], j)] for r in sel]):+.2f}",
                           sum(r["accuracy"] > plain[(r["task"], j)] for r in sel), f"{np.mean([r['tflops'] for r in sel]):.4f}"]
                          for fam in ["MVP", *variants] for j in (10, 20, 50)
                          for sel in [[r for r in rows if r["family"] == fam and r["x"] == j]]])
        against = md_table(["variant", "accuracy (%)", "training TFLOPs", "plain MVP needs TFLOPs", "ratio"], ratios(rows, list(variants), "MVP"))
        save("mvp_freeze_validation", rows, f"{len(tasks)} validation tasks (seed 7), CPU profile, {zoo}.\n\n{steps}\n\n"
                                            f"FLOPs ratio at equal accuracy against the paper's MVP:\n\n{against}")
    else:
        tasks = bench_tasks(ctx.dataset, ctx.zoo, args.tasks or 20, seed=1000)
        rows = ablate_budget(ctx, tasks, profile, mvp_variants=variants, out=args.out or "runs/budget-test/budget")
        table = md_table(["MVP", "accuracy (%)", "training TFLOPs", "IFP needs TFLOPs", "ratio"], ratios(rows, ["MVP", *variants], "IFP"))
        save("mvp_freeze_test", [r for r in rows if r["family"] in ("MVP", "IFP", *variants)],
             f"The main table's {len(tasks)} test tasks (seed 1000), CPU profile, {zoo}; FLOPs ratio at equal accuracy against IFP:\n\n{table}")


if __name__ == "__main__":
    main()
