"""Neighbour search in a zoo: exhaustive LEEP ranking against embedding pre-selection + LEEP.

For each of --targets new 5-way tasks (disjoint from the zoo's), rank the whole zoo by LEEP, then
pre-select the top --candidates by the cheap backbone embedding and rank only those by LEEP.
Reports seconds per query for both and the agreement of the top-3 (|top3 ∩ top3_exhaustive| / 3).
The embedding's class means are computed once for the zoo's dataset (reported as a one-off).

    python benchmarks/search/similarity_search.py --zoo runs/zoo-cpu [--targets 10] [--candidates 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from metavote.data import sample_tasks
from metavote.similarity import EmbeddingSimilarity, LEEPSimilarity, nearest
from metavote.training import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import save, zoo_context  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--targets", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    set_threads(args.threads)
    dataset, backbone, zoo, records = zoo_context(args.zoo)
    targets = sample_tasks(dataset, 5, args.targets, seed=args.seed, exclude=[r.task for r in records])
    leep, embedding = LEEPSimilarity(), EmbeddingSimilarity(backbone, dataset)
    t0 = time.perf_counter()
    embedding.source_means(dataset.classes)
    index_seconds = time.perf_counter() - t0
    rows = []
    for task in targets:
        data = dataset.load_task(task)
        t0 = time.perf_counter()
        full = nearest(zoo, data, 3, leep, records=records)
        t_full = time.perf_counter() - t0
        t0 = time.perf_counter()
        fast = nearest(zoo, data, 3, leep, preselect=embedding, candidates=args.candidates, records=records)
        t_fast = time.perf_counter() - t0
        agree = len({r.record_id for r, _ in full} & {r.record_id for r, _ in fast}) / 3
        rows.append({"task": str(task), "exhaustive_seconds": t_full, "preselect_seconds": t_fast, "top3_agreement": agree})
        print(rows[-1], flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("exhaustive_seconds", "preselect_seconds", "top3_agreement")}
    table = ("| zoo records | query | seconds per target task | top-3 agreement with exhaustive |\n|---:|---|---:|---:|\n"
             f"| {len(records)} | LEEP, exhaustive | {mean['exhaustive_seconds']:.1f} | 1.00 |\n"
             f"| {len(records)} | embedding top-{args.candidates}, then LEEP | {mean['preselect_seconds']:.1f} | {mean['top3_agreement']:.2f} |\n\n"
             f"{len(rows)} target tasks; the embedding's class means for all {dataset.num_classes} classes took {index_seconds:.1f} s once.")
    save("similarity_search", {"per_target": rows, "mean": mean, "index_seconds": index_seconds}, table)


if __name__ == "__main__":
    main()
