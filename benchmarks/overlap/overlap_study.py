"""The overlap study on a zoo for each similarity measure: figures to docs/figures/, numbers to
benchmarks/overlap/results/overlap_study.*. Prints the mean over layers of IoU(group 1) - IoU(group 5)
and the same for the first and second half of the layers (does the gap widen with depth?).

    python benchmarks/overlap/overlap_study.py --zoo runs/zoo-cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from metavote.similarity import make_similarity
from metavote.study import overlap_study, similarity_matrix, write_overlap
from metavote.training import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import FIGURES, save, zoo_context  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    set_threads(args.threads)
    dataset, backbone, zoo, records = zoo_context(args.zoo)
    rows = []
    for metric, rule in (("leep", "best_match"), ("wordnet", "best_match"), ("wordnet", "mean_pairs"), ("embedding", "best_match")):
        name = metric if rule == "best_match" else f"{metric}-{rule}"
        t0 = time.perf_counter()
        sim = similarity_matrix(zoo, records, dataset, make_similarity(metric, rule, backbone, dataset))
        result = overlap_study(zoo, dataset, sim, name, 5, records)
        write_overlap(result, FIGURES)
        half = len(result.layers) // 2
        rows.append({"similarity": name, "tasks": result.targets, "gap_mean": float(result.gap.mean()),
                     "gap_first_half": float(result.gap[:half].mean()), "gap_second_half": float(result.gap[half:].mean()),
                     "iou_group1": float(result.iou[0].mean()), "iou_group5": float(result.iou[-1].mean()),
                     "chance": float(result.chance.mean()), "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    table = ("| similarity | tasks | IoU group 1 | IoU group 5 | chance | gap (mean over layers) | gap, first half of layers | gap, second half | seconds |\n"
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(
                 f"| {r['similarity']} | {r['tasks']} | {r['iou_group1']:.3f} | {r['iou_group5']:.3f} | {r['chance']:.3f} | "
                 f"{r['gap_mean']:.3f} | {r['gap_first_half']:.3f} | {r['gap_second_half']:.3f} | {r['seconds']:.0f} |" for r in rows))
    save("overlap_study", rows, table)


if __name__ == "__main__":
    main()
