"""Builders that share a zoo: throughput of 1 builder x 2 workers against 2 builders x 1 worker
each (started together on one fresh zoo, 1 torch thread per worker in both), and 2 builders where
one is killed with SIGKILL midway. CPU profile (IFP, r 0.8, J 200, batch 64), CIFAR-100 tasks.

Every builder is a process of its own, as two `metavote zoo build` commands would be; each logs
the records it adds, so a task trained twice (a duplicate) would show. Run it with nothing else
on the machine:

    python benchmarks/builders/zoo_builders.py [--tasks 8]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, save  # noqa: E402


def builder(zoo: str, log: str, tasks: int, seed: int, workers: int) -> None:
    """One builder process: a `zoo build` of the CPU profile that logs each record it adds."""
    from metavote.data import load_dataset, sample_tasks
    from metavote.methods import create_method
    from metavote.models import locate_backbone
    from metavote.profiles import get_profile
    from metavote.zoo import build_zoo, store

    add = store.Zoo.add

    def logged_add(self, task, result):
        record = add(self, task, result)
        with open(log, "a") as f:
            f.write(record.record_id + "\n")
        return record

    store.Zoo.add = logged_add  # in this process (workers=1 trains here); the 2-worker run is counted by its report
    dataset = load_dataset("cifar100")
    method = create_method("ifp", **get_profile("cpu").settings("ifp"))
    report = build_zoo(zoo, sample_tasks(dataset, 5, tasks, seed), locate_backbone(), method, workers=workers, threads=1, progress=False)
    if workers > 1:
        Path(log).write_text("".join(rid + "\n" for rid in report.done))


def records(zoo: Path) -> int:
    from metavote.zoo import Zoo

    if not (zoo / "index.sqlite").exists():
        return 0
    with Zoo(zoo) as z:
        return len(z)


def scenario(root: Path, name: str, tasks: int, seed: int, builders: int, workers: int, kill_at: int | None = None) -> dict:
    ctx = multiprocessing.get_context("spawn")
    zoo, logs = root / name, [root / f"{name}.{i}.log" for i in range(builders)]
    start = time.perf_counter()
    procs = [ctx.Process(target=builder, args=(str(zoo), str(log), tasks, seed, workers), daemon=workers == 1) for log in logs]
    for p in procs:
        p.start()
    killed_at = None
    if kill_at is not None:  # SIGKILL the second builder once the zoo holds kill_at records (it is then in a task)
        while records(zoo) < kill_at and procs[1].is_alive():
            time.sleep(0.5)
        os.kill(procs[1].pid, signal.SIGKILL)
        killed_at = time.perf_counter() - start
    for p in procs:
        p.join()
    seconds = time.perf_counter() - start
    trained = [rid for log in logs if log.exists() for rid in log.read_text().split()]
    done = records(zoo)
    row = {"scenario": name, "builders": builders, "workers_each": workers, "tasks": tasks, "records": done, "seconds": seconds,
           "tasks_per_hour": 3600 * done / seconds, "trained": len(trained), "duplicates": len(trained) - len(set(trained)),
           "lost": tasks - done, "killed_after_s": killed_at, "exit_codes": [p.exitcode for p in procs]}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows.append(scenario(root, "1 builder x 2 workers", args.tasks, args.seed, builders=1, workers=2))
        rows.append(scenario(root, "2 builders x 1 worker", args.tasks, args.seed, builders=2, workers=1))
        rows.append(scenario(root, "2 builders x 1 worker, one killed", args.tasks, args.seed, builders=2, workers=1, kill_at=args.tasks // 2))
    table = md_table(["scenario", "records", "minutes", "tasks / hour", "trained", "duplicates", "lost"],
                     [[r["scenario"], f"{r['records']} / {r['tasks']}", f"{r['seconds'] / 60:.1f}", f"{r['tasks_per_hour']:.0f}", r["trained"],
                       r["duplicates"], r["lost"]] for r in rows])
    save("zoo_builders", rows, table)


if __name__ == "__main__":
    main()
