"""EfficientNet-Lite0 (ImageNet weights, ``--backbone efficientnet-lite0``): a training step's time and
FLOPs at 96, 128, 160 and 224 px, dense and pruned at r (the kept widths every method prunes to, units
drawn at random: the cost depends on the widths only), on this machine. What the ``lite0-cpu``
profile's image size and budgets are chosen from.

    python benchmarks/real-model/lite0_step_cost.py [--sizes 96 128 160 224] [--batch 64] [--ratio 0.8] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from metavote.models import count_parameters, load_backbone, replace_head
from metavote.pruning import SubNetwork, extract, target_widths
from metavote.training import set_threads, step_flops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import save, train_step_seconds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160, 224])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=0.8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    set_threads(args.threads)
    rows = []
    for size in args.sizes:
        dense, _ = load_backbone("efficientnet-lite0", image_size=size)
        replace_head(dense, 5)
        groups = dense.unit_groups()
        rng = np.random.default_rng(0)
        widths = target_widths(groups, args.ratio)
        subnet = SubNetwork({g.name: np.sort(rng.choice(g.size, widths[g.name], replace=False)) for g in groups}, {g.name: g.size for g in groups})
        for name, model in (("dense", dense), (f"pruned r={args.ratio}", extract(dense, subnet))):
            model.train()
            secs = train_step_seconds(model, args.batch, args.steps, size, 5)
            rows.append({"size": size, "model": name, "parameters": count_parameters(model), "step_seconds": secs,
                         "step_gflops": step_flops(model, args.batch) / 1e9, "batch": args.batch})
            print(rows[-1], flush=True)
    table = (f"| px | model | parameters | train step at batch {args.batch} (s) | train-step GFLOP |\n|---:|---|---:|---:|---:|\n"
             + "\n".join(f"| {r['size']} | {r['model']} | {r['parameters']:,} | {r['step_seconds']:.3f} | {r['step_gflops']:.1f} |" for r in rows))
    save("lite0_step_cost", rows, table)


if __name__ == "__main__":
    main()
