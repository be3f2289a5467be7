"""The main table on EfficientNet-Lite0 with its ImageNet weights (the ``lite0-cpu`` profile, the zoo of
``lite0_zoo.py``), resumable (rows.jsonl per part under ``--out``), in four parts:

- ``seen``: ``--tasks`` test tasks of the zoo's 80 classes (seed 1000, none a zoo task): MVP and the nearest
  record (what ``--method auto`` picks on a zoo pruned at the ratio) at J, random at J, and the strongest
  pipelines, Torch-Pruning Taylor (the zoo's recipe) and magnitude, at J and 10 J; with the FLOPs ratio at
  equal accuracy against the strongest of them.
- ``other``: the weaker pipelines, IFP and Torch-Pruning's iterative pruner at J and 10 J, on the first
  ``--other-tasks`` of those tasks (they cost 5x the others and do not read the zoo).
- ``unseen``: ``--unseen`` tasks of the 20 held-out classes (seed 1001): MVP, the nearest record, Torch-Pruning
  Taylor and magnitude at J and 10 J.
- ``wordnet-head``: the first ``--wordnet-tasks`` seen tasks again with ``head_map="wordnet"`` (a class's ImageNet
  kinds start its head row, the others imprinted), at J, paired with the same rows without it.

    python benchmarks/real-model/lite0_table.py [--zoo runs/zoo-lite0] [--tasks 20] [--out runs/lite0-table]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save  # noqa: E402


def paired(without: list[dict], with_: list[dict]) -> list[dict]:
    """Per method: mean accuracy without and with, and the mean paired difference over the tasks both hold."""
    out = []
    for method in dict.fromkeys(r["method"] for r in with_):
        a = {r["task"]: r["accuracy"] for r in without if r["method"] == method}
        b = {r["task"]: r["accuracy"] for r in with_ if r["method"] == method}
        tasks = sorted(set(a) & set(b))
        diff = np.array([b[t] - a[t] for t in tasks])
        out.append({"method": method, "tasks": len(tasks), "without": float(np.mean([a[t] for t in tasks])),
                    "with": float(np.mean([b[t] for t in tasks])), "difference": float(diff.mean()), "difference_std": float(diff.std()),
                    "better": int((diff > 0).sum()), "worse": int((diff < 0).sum())})
    return out


def omega_overlap(zoo) -> dict:
    """How diverse the zoo's Omega is: the mean pairwise IoU of the records' kept units per group, against random
    draws at the same widths (``chance_iou``), and the share of record pairs that keep a group identically."""
    from metavote.study import chance_iou, iou_matrices

    names, ious, sizes, kept = iou_matrices(zoo, zoo.records())
    pairs = np.triu_indices(ious.shape[1], 1)
    per_pair = ious[:, pairs[0], pairs[1]]  # (groups, pairs)
    return {"records": ious.shape[1], "mean_iou": float(per_pair.mean()),
            "random_iou": float(np.mean([chance_iou(sizes[n], int(kept[l, 0])) for l, n in enumerate(names)])),
            "identical_share": float((per_pair == 1.0).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo-lite0")
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--other-tasks", type=int, default=3)
    ap.add_argument("--unseen", type=int, default=4)
    ap.add_argument("--wordnet-tasks", type=int, default=8)
    ap.add_argument("--out", default="runs/lite0-table")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()

    import dataclasses

    from lite0_zoo import held_out_classes
    from metavote.bench import bench, main_methods, markdown_table, ratio_notes, size_notes, summarize, write_table
    from metavote.bench.harness import profile_method
    from metavote.data import sample_tasks
    from metavote.experiments import context, default_method
    from metavote.profiles import get_profile
    from metavote.training import set_threads

    set_threads(args.threads)
    profile = get_profile("lite0-cpu")
    ctx = context(args.zoo, device="cpu", read_only=True)
    held = held_out_classes(ctx.dataset.classes)
    pool = [c for c in ctx.dataset.classes if c not in held]
    zoo_tasks = [r.task for r in ctx.zoo.records(status=None)]
    seen = sample_tasks(ctx.dataset, 5, args.tasks, seed=1000, exclude=zoo_tasks, classes=pool)
    unseen = sample_tasks(ctx.dataset, 5, args.unseen, seed=1001, classes=held)
    out = Path(args.out)
    j, big = profile.iterations, profile.conventional_factor * profile.iterations
    make = lambda key, **kw: profile_method(profile, key, ctx.dataset, **kw)  # noqa: E731
    strong = [*main_methods(profile, ctx.dataset, also=("nearest",), peers=False), *(make("tp-magnitude", iterations=n) for n in (j, big))]
    weak = [make(key, iterations=n) for key in ("ifp", "tp-iterative") for n in (j, big)]
    unseen_methods = [make("mvp"), make("nearest"), *(make(key, iterations=n) for key in ("tp-taylor", "tp-magnitude") for n in (j, big))]
    cheap = [make("mvp"), make("nearest"), make("tp-taylor", iterations=j), make("tp-magnitude", iterations=j)]

    parts = {"seen": bench(ctx, strong, seen, out / "seen", True),
             "other": bench(ctx, weak, seen[:args.other_tasks], out / "other", True),
             "unseen": bench(ctx, unseen_methods, unseen, out / "unseen", True),
             "wordnet_head": bench(dataclasses.replace(ctx, head_map="wordnet"), cheap, seen[:args.wordnet_tasks], out / "wordnet-head", True)}

    auto, why = default_method(ctx.zoo, profile.ratio)
    titles = {"seen": f"{len(seen)} test tasks of the zoo's 80 classes (5-way, seed 1000, none a zoo task), lite0-cpu: 96 px, r = 0.8, "
                      f"J = {j}, batch 64; `--method auto` picks {auto} ({why})",
              "other": f"the weaker pipelines on the first {args.other_tasks} of those tasks, with the strongest rows of the same tasks",
              "unseen": f"{len(unseen)} tasks of the 20 held-out classes (seed 1001), the same budget",
              "wordnet_head": f"the first {args.wordnet_tasks} test tasks, each class's head row from its ImageNet kinds (WordNet), "
                              "imprinted where it has none"}
    overlap = omega_overlap(ctx.zoo)
    tables, results = [], {"auto_picks": auto, "zoo_omega": overlap, "parts": parts}
    for name, part in parts.items():
        rows = part
        if name == "other":  # beside the strongest rows of the same tasks, so its ratio line compares like with like
            ids = {t.id for t in seen[:args.other_tasks]}
            rows = [r for r in parts["seen"] if r["task"] in ids] + part
        summary = summarize(rows)
        notes = "".join(f"\n\n{line}" for line in (*size_notes(summary), *(ratio_notes(rows) if name != "wordnet_head" else ())))
        write_table(summary, out / name.replace("_", "-"), titles[name], notes=notes)
        tables.append(f"### {titles[name]}\n\n{markdown_table(summary)}{notes}")
    pairs = paired(parts["seen"], parts["wordnet_head"])
    results["wordnet_paired"] = pairs
    lines = ["| method | tasks | without (%) | with the WordNet head (%) | difference (points) | tasks better / worse |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {p['method']} | {p['tasks']} | {100 * p['without']:.2f} | {100 * p['with']:.2f} | {100 * p['difference']:+.2f} ± "
              f"{100 * p['difference_std']:.2f} | {p['better']} / {p['worse']} |" for p in pairs]
    tables.append("### the ImageNet head by WordNet, paired with the same tasks' rows without it\n\n" + "\n".join(lines))
    tables.append(f"the zoo's Omega: mean pairwise IoU {overlap['mean_iou']:.3f} over its {overlap['records']} records (random draws at "
                  f"these widths: {overlap['random_iou']:.3f}); {overlap['identical_share']:.1%} of record pairs keep a group identically")
    save("lite0_table", results, "\n\n".join(tables))


if __name__ == "__main__":
    main()
