"""Zoo-build throughput (tasks per hour) on this machine with 1 and 2 local worker processes and
with the Ray executor (a local Ray instance, 2 CPUs), CPU profile, fresh zoos in a temp folder.

    python benchmarks/builders/zoo_throughput.py [--tasks 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from metavote.data import load_dataset, sample_tasks
from metavote.models import locate_backbone
from metavote.methods import create_method
from metavote.profiles import get_profile
from metavote.zoo import build_zoo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    dataset = load_dataset("cifar100")
    tasks = sample_tasks(dataset, 5, args.tasks, seed=args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, workers, executor in (("local, 1 worker", 1, "local"), ("local, 2 workers", 2, "local"), ("ray, 2 CPUs", 2, "ray")):
            report = build_zoo(Path(tmp) / name.replace(" ", "").replace(",", "_"), tasks, locate_backbone(), create_method("ifp", **get_profile("cpu").settings("ifp")),
                               workers=workers, executor=executor, progress=False)
            assert not report.failed, report.failed
            rows.append({"executor": name, "tasks": len(report.done), "seconds": report.seconds,
                         "tasks_per_hour": 3600 * len(report.done) / report.seconds})
            print(rows[-1], flush=True)
    table = "| executor | tasks | seconds | tasks / hour |\n|---|---:|---:|---:|\n" + "\n".join(
        f"| {r['executor']} | {r['tasks']} | {r['seconds']:.0f} | {r['tasks_per_hour']:.0f} |" for r in rows)
    save("zoo_throughput", rows, table)


if __name__ == "__main__":
    main()
