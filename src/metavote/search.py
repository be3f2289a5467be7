"""Neighbour search that stays cheap as a zoo grows.

Exhaustive LEEP runs every record's model over the target's images: its cost grows with the zoo
(over 100 records, 5.6x MVP's whole training at J = 20). :class:`ZooSearch` instead

1. keeps a **task embedding** per record: the normalised mean of the record's class means of
   backbone features (:class:`TaskEmbedder`), computed once per record and stored beside the zoo
   (:class:`EmbeddingStore`; a read-only zoo's go to the user's cache);
2. keeps an **approximate-nearest-neighbour index** over them (:class:`VectorIndex`, faiss: exact
   inner product up to :data:`EXACT_LIMIT` records, HNSW above), saved next to the embeddings and
   rebuilt when it is stale or damaged;
3. embeds the target from a few images per class (one backbone pass), takes the index's top
   ``candidates`` and re-ranks only those by LEEP on a few images per class.

Its defaults were chosen on validation tasks against exhaustive LEEP (docs/benchmarks/search.md, "Search
that stays cheap"). Every forward pass of a query is charged to ``costs``; building embeddings for
the zoo's records is a one-off cost of the zoo, like building it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from .data import ImageDataset, TaskData, load_dataset
from .errors import MetavoteError
from .models import Backbone
from .similarity import LEEPSimilarity, SimilarityError, class_means, target_sample
from .training import Costs
from .zoo import Zoo, ZooRecord

EXACT_LIMIT = 20_000
"""Up to this many records the index is exact (faiss ``IndexFlatIP``); above, HNSW."""
RECORD_IMAGES = 50
"""Training images per class behind a record's stored embedding (a one-off cost per record)."""
STORE = "search.sqlite"
INDEX_FILE = "search.faiss"


class SearchError(MetavoteError):
    """The search index cannot be used: embeddings of another dimension, no faiss..."""


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise SearchError("the neighbour search needs faiss: pip install faiss-cpu") from e
    return faiss


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- embeddings


def task_vector(means: torch.Tensor | np.ndarray) -> np.ndarray:
    """A task's embedding from its class means: their normalised mean (D,)."""
    return normalise(np.asarray(means, dtype=np.float32).mean(0))


class TaskEmbedder:
    """Task embeddings from a backbone: per-class mean features, averaged over the task's classes.

    A zoo record's embedding uses :data:`RECORD_IMAGES` training images per class of its task
    (class means are cached per dataset and class, so records sharing classes share the work);
    a target's uses the first ``images`` per class of its training split (charged to ``costs``).
    """

    def __init__(self, backbone: Backbone, fingerprint: str) -> None:
        self.backbone, self.fingerprint = backbone, fingerprint
        self._means: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def key(self) -> str:
        """What the stored embeddings depend on: the backbone and the images behind them."""
        return f"{self.fingerprint[:16]}:mean-of-class-means:{RECORD_IMAGES}"

    def records(self, records: Sequence[ZooRecord], datasets: dict[str, ImageDataset]) -> np.ndarray:
        """The embeddings of ``records`` (tasks of the named ``datasets``), (n, D)."""
        for name in sorted({r.task.dataset for r in records}):
            todo = sorted({c for r in records if r.task.dataset == name for c in r.task.classes} - {c for d, c in self._means if d == name})
            if todo:
                sub = datasets[name].subset(todo, max_train_per_class=RECORD_IMAGES)
                for c, m in zip(todo, class_means(self.backbone, sub.train_images, sub.train_labels, len(todo))):
                    self._means[(name, c)] = m
        return np.stack([task_vector(torch.stack([self._means[(r.task.dataset, c)] for c in r.task.classes])) for r in records])

    def target(self, target: TaskData, images: int, costs: Costs | None = None) -> np.ndarray:
        """The target task's embedding from ``images`` training images per class."""
        x, y = target_sample(target, images)
        if costs is not None:
            costs.add_steps(self.backbone, 1, len(x), backward=False, training=False)
        return task_vector(class_means(self.backbone, x, y, target.task.n_way))


class EmbeddingStore:
    """Record embeddings in an SQLite file: one row per (record, embedder key), valid while the
    record's file checksum is the one it was computed for."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout = 60000")
            self._conn.execute("CREATE TABLE IF NOT EXISTS embeddings (record_id TEXT NOT NULL, key TEXT NOT NULL, sha256 TEXT NOT NULL, "
                               "dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (record_id, key))")
        except sqlite3.DatabaseError as e:
            raise SearchError(f"{self.path} is not a readable embedding store ({e}); delete it to recompute the embeddings") from e

    def get(self, key: str, dim: int | None = None) -> dict[str, tuple[str, np.ndarray]]:
        """record id -> (sha256, vector) for ``key``; ``dim`` (when known) is checked."""
        out = {}
        for rid, sha, d, blob in self._conn.execute("SELECT record_id, sha256, dim, vector FROM embeddings WHERE key = ?", (key,)):
            if dim is not None and d != dim:
                raise SearchError(f"the embeddings in {self.path} are of dimension {d}, the backbone gives {dim}; "
                                  "delete the file to recompute them")
            out[rid] = (sha, np.frombuffer(blob, dtype=np.float32))
        return out

    def put(self, key: str, rows: Iterable[tuple[str, str, np.ndarray]]) -> None:
        """Store ``(record id, sha256, vector)`` rows in one transaction."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)",
                                   ((rid, key, sha, len(v), np.asarray(v, np.float32).tobytes()) for rid, sha, v in rows))

    def close(self) -> None:
        self._conn.close()


