"""Zoo recipe (issue 31, item 3): the published zoo (IFP at J = 1000) against a zoo of the same 20 tasks built by
Torch-Pruning's one-shot magnitude pruning then 1000 steps of the small model. Per zoo: its records' own accuracy and
training TFLOPs (paired by task), how much the records' Omega agree (mean IoU over record pairs, per unit group), and
MVP and the nearest record from each zoo on the main table's 20 test tasks (rows of `metavote ablate zoos`).

    metavote zoo build --zoo runs/zoo-study/tp-magnitude1000 --method tp-magnitude --profile cpu --iterations 1000 \\
        --tasks 20 --seed 0 --workers 1 --threads 1
    metavote ablate zoos --zoo ../shared/zoos/cifar100-resnet18w0.5-ifp1000 --other-zoo runs/zoo-study/tp-magnitude1000 \\
        --tasks 20 --out runs/zoo-study/ablate
    python benchmarks/peer/zoo_recipe.py ../shared/zoos/cifar100-resnet18w0.5-ifp1000 runs/zoo-study/tp-magnitude1000 \\
        runs/zoo-study/ablate/zoos/rows.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, save  # noqa: E402

from metavote.bench import zoo_names  # noqa: E402
from metavote.zoo import Zoo  # noqa: E402


def mean_se(values) -> str:
    a = 100 * np.asarray(values)
    return f"{a.mean():.2f} ± {a.std(ddof=1) / np.sqrt(len(a)):.2f}"


def omega_iou(zoo: Zoo, records) -> dict[str, float]:
    subnets = [zoo.subnetwork(r) for r in records]
    return {g: float(np.mean([len(set(a.kept[g]) & set(b.kept[g])) / len(set(a.kept[g]) | set(b.kept[g]))
                              for a, b in itertools.combinations(subnets, 2)])) for g in subnets[0].kept}


def main(first: str, second: str, rows_path: str) -> None:
    zoos = [Zoo(first, read_only=True), Zoo(second, read_only=True)]
    records = [{r.task.id: r for r in z.records(method=z.source_method)} for z in zoos]
    tasks = sorted(set(records[0]) & set(records[1]))
    rows = [json.loads(line) for line in open(rows_path)]
    labels = dict(zip(dict.fromkeys(r["zoo"] for r in rows), zoo_names(zoos)))  # the rows name the zoos in this order
    for r in rows:
        r["zoo"] = labels[r["zoo"]]
    names = zoo_names(zoos)
    table, results = [], []
    for name, zoo, recs in zip(names, zoos, records):
        iou = omega_iou(zoo, [recs[t] for t in tasks])
        mine = {f: [r["accuracy"] for r in rows if r.get("zoo") == name and r["family"] == f] for f in ("MVP", "nearest record")}
        results.append({"zoo": name, "folder": str(zoo.root), "method": zoo.source_method, "records": len(tasks),
                        "record_accuracy": float(np.mean([recs[t].accuracy for t in tasks])),
                        "record_tflops": float(np.mean([recs[t].flops for t in tasks])) / 1e12, "omega_iou": iou,
                        **{f"{f} accuracy": float(np.mean(v)) for f, v in mine.items() if v}})
        table.append([name, zoo.source_method, len(tasks), mean_se([recs[t].accuracy for t in tasks]), f"{results[-1]['record_tflops']:.2f}",
                      f"{np.mean(list(iou.values())):.3f} ({min(iou.values()):.3f}–{max(iou.values()):.3f})",
                      sum(v > 0.999 for v in iou.values()), *(mean_se(mine[f]) if mine[f] else "–" for f in ("MVP", "nearest record"))])
    d = [records[1][t].accuracy - records[0][t].accuracy for t in tasks]
    text = md_table(["zoo", "pruned by", "records", "records' own accuracy (%)", "TFLOPs per record", "Omega IoU over record pairs, mean "
                     "over groups (min–max)", "groups identical in every record", "MVP J=20 on 20 test tasks (%)", "nearest record J=20 (%)"], table)
    text += f"\n\nRecords' own accuracy, {names[1]} − {names[0]} on the same {len(tasks)} tasks: {mean_se(d)} points ({sum(x > 0 for x in d)} ahead)."
    by = {(r["zoo"], r["family"], r["task"]): r["accuracy"] for r in rows}
    for family in ("MVP", "nearest record"):
        common = sorted({r["task"] for r in rows if r["family"] == family})
        diff = [by[(names[1], family, t)] - by[(names[0], family, t)] for t in common if (names[0], family, t) in by and (names[1], family, t) in by]
        if diff:
            text += f"\n{family} from {names[1]} − from {names[0]}: {mean_se(diff)} points ({sum(x > 0 for x in diff)} of {len(diff)} ahead)."
    save("zoo_recipe", results, text)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", help="the first zoo (the published IFP J = 1000 zoo)")
    ap.add_argument("second", help="the second zoo, of the same tasks")
    ap.add_argument("rows", help="rows.jsonl of `metavote ablate zoos` on the two")
    args = ap.parse_args()
    main(args.first, args.second, args.rows)
