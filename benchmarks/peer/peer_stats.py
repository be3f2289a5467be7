"""Paired statistics of a `metavote bench` run with the peer's rows: per method the mean accuracy with its standard
error over tasks, MVP and the nearest record against each Torch-Pruning pipeline and IFP task by task, and the FLOPs
ratio at equal accuracy against the strongest pipeline and against IFP (``metavote.bench.ratio_notes``).

    metavote bench --zoo ../shared/zoos/cifar100-resnet18w0.5-ifp1000 --profile cpu --tasks 20 --no-baselines \\
        --also nearest --out runs/bench-peers
    python benchmarks/peer/peer_stats.py runs/bench-peers/rows.jsonl > benchmarks/peer/results/bench_peers/paired.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import paired  # noqa: E402

from metavote.bench import ratio_notes  # noqa: E402


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    by: dict[str, dict[str, dict]] = {}
    for r in rows:
        by.setdefault(r["method"], {})[r["task"]] = r
    tasks = sorted({r["task"] for r in rows})
    complete = [t for t in tasks if all(t in v for v in by.values())]
    print(f"{len(complete)} tasks with every method\n")
    print("| method | accuracy (%), mean ± s.e. | training TFLOPs | wall s per task |\n|---|---:|---:|---:|")
    for m in by:
        a = np.array([by[m][t]["accuracy"] for t in complete]) * 100
        print(f"| {m} | {a.mean():.2f} ± {a.std(ddof=1) / np.sqrt(len(a)):.2f} | {np.mean([by[m][t]['tflops'] for t in complete]):.3f} | "
              f"{np.mean([by[m][t]['seconds'] for t in complete]):.1f} |")

    def accuracy(m: str) -> dict:
        return {t: by[m][t]["accuracy"] for t in complete}

    peers = [m for m in by if m.startswith("Torch-Pruning")]
    print("\n| zoo method | against | accuracy difference (points), mean ± s.e. |\n|---|---|---:|")
    for m in (m for m in by if m.split(" (")[0] in ("MVP", "nearest record")):
        for other in (*peers, *(k for k in by if k.startswith("IFP"))):
            print(f"| {m} | {other} | {paired(accuracy(m), accuracy(other))} |")
    print()
    for line in ratio_notes(rows):
        print(f"- {line}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", help="the bench's rows.jsonl")
    main(ap.parse_args().rows)