# ----------------------------------------------------------------------------- the index


class VectorIndex:
    """Inner-product nearest neighbours over unit vectors with faiss: exact (``IndexFlatIP``) up to
    :data:`EXACT_LIMIT` vectors, HNSW (``M`` links, ``ef_search`` at query time) above.

    :meth:`build` saves it to ``path`` with a sidecar ``<path>.ids.json`` holding its ids and a
    ``stamp`` (what it was built from: the embedder and the zoo's version), so :meth:`open`
    needs neither the zoo's rows nor the embeddings; a stale or unreadable file is rebuilt."""

    def __init__(self, ids: Sequence[str], index, kind: str, ef_search: int = 128) -> None:
        self.ids, self.index, self.kind = list(ids), index, kind
        if kind == "hnsw":
            self.index.hnsw.efSearch = ef_search

    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, path: str | os.PathLike | None = None, stamp: str = "",
              m: int = 32, ef_search: int = 128) -> VectorIndex:
        faiss = _faiss()
        vectors = np.ascontiguousarray(normalise(vectors))
        kind = "exact" if len(ids) <= EXACT_LIMIT else "hnsw"
        index = faiss.IndexFlatIP(vectors.shape[1]) if kind == "exact" else faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.add(vectors)
        out = cls(ids, index, kind, ef_search)
        if path is not None:
            out._save(Path(path), stamp)
        return out

    @classmethod
    def open(cls, path: str | os.PathLike, stamp: str, dim: int | None = None, ef_search: int = 128) -> VectorIndex | None:
        """The index saved at ``path`` if it was built from ``stamp``, reads back whole and holds
        vectors of dimension ``dim`` (when given), else None."""
        path = Path(path)
        sidecar = path.with_name(path.name + ".ids.json")
        try:
            saved = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return None
        if saved.get("stamp") != stamp or not path.exists():
            return None
        try:
            index = _faiss().read_index(str(path))
        except RuntimeError as e:
            warnings.warn(f"search index {path} is unreadable ({str(e).splitlines()[0][:120]}); rebuilding it", stacklevel=3)
            return None
        if index.ntotal != len(saved["ids"]) or (dim is not None and index.d != dim):
            return None
        return cls(saved["ids"], index, saved["kind"], ef_search)

    def _save(self, path: Path, stamp: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        for file, write in ((path, lambda tmp: _faiss().write_index(self.index, str(tmp))),
                            (path.with_name(path.name + ".ids.json"),
                             lambda tmp: tmp.write_text(json.dumps({"stamp": stamp, "kind": self.kind, "ids": self.ids})))):
            tmp = file.with_name(f".{file.name}.tmp")
            write(tmp)
            os.replace(tmp, file)

    def __len__(self) -> int:
        return len(self.ids)

    def query(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest ids to ``vector`` by inner product, best first."""
        k = min(k, len(self.ids))
        if k == 0:
            return []
        scores, idx = self.index.search(normalise(vector)[None], k)
        return [(self.ids[i], float(s)) for i, s in zip(idx[0], scores[0]) if i >= 0]


# ----------------------------------------------------------------------------- the search


class ZooSearch:
    """The nearest zoo records to a target task: ANN pre-selection on stored task embeddings, then
    LEEP on the candidates only.

    ``candidates``: records re-ranked by LEEP; ``embed_images`` / ``leep_images``: training
    images per target class for the target's embedding and for LEEP. ``dataset``: the dataset of
    the zoo's tasks (others the zoo names are loaded as it recorded them).
    """

    name = "ann"

    def __init__(self, zoo: Zoo, backbone: Backbone, dataset: ImageDataset | None = None, candidates: int = 20,
                 embed_images: int = 2, leep_images: int = 5) -> None:
        if candidates < 1 or embed_images < 1 or leep_images < 1:
            raise SimilarityError("candidates, embed_images and leep_images must be >= 1")
        self.zoo, self.backbone = zoo, backbone
        self.candidates, self.embed_images, self.leep_images = candidates, embed_images, leep_images
        self.embedder = TaskEmbedder(backbone, zoo.fingerprint)
        self._datasets = {dataset.name: dataset} if dataset is not None else {}
        self._index: VectorIndex | None = None
        self._version: tuple | None = None
        self._store: EmbeddingStore | None = None

    @property
    def store(self) -> EmbeddingStore:
        if self._store is None:
            self._store = EmbeddingStore(self.zoo.cache_dir / STORE)
        return self._store

    def _dataset(self, name: str) -> ImageDataset:
        if name not in self._datasets:
            source, root = self.zoo.dataset_source(name)
            self._datasets[name] = load_dataset(source, root).resized(self.backbone.input_size)
        return self._datasets[name]

    def embeddings(self, records: Sequence[ZooRecord]) -> np.ndarray:
        """The stored embeddings of ``records``, computing (and storing) those missing or stale."""
        stored = self.store.get(self.embedder.key, self.backbone.num_features)
        missing = [r for r in records if r.record_id not in stored or stored[r.record_id][0] != r.sha256]
        if missing:
            vectors = self.embedder.records(missing, {n: self._dataset(n) for n in {r.task.dataset for r in missing}})
            self.store.put(self.embedder.key, [(r.record_id, r.sha256 or "", v) for r, v in zip(missing, vectors)])
            stored |= {r.record_id: (r.sha256, v) for r, v in zip(missing, vectors)}
        return np.stack([stored[r.record_id][1] for r in records]) if records else np.zeros((0, 0), np.float32)

    def index(self) -> VectorIndex:
        """The ANN index over every ok record of the zoo (built or refreshed on first use)."""
        version = self.zoo.version()
        if self._index is None or self._version != version:
            path, stamp = self.zoo.cache_dir / INDEX_FILE, json.dumps([self.embedder.key, version])
            self._index = VectorIndex.open(path, stamp, self.backbone.num_features)
            if self._index is None:  # reading every row and embedding is the slow part of a large zoo: only when it changed
                records = self.zoo.records()
                self._index = VectorIndex.build([r.record_id for r in records], self.embeddings(records), path, stamp)
            self._version = version
        return self._index

    def add(self, records: Sequence[ZooRecord]) -> None:
        """Embed new records as they join the zoo (the index follows on the next query)."""
        self.embeddings(records)

    def preselect(self, vector: np.ndarray, allowed: Callable[[str], bool], n: int) -> list[str]:
        """The ``n`` records whose ids pass ``allowed`` nearest to ``vector`` in the index."""
        index = self.index()
        k = n
        while True:
            hits = [rid for rid, _ in index.query(vector, k) if allowed(rid)]
            if len(hits) >= n or k >= len(index):
                return hits[:n]
            k = min(4 * k, len(index))

    def nearest(self, target: TaskData, k: int = 3, records: Sequence[ZooRecord] | None = None, method: str | None = None,
                exclude_target: bool = True, costs: Costs | None = None,
                where: Callable[[ZooRecord], bool] | None = None, every_candidate: bool = False) -> list[tuple[ZooRecord, float]]:
        """The ``k`` records most similar to ``target`` by LEEP among the index's top
        ``candidates``, best first, with their LEEP scores: among ``records``, or else the zoo's
        records of ``method`` (default any) for which ``where(record)`` holds (e.g. a ratio), read
        from the index only as candidates, so the cost of a query does not grow with the zoo beyond the ANN's.
        ``every_candidate``: all the candidates LEEP scored, best first, not only the first ``k``."""
        own = target.task.id if exclude_target else None
        if records is not None:
            pool = {r.record_id: r for r in records if r.task.id != own}
            available, allowed = len(pool), pool.__contains__
        else:
            suffix = f".{method}" if method else ""
            excluded = sum(r.status == "ok" for r in self.zoo.find(own, method)) if own else 0
            available = self.zoo.count(method) - excluded
            read: dict[str, ZooRecord] = {}  # rows ``where`` read, not read again below

            def allowed(rid: str) -> bool:  # ids are <task>.<method>
                if not rid.endswith(suffix) or (own and rid.startswith(f"{own}.")):
                    return False
                if where is None:
                    return True
                read[rid] = self.zoo.get(rid)
                return where(read[rid])
        if available < k:
            raise SimilarityError(f"the zoo has {available} candidate record(s), fewer than the {k} neighbours asked for")
        vector = self.embedder.target(target, self.embed_images, costs)
        ids = self.preselect(vector, allowed, max(self.candidates, k))
        if len(ids) < k:
            raise SimilarityError(f"the zoo has {len(ids)} candidate record(s) of the kind asked, fewer than the {k} neighbours asked for")
        chosen = [pool[rid] for rid in ids] if records is not None else [read.get(rid) or self.zoo.get(rid) for rid in ids]
        scores = LEEPSimilarity(self.leep_images).scores(self.zoo, chosen, target, costs)
        order = np.argsort(-scores, kind="stable")[: len(chosen) if every_candidate else k]
        return [(chosen[i], float(scores[i])) for i in order]

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> ZooSearch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
