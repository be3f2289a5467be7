"""The neighbour search's defaults, chosen on validation tasks and checked on test tasks.

``--phase sweep`` (validation tasks, seed 7): for every target, every IFP record's softmax on the
first 50 training images per class (exhaustive LEEP's sample) and the backbone's features of the
first 10 per class are computed once; then every setting of the search (target embedding from
``e`` images per class, the ``C`` nearest records by stored task embedding, LEEP on their first
``m`` images per class) is replayed from them: the share of exhaustive LEEP's top 3 it finds and
its FLOPs against MVP's training FLOPs at J = 20 (counted like ``search_tflops``).

``--phase test`` (the bench's test tasks, seed 1000): MVP at the profile's budget with the default
search (``ann``) and with exhaustive LEEP, same seeds: accuracy, search FLOPs and agreement.

    python benchmarks/search/search_defaults.py --zoo runs/zoo-cpu --phase sweep --targets 20
    python benchmarks/search/search_defaults.py --zoo runs/zoo-cpu --phase test --targets 20
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metavote.bench import BenchContext, bench_tasks
from metavote.data import sample_tasks
from metavote.experiments import context
from metavote.methods import create_method
from metavote.profiles import get_profile
from metavote.search import ZooSearch, task_vector
from metavote.similarity import class_means, leep, softmax_outputs, target_sample
from metavote.training import Costs, set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, save  # noqa: E402

EMBED = (1, 2, 3, 5, 10)
CANDIDATES = (3, 4, 5, 6, 8, 10, 12, 16, 20, 30, 50, 100)
LEEP_IMAGES = (5, 10, 20, 50)


def forward_flops(model) -> float:
    c = Costs()
    c.add_steps(model, 1, 1, backward=False, training=False)
    return c.flops


def top3_agreement(a, b) -> float:
    return len(set(a[:3]) & set(b[:3])) / 3


def sweep(ctx: BenchContext, targets: int, seed: int) -> None:
    zoo, backbone, dataset = ctx.zoo, ctx.backbone, ctx.dataset
    pool = zoo.records(method=zoo.source_method)
    tasks = sample_tasks(dataset, 5, targets, seed=seed, exclude=[r.task for r in zoo.records(status=None)])
    search = ZooSearch(zoo, backbone, dataset)
    t0 = time.perf_counter()
    stored = search.embeddings(pool)
    embed_seconds = time.perf_counter() - t0
    models = [zoo.load(r)[0] for r in pool]
    per_image = np.array([forward_flops(m) for m in models])
    dense_image = forward_flops(backbone)
    p = get_profile("cpu")
    mvp = create_method("mvp", **p.settings("mvp"), dataset=dataset)
    cases = []
    for i, task in enumerate(tasks):
        data = dataset.load_task(task)
        images, labels = target_sample(data, 50)
        probs = softmax_outputs(models, images)
        y = torch.as_tensor(labels)
        first = {m: np.concatenate([np.flatnonzero(labels == k)[:m] for k in range(task.n_way)]) for m in LEEP_IMAGES}
        scores = {m: np.array([float(leep(pr[first[m]], y[first[m]], task.n_way)) for pr in probs]) for m in LEEP_IMAGES}
        exhaustive = list(np.argsort(-scores[50], kind="stable")[:3])
        x, yl = target_sample(data, max(EMBED))
        feats_means = {e: class_means(backbone, *_first(x, yl, e, task.n_way), task.n_way) for e in EMBED}
        cases.append((scores, exhaustive, {e: stored @ task_vector(m) for e, m in feats_means.items()}))
        if i == 0:  # MVP's training FLOPs at J = 20 on a validation task (the same for every 5-way task)
            mvp_flops = mvp.run(backbone, data, zoo, ctx.head_rows(task)).costs.flops
        print(f"target {i + 1}/{len(tasks)}", flush=True)
    rows = []
    for e, c, m in itertools.product(EMBED, CANDIDATES, LEEP_IMAGES):
        agree, flops = [], []
        for scores, exhaustive, cos in cases:
            chosen = np.argsort(-cos[e], kind="stable")[:c]
            found = chosen[np.argsort(-scores[m][chosen], kind="stable")[:3]]
            agree.append(top3_agreement(list(found), exhaustive))
            flops.append(5 * e * dense_image + 5 * m * per_image[chosen].sum())
        rows.append({"embed_images": e, "candidates": c, "leep_images": m, "agreement": float(np.mean(agree)),
                     "search_tflops": float(np.mean(flops)) / 1e12, "share_of_mvp": float(np.mean(flops)) / mvp_flops})
    exhaustive_flops = 5 * 50 * per_image.sum()
    recall = {c: float(np.mean([len(set(np.argsort(-cos[10], kind="stable")[:c]) & set(ex)) / 3 for _, ex, cos in cases])) for c in CANDIDATES}
    within = sorted((r for r in rows if r["share_of_mvp"] <= 0.2), key=lambda r: -r["agreement"])  # the FLOPs bar
    ceiling = [r for r in rows if r["candidates"] >= len(pool) and r["embed_images"] == 1]  # LEEP on m images over every record
    show = within[:10] + ceiling
    table = md_table(["embed images / class", "candidates", "LEEP images / class", "top-3 agreement", "search TFLOPs", "of MVP's training FLOPs"],
                     [[r["embed_images"], r["candidates"], r["leep_images"], f"{r['agreement']:.1%}", f"{r['search_tflops']:.4f}",
                       f"{r['share_of_mvp']:.1%}"] for r in show])
    notes = (f"\n\n{len(tasks)} validation tasks (seed {seed}), {len(pool)} records. MVP's training at J = 20: {mvp_flops / 1e12:.4f} TFLOPs; "
             f"exhaustive LEEP (50 images per class over every record): {exhaustive_flops / 1e12:.4f} TFLOPs "
             f"({exhaustive_flops / mvp_flops:.1f}x MVP). Record embeddings computed once in {embed_seconds:.1f} s. "
             f"Recall of exhaustive LEEP's top 3 among the embedding's top C (10 images per class): "
             + ", ".join(f"C={c}: {v:.1%}" for c, v in recall.items())
             + ". First rows: the settings within 20% of MVP's training FLOPs, best agreement first; last rows: LEEP on m images "
             "per class over every record (its agreement with itself on 50 images: the ceiling of any search that uses m images).")
    save("search_sweep", {"rows": rows, "mvp_tflops": mvp_flops / 1e12, "exhaustive_tflops": exhaustive_flops / 1e12,
                          "recall": recall, "embed_seconds": embed_seconds}, table + notes)


def _first(x: np.ndarray, y: np.ndarray, e: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    pick = np.concatenate([np.flatnonzero(y == k)[:e] for k in range(n)])
    return x[pick], y[pick]


def test(ctx: BenchContext, targets: int, seed: int) -> None:
    p = get_profile("cpu")
    tasks = bench_tasks(ctx.dataset, ctx.zoo, targets, seed=seed)
    methods = {s: create_method("mvp", **p.settings("mvp"), similarity=s, dataset=ctx.dataset) for s in ("ann", "leep")}
    methods["nearest"] = create_method("nearest", **p.settings("nearest"), dataset=ctx.dataset)  # the nearest record, ann search
    rows = []
    for i, task in enumerate(tasks):
        data = ctx.dataset.load_task(task)
        row = {"task": task.id}
        for s, m in methods.items():
            r = ctx.run(m, data)
            row |= {f"{s}_accuracy": r.accuracy, f"{s}_search_tflops": r.params["search_tflops"], f"{s}_search_seconds": r.params["search_seconds"],
                    f"{s}_tflops": r.costs.tflops, f"{s}_neighbours": r.params["neighbours"]}
        row["agreement"] = top3_agreement(row["ann_neighbours"], row["leep_neighbours"])
        rows.append(row)
        print(f"task {i + 1}/{len(tasks)}: ann {row['ann_accuracy']:.2%} leep {row['leep_accuracy']:.2%} agreement {row['agreement']:.2f}", flush=True)
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    diff = np.array([r["ann_accuracy"] - r["leep_accuracy"] for r in rows])
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    near = np.array([r["nearest_accuracy"] - r["ann_accuracy"] for r in rows])
    table = md_table(["method and search", "accuracy (%)", "search TFLOPs", "search / MVP training FLOPs", "search seconds", "top-3 agreement with exhaustive"],
                     [[s, f"{100 * mean(f'{s}_accuracy'):.2f}", f"{mean(f'{s}_search_tflops'):.4f}",
                       f"{mean(f'{s}_search_tflops') / mean(f'{s}_tflops'):.1%}", f"{mean(f'{s}_search_seconds'):.2f}",
                       f"{mean('agreement'):.1%}" if s == "ann" else "-"] for s in methods])
    table = table.replace("| ann |", "| MVP, ann (default) |").replace("| leep |", "| MVP, exhaustive LEEP |").replace("| nearest |", "| nearest record, ann |")
    notes = (f"\n\n{len(tasks)} test tasks (seed {seed}), MVP at J = {p.iterations}, r = {p.ratio}. ann - exhaustive: "
             f"{100 * diff.mean():+.2f} ± {100 * se:.2f} points (standard error; ann ahead on {(diff > 0).sum()}, equal on {(diff == 0).sum()}). "
             f"Nearest record - MVP (both ann): {100 * near.mean():+.2f} ± {100 * near.std(ddof=1) / np.sqrt(len(near)):.2f} points "
             f"(nearest ahead on {(near > 0).sum()} of {len(near)}).")
    save("search_test", rows, table + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", required=True, help="a CPU-profile zoo (any path, e.g. a published one)")
    ap.add_argument("--phase", choices=["sweep", "test"], required=True)
    ap.add_argument("--targets", type=int, default=20)
    ap.add_argument("--seed", type=int, help="task seed (default: 7 for the sweep, 1000 for the test, the bench's)")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    set_threads(args.threads)
    ctx = context(args.zoo, device="cpu")
    if args.phase == "sweep":
        sweep(ctx, args.targets, 7 if args.seed is None else args.seed)
    else:
        test(ctx, args.targets, 1000 if args.seed is None else args.seed)


if __name__ == "__main__":
    main()
