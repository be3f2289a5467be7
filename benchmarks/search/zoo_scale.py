"""The zoo and its search at 10 000 and 100 000 records (synthetic), on one machine.

A synthetic zoo has real index rows (5-way CIFAR-100 tasks drawn at random, IFP's metadata) whose
record files are hard links to the records of a real zoo (``--source``; no extra disk), and real
task embeddings: each is what a record of those classes gets (the mean of the backbone's class
means, 50 images per class), so the index sees the structure of a real zoo. Measured per size:

- filling the index (rows in one transaction) and the embeddings;
- building the ANN index (faiss: exact inner product up to 20 000 records, HNSW above) and
  opening it again from its file; its recall of the exact top ``C`` (HNSW only);
- a pre-selection query (median and 95th percentile over 200 targets);
- ``metavote zoo ls`` (a subprocess, output to /dev/null) and reading every row (``Zoo.records``);
- ``prune``'s whole search on a real target, as MVP runs it: the target's embedding, the query,
  reading the candidates' rows and record files and LEEP on them (wall seconds; no other row is read);
- the memory (peak resident set) of the process after each size;
- with ``--libraries``, the ANN libraries side by side on the largest size's vectors: faiss
  (exact and HNSW) and usearch (HNSW) when installed (``pip install usearch``; hnswlib has no
  wheel here and needs a compiler): build seconds, query milliseconds, recall of the exact top 8.

    python benchmarks/search/zoo_scale.py --source runs/zoo-cpu --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from metavote.data import Task
from metavote.experiments import context
from metavote.search import EXACT_LIMIT, ZooSearch, class_means, task_vector
from metavote.training import Costs, set_threads
from metavote.zoo import Zoo, ZooRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, save  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def synthetic_zoo(root: Path, source: Zoo, n: int, classes: list[str], seed: int = 0) -> Zoo:
    """``n`` rows of random 5-way tasks whose files are hard links to ``source``'s records."""
    shutil.rmtree(root, ignore_errors=True)
    zoo = Zoo(root, {"fingerprint": source.fingerprint, "config": source.model_config, "arch": source.model_config["arch"],
                     "dataset": source.meta.get("dataset")})
    zoo.set_source_method(source.source_method)
    zoo.note_dataset("cifar100", "cifar100")
    real = source.records()
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    while len(rows) < n:
        task = Task("cifar100", tuple(classes[i] for i in sorted(rng.choice(len(classes), 5, replace=False))))
        if task.id in seen:
            continue
        seen.add(task.id)
        model = real[len(rows) % len(real)]
        file = f"{task.id}.ifp.safetensors"
        (root / "records" / file).hardlink_to(source.record_path(model))
        rows.append(ZooRecord(f"{task.id}.ifp", task, "ifp", model.params, "ok", model.accuracy, model.flops, model.seconds, file,
                              model.sha256, None, time.time() + len(rows) * 1e-6))
    zoo.put_records(rows)
    return zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", required=True, help="a real zoo of the shared backbone (its record files are linked)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--out", default="runs/scale", help="where the synthetic zoos go")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--libraries", action="store_true", help="also compare the ANN libraries on the largest size's vectors")
    args = ap.parse_args()
    set_threads(args.threads)
    ctx = context(args.source, device="cpu")
    dataset = ctx.dataset
    sub = dataset.subset(dataset.classes, max_train_per_class=50)
    means = class_means(ctx.backbone, sub.train_images, sub.train_labels, dataset.num_classes).numpy()
    by_class = dict(zip(dataset.classes, means))
    target = dataset.load_task(dataset.task(["apple", "maple_tree", "oak_tree", "rose", "sunflower"]))
    rng = np.random.default_rng(1)
    queries = [task_vector(means[rng.choice(len(means), 5, replace=False)] + rng.normal(0, 0.02, (5, means.shape[1]))) for _ in range(args.queries)]
    rows = []
    for n in args.sizes:
        root = Path(args.out) / f"zoo-{n}"
        zoo, fill = timed(lambda: synthetic_zoo(root, ctx.zoo, n, dataset.classes))
        records, read = timed(zoo.records)
        search = ZooSearch(zoo, ctx.backbone, dataset)
        vectors = np.stack([task_vector(np.stack([by_class[c] for c in r.task.classes])) for r in records])
        _, embed = timed(lambda: search.store.put(search.embedder.key, [(r.record_id, r.sha256, v) for r, v in zip(records, vectors)]))
        index, build = timed(search.index)
        search.close()
        reopened = ZooSearch(zoo, ctx.backbone, dataset)
        _, reopen = timed(reopened.index)
        allowed = lambda rid: rid.endswith(".ifp")  # noqa: E731  MVP's filter: the zoo's IFP records
        position = {r.record_id: i for i, r in enumerate(records)}
        latencies, recall = [], []
        for q in queries:
            hits, seconds = timed(lambda: reopened.preselect(q, allowed, 8))
            latencies.append(seconds)
            recall.append(len({position[h] for h in hits} & set(np.argsort(-(vectors @ q))[:8])) / 8)
        costs = Costs()
        _, prune_search = timed(lambda: reopened.nearest(target, 3, method="ifp", costs=costs))
        ls = time.perf_counter()
        subprocess.run([sys.executable, "-m", "metavote.cli", "zoo", "ls", "--zoo", str(root)], check=True, stdout=subprocess.DEVNULL)
        ls = time.perf_counter() - ls
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append({"records": n, "index": index.kind, "fill_s": fill, "read_rows_s": read, "store_embeddings_s": embed, "build_index_s": build,
                     "open_index_s": reopen, "query_ms_median": 1e3 * float(np.median(latencies)),
                     "query_ms_p95": 1e3 * float(np.percentile(latencies, 95)), "recall_at_8": float(np.mean(recall)),
                     "zoo_ls_s": ls, "prune_search_s": prune_search, "prune_search_tflops": costs.tflops, "peak_rss_mb": rss,
                     "index_mb": sum(f.stat().st_size for f in zoo.cache_dir.glob("search.faiss*")) / 2**20,
                     "index_sqlite_mb": sum(f.stat().st_size for f in root.glob("index.sqlite*")) / 2**20,
                     "embeddings_mb": (zoo.cache_dir / "search.sqlite").stat().st_size / 2**20})
        reopened.close()
        zoo.close()
        print(rows[-1], flush=True)
    table = md_table(["records", "index", "fill index (s)", "read all rows (s)", "store embeddings (s)", "build ANN (s)", "open ANN (s)",
                      "query median / p95 (ms)", "recall@8 vs exact", "`zoo ls` (s)", "prune's search (s)", "peak RSS (MiB)",
                      "index.sqlite / embeddings / ANN (MiB)"],
                     [[r["records"], r["index"], f"{r['fill_s']:.1f}", f"{r['read_rows_s']:.2f}", f"{r['store_embeddings_s']:.1f}",
                       f"{r['build_index_s']:.1f}", f"{r['open_index_s']:.2f}", f"{r['query_ms_median']:.2f} / {r['query_ms_p95']:.2f}",
                       f"{r['recall_at_8']:.1%}", f"{r['zoo_ls_s']:.1f}", f"{r['prune_search_s']:.2f}", f"{r['peak_rss_mb']:.0f}",
                       f"{r['index_sqlite_mb']:.0f} / {r['embeddings_mb']:.0f} / {r['index_mb']:.0f}"] for r in rows])
    notes = f"\n\nExact index up to {EXACT_LIMIT:,} records, HNSW (M 32, efSearch 128) above; {args.threads} thread(s)."
    if args.libraries:
        libs = compare_libraries(vectors, queries, args.threads)
        notes += "\n\n" + md_table(["library", "index", "build (s)", "query median (ms)", "recall@8 vs exact"],
                                    [[r["library"], r["index"], f"{r['build_s']:.1f}", f"{r['query_ms']:.3f}", f"{r['recall']:.1%}"] for r in libs])
        rows.append({"libraries": libs})
    save("zoo_scale", rows, table + notes)


