"""A CPU ViT zoo built by AHNP (`vit-cpu` profile): its overlap study and a first look at MVP on it.

1. The overlap study (LEEP groups) of the zoo's heads and MLP nodes: IoU of Omega per group,
   by similarity group, against chance; CSV and figures in docs/figures/ (`overlap_vit-leep*`).
2. On --tasks test tasks disjoint from the zoo: MVP at J (neighbours averaged, the paper's rule),
   MVP at J with the pre-trained weights at the voted units (`init="backbone"`: is it the vote or
   the averaging?), AHNP at 10·J, random pruning at J (ours and the paper's variant), all with the
   `vit-cpu` budget.

    metavote zoo build --zoo runs/zoo-vit-cpu --method ahnp --profile vit-cpu \
        --backbone ../shared/pretrained/cifar100_vit_d192_l6_h6.safetensors --tasks 30 --workers 2
    python benchmarks/overlap/vit_zoo_study.py --zoo runs/zoo-vit-cpu --tasks 10     # from the project root
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from metavote.bench import bench, bench_tasks, markdown_table, summarize
from metavote.experiments import context
from metavote.methods import create_method
from metavote.profiles import get_profile
from metavote.similarity import make_similarity
from metavote.study import overlap_study, similarity_matrix, write_overlap
from metavote.training import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import FIGURES, save  # noqa: E402

VIT = Path(__file__).resolve().parents[3] / "shared" / "pretrained" / "cifar100_vit_d192_l6_h6.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo-vit-cpu")
    ap.add_argument("--backbone", default=str(VIT))
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--out", default="runs/vit-study")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    ctx = context(args.zoo, backbone=args.backbone, device="cpu")
    records = ctx.zoo.records(method=ctx.zoo.source_method)

    sim = similarity_matrix(ctx.zoo, records, ctx.dataset, make_similarity("leep"))
    overlap = overlap_study(ctx.zoo, ctx.dataset, sim, "vit-leep", groups=5, records=records)
    write_overlap(overlap, FIGURES)
    per_layer = [{"layer": name, "units": n, "kept": round(k, 1), "group1": float(overlap.iou[0, i]), "group5": float(overlap.iou[-1, i]),
                  "chance": float(overlap.chance[i]), "gap": float(overlap.gap[i])}
                 for i, (name, n, k) in enumerate(zip(overlap.layers, overlap.sizes, overlap.kept))]

    p = get_profile("vit-cpu")
    methods = [create_method("mvp", **p.settings("mvp"), dataset=ctx.dataset),
               create_method("mvp", **p.settings("mvp"), init="backbone"),
               create_method("ahnp", **p.settings("ahnp")),
               create_method("random", **p.settings("random")),
               create_method("random-paper", **p.settings("random-paper"))]
    labels = ["MVP (J=20)", "MVP, pre-trained weights at the voted units (J=20)", "AHNP (J=200)", "random (J=20)", "random (paper) (J=20)"]
    rows = []  # each method benches into its own folder (the two MVP variants share a label), then gets its own name
    tasks = bench_tasks(ctx.dataset, ctx.zoo, args.tasks, seed=1000)
    for method, label in zip(methods, labels):
        for row in bench(ctx, [method], tasks, Path(args.out) / label.split(" (")[0].replace(" ", "_").replace(",", ""), progress=False):
            rows.append(row | {"method": label})
    summary = summarize(rows)
    heads = [r for r in per_layer if r["layer"].endswith("attn")]
    nodes = [r for r in per_layer if r["layer"].endswith("mlp")]
    table = (f"Overlap of {overlap.targets} AHNP zoo tasks (LEEP groups): mean group-1 minus group-5 IoU "
             f"heads {np.mean([r['gap'] for r in heads]):+.3f}, MLP nodes {np.mean([r['gap'] for r in nodes]):+.3f}\n\n"
             "| group | units | kept (mean) | IoU group 1 | IoU group 5 | chance | gap |\n|---|---:|---:|---:|---:|---:|---:|\n"
             + "\n".join(f"| {r['layer']} | {r['units']} | {r['kept']} | {r['group1']:.3f} | {r['group5']:.3f} | {r['chance']:.3f} | {r['gap']:+.3f} |"
                         for r in per_layer)
             + f"\n\n{len(tasks)} test tasks (seed 1000, disjoint from the zoo), vit-cpu budget\n\n{markdown_table(summary)}")
    save("vit_zoo_study", {"overlap": per_layer, "summary": summary, "rows": rows}, table)


if __name__ == "__main__":
    main()
