"""IFP per task on the CPU profile (width-0.5 shared backbone, r = 0.8, J = 200, batch 64):
wall time, training FLOPs and test accuracy over N tasks (mean ± std), one process.

    python benchmarks/builders/ifp_profile.py [--tasks 10] [--seed 99]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from metavote.data import load_dataset, sample_tasks
from metavote.models import head_rows_for, load_backbone, locate_backbone
from metavote.methods import create_method
from metavote.training import set_threads
from metavote.profiles import get_profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--importance", default="activation")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    set_threads(args.threads)
    dataset = load_dataset("cifar100")
    backbone, meta = load_backbone(locate_backbone(), dataset=dataset)
    method = create_method("ifp", **get_profile("cpu").settings("ifp"), importance=args.importance)
    params = method.settings()
    rows = []
    for task in sample_tasks(dataset, 5, args.tasks, seed=args.seed):
        r = method.run(backbone, dataset.load_task(task), None, head_rows_for(meta["classes"], task.classes))
        rows.append({"task": str(task), "accuracy": r.accuracy, "tflops": r.costs.tflops, "seconds": r.costs.seconds})
        print(f"{task}: {r.accuracy:.2%}, {r.costs.tflops:.2f} TFLOPs, {r.costs.seconds:.1f} s", flush=True)
    stat = {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))) for k in ("accuracy", "tflops", "seconds")}
    table = ("| IFP, CPU profile | tasks | test accuracy | training TFLOPs | wall time (s) |\n|---|---:|---:|---:|---:|\n"
             f"| {params} | {len(rows)} | {stat['accuracy'][0]:.2%} ± {stat['accuracy'][1]:.2%} | "
             f"{stat['tflops'][0]:.2f} ± {stat['tflops'][1]:.2f} | {stat['seconds'][0]:.1f} ± {stat['seconds'][1]:.1f} |")
    save("ifp_profile", {"per_task": rows, "mean_std": stat, "params": params}, table)


if __name__ == "__main__":
    main()