def compare_libraries(vectors: np.ndarray, queries: list[np.ndarray], threads: int) -> list[dict]:
    """faiss (exact, HNSW) and usearch (HNSW, if installed) on the same unit vectors."""
    import faiss

    faiss.omp_set_num_threads(threads)
    exact = [set(np.argsort(-(vectors @ q))[:8]) for q in queries]
    out = []

    def record(library, kind, build, search):
        found, t = [], time.perf_counter()
        for q in queries:
            found.append(set(search(q)))
        out.append({"library": library, "index": kind, "build_s": build, "query_ms": 1e3 * (time.perf_counter() - t) / len(queries),
                    "recall": float(np.mean([len(f & e) / 8 for f, e in zip(found, exact)]))})

    flat, build = timed(lambda: (lambda i: (i.add(vectors), i)[1])(faiss.IndexFlatIP(vectors.shape[1])))
    record("faiss", "exact (IndexFlatIP)", build, lambda q: flat.search(q[None], 8)[1][0])
    hnsw, build = timed(lambda: (lambda i: (i.add(vectors), i)[1])(faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)))
    hnsw.hnsw.efSearch = 128
    record("faiss", "HNSW (M 32, efSearch 128)", build, lambda q: hnsw.search(q[None], 8)[1][0])
    try:
        from usearch.index import Index
    except ImportError:
        return out
    index = Index(ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=32, expansion_search=128)
    _, build = timed(lambda: index.add(np.arange(len(vectors)), vectors, threads=threads))
    record("usearch", "HNSW (connectivity 32, expansion 128)", build, lambda q: index.search(q, 8, threads=1).keys)
    return out


if __name__ == "__main__":
    main()
