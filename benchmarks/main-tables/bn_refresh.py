"""Does re-estimating BatchNorm statistics after the last step help, and whom? (``Method.refresh_bn``)

On --tasks validation tasks (CIFAR-100 5-way, seed 7: not the bench's test tasks, seed 1000), each
CNN method of the ``cpu`` profile trains once with ``refresh_bn=0``; its accuracy is measured as it
ends (running averages of training) and again after re-estimating the statistics on 5 batches, as
``Method.run`` does by default. Same weights, so the difference is the statistics alone.

    python benchmarks/main-tables/bn_refresh.py --zoo runs/zoo-cpu --tasks 8        # from the project root
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np

from metavote.bench import BenchContext, bench_tasks, main_methods
from metavote.data import load_dataset
from metavote.models import load_backbone, locate_backbone
from metavote.profiles import get_profile
from metavote.training import evaluate, recalibrate_bn, set_threads
from metavote.zoo import Zoo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", help="comma-separated method keys (default: every CNN method of the profile's table)")
    args = ap.parse_args()
    set_threads(args.threads)
    dataset = load_dataset("cifar100")
    backbone, meta = load_backbone(locate_backbone(), dataset=dataset)
    ctx = BenchContext(backbone, meta["classes"], dataset, Zoo(args.zoo))
    profile = get_profile("cpu")
    keys = args.methods.split(",") if args.methods else None
    methods = [m for m in main_methods(profile, dataset) if m.refresh_bn and (keys is None or m.key in keys)]  # the paper's random keeps its own
    rows = []
    for task in bench_tasks(dataset, ctx.zoo, args.tasks, seed=7):
        data = dataset.load_task(task)
        for method in methods:
            r = dataclasses.replace(method, refresh_bn=0).run(backbone, data, ctx.zoo, ctx.head_rows(task))
            refreshed = copy.deepcopy(r.model)
            recalibrate_bn(refreshed, data, method.refresh_bn, method.batch_size, r.params["seed"])
            after = evaluate(refreshed, data.test_images, data.test_labels)
            rows.append({"task": task.id, "method": method.label, "running": r.accuracy, "refreshed": after})
            print(f"{task.id} {method.label:<22} {r.accuracy:.2%} -> {after:.2%}", flush=True)
    lines = ["| method | tasks | running averages (%) | refreshed, 5 batches (%) | gain (points) |", "|---|---|---|---|---|"]
    for label in dict.fromkeys(r["method"] for r in rows):
        a = np.array([r["running"] for r in rows if r["method"] == label]) * 100
        b = np.array([r["refreshed"] for r in rows if r["method"] == label]) * 100
        lines.append(f"| {label} | {len(a)} | {a.mean():.2f} ± {a.std():.2f} | {b.mean():.2f} ± {b.std():.2f} | {(b - a).mean():+.2f} |")
    save("bn_refresh", rows, "\n".join(lines) + f"\n\nZoo: {args.zoo}, {len(ctx.zoo.records(method='ifp'))} IFP records.")


if __name__ == "__main__":
    main()
