"""`metavote prune` and a short `metavote bench` alone and beside a busy process, for each thread setting.

``--command prune``: each run is a fresh `metavote prune --method random --no-save` subprocess (a
5-way CIFAR-100 task, the CPU profile, J = 20) on the published zoo (read-only), timed by its wall
clock. Settings: the default, `--threads 1`, and the default threads with OpenMP's waiting forced
active or passive (`OMP_WAIT_POLICY`).

``--command bench``: each run is a fresh short bench (`metavote bench --tasks 1 --no-baselines
--iterations 10`: MVP, IFP at 10 and 100 iterations, random, on one test task, into a new
folder). Settings: the default, `--threads 1` and `--threads 2`.

Neighbours: nothing, a plain busy loop (one process spinning), or a one-thread zoo build (`zoo
build --workers 1 --threads 1` into a temporary folder).

    python benchmarks/deployment/busy_machine.py [--command prune|bench] [--zoo ../shared/zoos/cifar100-resnet18w0.5-ifp1000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, save  # noqa: E402

SETTINGS = {
    "prune": {
        "default": ([], {}),
        "--threads 1": (["--threads", "1"], {}),
        "OMP_WAIT_POLICY=ACTIVE": ([], {"OMP_WAIT_POLICY": "ACTIVE"}),
        "OMP_WAIT_POLICY=PASSIVE": ([], {"OMP_WAIT_POLICY": "PASSIVE"}),
    },
    "bench": {"default": ([], {}), "--threads 1": (["--threads", "1"], {}), "--threads 2": (["--threads", "2"], {})},
}


def busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def zoo_build(folder: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "metavote.cli", "zoo", "build", "--zoo", folder, "--profile", "cpu", "--tasks", "50",
                             "--workers", "1", "--threads", "1", "--quiet", "--seed", "99"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_seconds(command: str, zoo: str, extra: list[str], env: dict, scratch: str) -> float:
    """Wall seconds of one fresh `metavote` process running ``command`` (a bench writes its tables under ``scratch``)."""
    if command == "prune":
        cmd = ["prune", "--zoo", zoo, "--classes", "apple,bus,forest,lion,rose", "--method", "random", "--no-save", "--quiet"]
    else:
        cmd = ["bench", "--zoo", zoo, "--tasks", "1", "--no-baselines", "--iterations", "10", "--quiet", "--out", tempfile.mkdtemp(dir=scratch)]
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "metavote.cli", *cmd, *extra], check=True, stdout=subprocess.DEVNULL, env=os.environ | env)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", default="../shared/zoos/cifar100-resnet18w0.5-ifp1000")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--command", choices=sorted(SETTINGS), default="prune")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for neighbour in ("nothing", "a busy loop", "a one-thread zoo build"):
            proc = None if neighbour == "nothing" else busy_loop() if neighbour == "a busy loop" else zoo_build(os.path.join(tmp, "zoo"))
            if proc is not None:
                time.sleep(15)  # let the neighbour start its work
            try:
                for name, (extra, env) in SETTINGS[args.command].items():
                    times = [run_seconds(args.command, args.zoo, extra, env, tmp) for _ in range(args.repeats)]
                    rows.append({"beside": neighbour, "setting": name, "seconds": times})
                    print(neighbour, name, times, flush=True)
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
    table = md_table(["beside", "setting", f"{args.command} wall s (median)", "runs"],
                     [[r["beside"], r["setting"], f"{np.median(r['seconds']):.1f}", " ".join(f"{s:.1f}" for s in r["seconds"])] for r in rows])
    save("busy_machine" if args.command == "prune" else "busy_machine_bench", rows, table)


if __name__ == "__main__":
    main()
