"""Inference of a physically extracted sub-network against its dense backbone, batch 128:
latency ratio and parameter ratio, at the CPU profile (width 0.5, r = 0.8) and the paper's
setting (width 1.0, r = 0.9). The Omega comes from a zoo record when --zoo is given (latency only
depends on the kept widths, which IFP fixes), otherwise from a random choice of the same widths.

    python benchmarks/deployment/inference.py [--zoo runs/zoo-cpu] [--repeats 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from metavote.models import cifar_resnet18, count_parameters
from metavote.pruning import SubNetwork, extract, target_widths
from metavote.training import latency, set_threads
from metavote.zoo import Zoo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for width, ratio in ((0.5, 0.8), (1.0, 0.9), (0.5, 0.9)):
        dense = cifar_resnet18(width, num_classes=5).eval()
        groups = dense.unit_groups()
        source = "random Omega"
        if args.zoo and width == 0.5 and ratio == 0.8:
            with Zoo(args.zoo) as zoo:
                subnet = zoo.subnetwork(zoo.records()[0])
            source = "zoo record"
        else:
            rng = np.random.default_rng(0)
            subnet = SubNetwork({g.name: rng.choice(g.size, n, replace=False) for g, n in zip(groups, target_widths(groups, ratio).values())},
                                {g.name: g.size for g in groups})
        small = extract(dense, subnet).eval()
        t_dense, t_small = latency(dense, args.batch, repeats=args.repeats), latency(small, args.batch, repeats=args.repeats)
        rows.append({"width": width, "ratio": ratio, "omega": source, "dense_ms": t_dense * 1e3, "pruned_ms": t_small * 1e3,
                     "speedup": t_dense / t_small, "parameter_ratio": count_parameters(dense) / count_parameters(small)})
    table = "| backbone | r | Omega | dense (ms/batch) | pruned (ms/batch) | speed-up | parameter ratio |\n|---|---:|---|---:|---:|---:|---:|\n" + "\n".join(
        f"| ResNet-18 w{r['width']:g} | {r['ratio']} | {r['omega']} | {r['dense_ms']:.1f} | {r['pruned_ms']:.2f} | {r['speedup']:.1f}x | {r['parameter_ratio']:.1f}x |" for r in rows)
    save("inference", rows, table)


if __name__ == "__main__":
    main()
