"""Two cheap rankings tried as the search's pre-selection, against exhaustive LEEP (20 validation tasks, seed 7).

For each target: exhaustive LEEP's top 3 (every IFP record over 50 training images per class), then the share of it in
the top C of (a) ``head``: LEEP of the backbone's own 100-way head restricted to each record's 5 classes, on m images per
class; (b) ``proto``: LEEP of a prototype head (cosine to the backbone's class means, temperature 0.05); (c) ``tv``: the
stored task embedding's cosine (ZooSearch's pre-selection), the target embedded from 10 images per class.

    python benchmarks/search/search_proxies.py --zoo runs/zoo-cpu      # from the project root
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from metavote.data import iterate_eval, sample_tasks
from metavote.experiments import context
from metavote.search import ZooSearch, task_vector
from metavote.similarity import class_means, leep, softmax_outputs, target_sample
from metavote.training import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, save  # noqa: E402

CS = (3, 5, 8, 10, 15, 20, 30)


def first(y: np.ndarray, m: int, n: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(y == k)[:m] for k in range(n)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zoo", default="runs/zoo-cpu")
    ap.add_argument("--targets", type=int, default=20)
    args = ap.parse_args()
    set_threads(2)
    ctx = context(args.zoo, device="cpu")
    zoo, bb, ds = ctx.zoo, ctx.backbone, ctx.dataset
    pool = zoo.records(method=zoo.source_method)
    tasks = sample_tasks(ds, 5, args.targets, seed=7, exclude=[r.task for r in zoo.records(status=None)])
    models = [zoo.load(r)[0] for r in pool]
    column = {c: i for i, c in enumerate(ctx.classes)}
    cols = [np.array([column[c] for c in r.task.classes]) for r in pool]
    sub = ds.subset(ds.classes, max_train_per_class=50)
    means = class_means(bb, sub.train_images, sub.train_labels, ds.num_classes)
    with ZooSearch(zoo, bb, ds) as search:
        stored = search.embeddings(pool)
    found: dict[str, list[list[float]]] = {}
    for task in tasks:
        data = ds.load_task(task)
        x, y = target_sample(data, 50)
        yt = torch.as_tensor(y)
        exhaustive = set(np.argsort(-np.array([float(leep(p, yt, 5)) for p in softmax_outputs(models, x)]), kind="stable")[:3])
        with torch.no_grad():
            feats = torch.cat([bb.features(xb) for xb, _ in iterate_eval(x, y)])
            logits, cosine = bb.get_classifier()(feats), torch.nn.functional.normalize(feats, dim=1) @ means.T / 0.05
        orders = {}
        for m in (5, 10, 50):
            pick = first(y, m, 5)
            orders[f"head, {m} images / class"] = [float(leep(logits[pick][:, c].softmax(-1), yt[pick], 5)) for c in cols]
            if m > 5:
                orders[f"proto, {m} images / class"] = [float(leep(cosine[pick][:, c].softmax(-1), yt[pick], 5)) for c in cols]
        pick = first(y, 10, 5)
        orders["task embedding, 10 images / class"] = list(stored @ task_vector(class_means(bb, x[pick], y[pick], 5)))
        for name, scores in orders.items():
            order = np.argsort(-np.array(scores), kind="stable")
            found.setdefault(name, []).append([len(set(order[:c]) & exhaustive) / 3 for c in CS])
    rows = {name: np.mean(v, axis=0).tolist() for name, v in found.items()}
    table = md_table(["ranking", *[f"top {c}" for c in CS]], [[n, *[f"{v:.1%}" for v in vals]] for n, vals in rows.items()])
    save("search_proxies", rows, table + f"\n\nShare of exhaustive LEEP's top 3 among each ranking's top C; {len(tasks)} validation tasks "
         f"(seed 7), {len(pool)} records. Top 3 = the ranking's own top-3 agreement.")


if __name__ == "__main__":
    main()
