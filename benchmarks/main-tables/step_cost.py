"""Training-step time and FLOPs of the CIFAR ResNet-18 at widths 1.0, 0.5, 0.25 and of a 10%-channel
sub-network (r = 0.9 of width 1.0), batch 128, on this machine.

    python benchmarks/main-tables/step_cost.py [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from metavote.models import cifar_resnet18, count_parameters
from metavote.pruning import SubNetwork, extract, target_widths
from metavote.training import set_threads, step_flops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import save, train_step_seconds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    models = {f"width {w}": cifar_resnet18(w).train() for w in (1.0, 0.5, 0.25)}
    full = cifar_resnet18(1.0)
    groups = full.unit_groups()
    rng = np.random.default_rng(0)
    subnet = SubNetwork({g.name: rng.choice(g.size, n, replace=False) for g, n in zip(groups, target_widths(groups, 0.9).values())},
                        {g.name: g.size for g in groups})
    models["10% channels (r=0.9 of width 1.0)"] = extract(full, subnet).train()
    rows = []
    for name, model in models.items():
        secs = train_step_seconds(model, args.batch, args.steps)
        gflops = step_flops(model, args.batch) / 1e9
        rows.append({"model": name, "parameters": count_parameters(model), "step_seconds": secs, "step_gflops": gflops})
    table = "| model | parameters | train step (s) | train-step GFLOP |\n|---|---:|---:|---:|\n" + "\n".join(
        f"| {r['model']} | {r['parameters']:,} | {r['step_seconds']:.3f} | {r['step_gflops']:.1f} |" for r in rows)
    save("step_cost", rows, table)


if __name__ == "__main__":
    main()
