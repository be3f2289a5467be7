"""A zoo for EfficientNet-Lite0 with its ImageNet weights (``--backbone efficientnet-lite0``, the ``lite0-cpu``
profile: 96 px, r = 0.8, its conventional method: Torch-Pruning Taylor at 200 steps, whose records beat IFP's by 13
points on this model for a quarter of the FLOPs; ``--method ifp`` builds the IFP zoo measured first) of CIFAR-100 5-way tasks, 20 of CIFAR-100's 100 classes held out
of every task (seeded), for the unseen check. Resumable: run it again to finish or grow it. Writes each record's
cost (training TFLOPs, seconds), the zoo's size on disk and the held-out classes.

    python benchmarks/real-model/lite0_zoo.py [--zoo runs/zoo-lite0] [--tasks 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import save  # noqa: E402

HELD_OUT_SEED = 2026


def held_out_classes(classes: list[str], count: int = 20, seed: int = HELD_OUT_SEED) -> list[str]:
    """The classes no zoo task uses (the unseen check's), drawn once from a fixed seed."""
    return sorted(np.random.default_rng(seed).choice(classes, count, replace=False).tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo-lite0")
    ap.add_argument("--tasks", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--method", help="the zoo's method (default: the profile's conventional one, tp-taylor)")
    ap.add_argument("--data", help="data root (default: $METAVOTE_DATA, then ../shared/data)")
    args = ap.parse_args()

    from metavote.data import load_dataset, sample_tasks
    from metavote.methods import create_method
    from metavote.profiles import get_profile
    from metavote.zoo import Zoo, build_zoo

    profile = get_profile("lite0-cpu")
    dataset = load_dataset("cifar100", args.data)
    held = held_out_classes(dataset.classes)
    pool = [c for c in dataset.classes if c not in held]
    tasks = sample_tasks(dataset, 5, args.tasks, seed=0, classes=pool)
    key = args.method or profile.upper_bound
    method = create_method(key, **profile.settings(key, iterations=profile.conventional_factor * profile.iterations))
    report = build_zoo(args.zoo, tasks, profile.backbone, method, "cifar100", args.data, workers=args.workers, image_size=profile.image_size)
    with Zoo(args.zoo, read_only=True) as zoo:
        records = [r for r in zoo.records(method=method.key) if r.task.id in {t.id for t in tasks}]
        disk = sum(f.stat().st_size for f in Path(args.zoo).rglob("*") if f.is_file())
    rows = {"tasks": len(records), "failed": len(report.failed), "held_out": held, "profile": profile.name, "method": method.settings(),
            "accuracy_mean": float(np.mean([r.accuracy for r in records])), "accuracy_min": float(np.min([r.accuracy for r in records])),
            "tflops_per_record": float(np.mean([r.flops for r in records])) / 1e12,
            "seconds_per_record": float(np.mean([r.seconds for r in records])), "build_minutes_this_run": report.seconds / 60,
            "disk_bytes": disk, "records": [{"task": r.task.id, "classes": list(r.task.classes), "accuracy": r.accuracy,
                                             "tflops": r.flops / 1e12, "seconds": r.seconds} for r in records]}
    table = (f"| records | accuracy (mean, min) | TFLOPs per record | seconds per record (one worker) | size on disk |\n|---:|---:|---:|---:|---:|\n"
             f"| {rows['tasks']} | {100 * rows['accuracy_mean']:.2f} %, {100 * rows['accuracy_min']:.2f} % | {rows['tflops_per_record']:.2f} | "
             f"{rows['seconds_per_record']:.0f} | {disk / 2**20:.1f} MiB |\n\nheld out of every task: {', '.join(held)}")
    save("lite0_zoo", rows, table)


if __name__ == "__main__":
    main()
