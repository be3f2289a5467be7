"""`metavote prune` alone and beside a busy process, for each thread setting.

Each run is a fresh `metavote prune --method random --no-save` subprocess (a 5-way CIFAR-100 task,
the CPU profile, J = 20) on the published zoo (read-only), timed by its wall clock. Settings:
the default, `--threads 1`, and the default threads with OpenMP's waiting forced active or passive
(`OMP_WAIT_POLICY`). Neighbours: nothing, a plain busy loop (one process spinning), or a one-thread
zoo build (`zoo build --workers 1 --threads 1` into a temporary folder).

    python benchmarks/busy_machine.py [--zoo ../shared/zoos/cifar100-resnet18w0.5-ifp1000] [--repeats 2]   # from the project root
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from _common import md_table, save

SETTINGS = {
    "default": ([], {}),
    "--threads 1": (["--threads", "1"], {}),
    "OMP_WAIT_POLICY=ACTIVE": ([], {"OMP_WAIT_POLICY": "ACTIVE"}),
    "OMP_WAIT_POLICY=PASSIVE": ([], {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def zoo_build(folder: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "metavote.cli", "zoo", "build", "--zoo", folder, "--profile", "cpu", "--tasks", "50",
                             "--workers", "1", "--threads", "1", "--quiet", "--seed", "99"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def prune_seconds(zoo: str, extra: list[str], env: dict) -> float:
    cmd = [sys.executable, "-m", "metavote.cli", "prune", "--zoo", zoo, "--classes", "apple,bus,forest,lion,rose", "--method", "random",
           "--no-save", "--quiet", *extra]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=os.environ | env)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", default="../shared/zoos/cifar100-resnet18w0.5-ifp1000")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for neighbour in ("nothing", "a busy loop", "a one-thread zoo build"):
            proc = None if neighbour == "nothing" else busy_loop() if neighbour == "a busy loop" else zoo_build(os.path.join(tmp, "zoo"))
            if proc is not None:
                time.sleep(15)  # let the neighbour start its work
            try:
                for name, (extra, env) in SETTINGS.items():
                    times = [prune_seconds(args.zoo, extra, env) for _ in range(args.repeats)]
                    rows.append({"beside": neighbour, "setting": name, "seconds": times})
                    print(neighbour, name, times, flush=True)
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
    table = md_table(["beside", "setting", "prune wall s (median)", "runs"],
                     [[r["beside"], r["setting"], f"{np.median(r['seconds']):.1f}", " ".join(f"{s:.1f}" for s in r["seconds"])] for r in rows])
    save("busy_machine", rows, table)


if __name__ == "__main__":
    main()
