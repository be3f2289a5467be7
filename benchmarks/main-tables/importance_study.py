"""Activation against Taylor importance: two zoos of the same backbone and tasks.

1. The overlap study on the tasks both zoos hold, with the same WordNet similarity for both, so
   the groups hold the same task pairs and only Omega differs: does Taylor importance make the
   kept units more task-specific (lower IoU overall, a wider group 1 - group 5 gap)?
2. `metavote ablate zoos`: MVP at J with LEEP neighbours from each zoo (same tasks).

    python benchmarks/main-tables/importance_study.py --zoo runs/zoo-cpu --other-zoo runs/zoo-taylor [--tasks 8]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from metavote.experiments import context, run_ablation
from metavote.similarity import make_similarity
from metavote.study import overlap_study, similarity_matrix, write_overlap
from metavote.training import set_threads
from metavote.zoo import Zoo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import FIGURES, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", required=True, help="the activation zoo")
    ap.add_argument("--other-zoo", required=True, help="the Taylor zoo")
    ap.add_argument("--tasks", type=int, default=8, help="test tasks of the MVP ablation")
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    set_threads(args.threads)
    ctx = context(args.zoo)
    other = Zoo(args.other_zoo)
    common = {r.task.id for r in ctx.zoo.records(method="ifp")} & {r.task.id for r in other.records(method="ifp")}
    wordnet = make_similarity("wordnet", dataset=ctx.dataset)
    rows = []
    for name, zoo in (("activation", ctx.zoo), ("taylor", other)):
        records = sorted((r for r in zoo.records(method="ifp") if r.task.id in common), key=lambda r: r.task.id)
        sim = similarity_matrix(zoo, records, ctx.dataset, wordnet, progress=False)
        result = overlap_study(zoo, ctx.dataset, sim, f"wordnet-{name}", 5, records)
        write_overlap(result, FIGURES)
        half = len(result.layers) // 2
        rows.append({"zoo": name, "tasks": result.targets, "zoo_accuracy": sum(r.accuracy for r in records) / len(records),
                     "iou_group1": float(result.iou[0].mean()), "iou_group5": float(result.iou[-1].mean()), "chance": float(result.chance.mean()),
                     "gap_mean": float(result.gap.mean()), "gap_first_half": float(result.gap[:half].mean()),
                     "gap_second_half": float(result.gap[half:].mean())})
        print(rows[-1], flush=True)
    t0 = time.perf_counter()
    ab_rows, ab_table, figure = run_ablation(ctx, "zoos", "cpu", args.tasks, out=args.out, other_zoo=args.other_zoo)
    shutil.copy(figure, FIGURES / "ablation_importance.png")
    table = ("| zoo | tasks | zoo accuracy | IoU group 1 | IoU group 5 | chance | gap (mean over layers) | gap, first half | gap, second half |\n"
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(
                 f"| {r['zoo']} | {r['tasks']} | {100 * r['zoo_accuracy']:.1f}% | {r['iou_group1']:.3f} | {r['iou_group5']:.3f} | {r['chance']:.3f} | "
                 f"{r['gap_mean']:.3f} | {r['gap_first_half']:.3f} | {r['gap_second_half']:.3f} |" for r in rows))
    save("importance_study", {"overlap": rows, "mvp": ab_rows, "mvp_minutes": (time.perf_counter() - t0) / 60},
         f"### Overlap (WordNet best-match groups)\n\n{table}\n\n### MVP (J=20) from each zoo\n\n![importance](../../../docs/figures/ablation_importance.png)\n\n{ab_table}")


if __name__ == "__main__":
    main()
