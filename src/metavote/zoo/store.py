"""The zoo of pruned models: an SQLite index plus one safetensors file per record.

Layout of a zoo folder::

    index.sqlite                 # tables `meta` (backbone fingerprint, model config, datasets), `records`, `claims`
    records/<task id>.<method>.safetensors   # compact weights ("model.*"), Omega ("omega.*", "size.*")

Writes are atomic and safe with several writer processes: a record's file is written to a
temporary name and renamed, *then* its row is inserted in one SQLite transaction (WAL mode,
busy timeout). A crash between the two leaves an orphan file and no row: the zoo stays readable
and the task is simply redone. Each row stores the file's SHA-256, checked on load.

Builders that share a zoo claim a task before training it (:meth:`Zoo.claim`, one transaction):
a claim names its owner, host and pid and holds a lease that the owner's heartbeat renews. A
claim is live until its lease runs out, or at once when its owner was a process of this host that
no longer exists (a killed builder); then another builder may take the task.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import save_file

from ..data import Task
from ..errors import ConfigError, MetavoteError
from ..files import atomic_path, file_digest
from ..models.base import Backbone, create_model
from ..pruning import PruneResult, SubNetwork, TensorIndex, dense_view, shrink

INDEX = "index.sqlite"
DEFAULT_ZOO_METHOD = "ifp"
"""The method whose records make up a zoo's voting pool unless told otherwise (conventional pruning)."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    record_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, dataset TEXT NOT NULL, classes TEXT NOT NULL,
    n_way INTEGER NOT NULL, method TEXT NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL,
    accuracy REAL, flops REAL, seconds REAL, file TEXT, sha256 TEXT, error TEXT, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_task ON records(task_id);
CREATE TABLE IF NOT EXISTS claims (
    record_id TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    started REAL NOT NULL, heartbeat REAL NOT NULL, expires REAL NOT NULL
);
"""


class ZooError(MetavoteError):
    """The folder is not a zoo, holds another backbone's records, or a record is missing or damaged."""


@dataclass
class ZooRecord:
    """One row of the index. ``status`` is ``ok`` or ``failed`` (then ``error`` says why)."""

    record_id: str
    task: Task
    method: str
    params: dict
    status: str
    accuracy: float | None = None
    flops: float | None = None
    seconds: float | None = None
    file: str | None = None
    sha256: str | None = None
    error: str | None = None
    created: float = 0.0

    @property
    def task_id(self) -> str:
        return self.task.id


def record_id(task: Task, method: str) -> str:
    return f"{task.id}.{method}"


@dataclass(frozen=True)
class Claim:
    """A builder's hold on a record it is building: who (``owner``, ``host``, ``pid``), since when,
    its last ``heartbeat`` and when the lease ``expires`` (all Unix times)."""

    record_id: str
    owner: str
    host: str
    pid: int
    started: float
    heartbeat: float
    expires: float

    @property
    def live(self) -> bool:
        """Its lease runs and, when its owner ran on this host, that process still exists."""
        return self.expires > time.time() and not (self.host == socket.gethostname() and not _process_exists(self.pid))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def new_owner() -> str:
    """A builder's owner id: host, pid and a random suffix (a pid may be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


class Zoo:
    """A zoo folder bound to one backbone.

    ``Zoo(root, backbone_meta)`` creates the folder if needed and refuses a zoo made from another
    backbone; ``Zoo(root)`` opens an existing zoo whatever its backbone. Models it loads are put on
    ``device`` (default the CPU; :meth:`to` changes it).
    """

    def __init__(self, root: str | os.PathLike, backbone_meta: dict | None = None, device: str | torch.device = "cpu") -> None:
        self.root = Path(root)
        self.device = torch.device(device)
        self._skeletons: dict[tuple, Backbone] = {}
        index = self.root / INDEX
        if not index.exists():
            if backbone_meta is None:
                raise ZooError(f"{self.root} is not a zoo (no {INDEX}); build one with `metavote zoo build`")
            if self.root.exists() and any(p.name != "records" and not p.name.startswith(INDEX) for p in self.root.iterdir()):
                raise ZooError(f"{self.root} exists, is not empty and is not a zoo; choose a new folder")
        (self.root / "records").mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(index, timeout=60, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout = 60000")
            self._use_wal()
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ZooError(f"{index} is not a readable zoo index ({e})") from e
        self.meta = self._read_meta()
        if backbone_meta is not None:
            config = backbone_meta.get("config") or {"arch": backbone_meta["arch"], "width": float(backbone_meta["width"])}
            wanted = {"fingerprint": backbone_meta["fingerprint"], "arch": config["arch"], "config": config,
                      "dataset": backbone_meta.get("dataset")}
            if not self.meta:
                self._write_meta(wanted)
                self.meta = self._read_meta()
            elif self.meta["fingerprint"] != wanted["fingerprint"]:
                raise ZooError(
                    f"zoo {self.root} was built from backbone {self.meta['fingerprint'][:12]} "
                    f"({self.describe()}), not from the given {wanted['fingerprint'][:12]}; "
                    "use a new zoo folder for a new backbone"
                )

    def _use_wal(self, patience: float = 60.0) -> None:
        """Put the index in WAL mode (it stays so in the file). Switching needs the database to
        itself, and SQLite answers "locked" at once, without its busy timeout, when another
        process opens a new zoo at the same moment: retry for up to ``patience`` seconds."""
        deadline = time.monotonic() + patience
        while True:
            try:
                if self._conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # -- meta
    def _read_meta(self) -> dict:
        return {k: json.loads(v) for k, v in self._conn.execute("SELECT key, value FROM meta")}

    def _write_meta(self, meta: dict) -> None:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for k, v in meta.items():
                self._conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (k, json.dumps(v)))

    def to(self, device: str | torch.device) -> Zoo:
        """Load models onto ``device`` from now on; returns the zoo."""
        self.device = torch.device(device)
        return self

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def model_config(self) -> dict:
        """The backbone's model config (zoos written before configs were stored hold a ResNet's arch and width)."""
        return self.meta.get("config") or {"arch": self.meta["arch"], "width": self.meta["width"]}

    @property
    def source_method(self) -> str:
        """The method whose records make the zoo's voting pool: the one ``build_zoo`` built it with
        (IFP for a CNN zoo, AHNP for a ViT zoo), or :data:`DEFAULT_ZOO_METHOD` for zoos built before it was recorded."""
        return self.meta.get("method") or DEFAULT_ZOO_METHOD

    def set_source_method(self, key: str) -> None:
        """Record the zoo's building method, the first time only."""
        if "method" not in self.meta:
            self._write_meta({"method": key})
            self.meta = self._read_meta()

    @property
    def datasets(self) -> dict[str, dict]:
        """The datasets the zoo's tasks come from, in the order they joined: name -> ``{"source":
        how it was given (a name or a folder path), "path": absolute folder path or None, "data":
        the data root given or None}``. For zoos built before datasets were recorded: the datasets
        their records name, to be found by name under the data roots."""
        recorded = self.meta.get("datasets")
        if recorded:
            return dict(recorded)
        names = [r[0] for r in self._conn.execute("SELECT dataset FROM records GROUP BY dataset ORDER BY MIN(created)")]
        return {name: {"source": name, "path": None, "data": None} for name in names}  # found by name under the data roots

    def note_dataset(self, name: str, source: str | os.PathLike, path: str | os.PathLike | None = None,
                     data: str | os.PathLike | None = None) -> None:
        """Record where the tasks of dataset ``name`` come from: ``source`` as the user gave it (a
        name or a folder), its absolute ``path`` and the ``data`` root, the first time a dataset is
        seen (a zoo may hold tasks of several datasets)."""
        if name in (self.meta.get("datasets") or {}):
            return
        entry = {"source": str(source), "path": str(Path(path).resolve()) if path is not None else None,
                 "data": str(Path(data).resolve()) if data is not None else None}
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")  # read and write in one transaction: builders may add datasets at once
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'datasets'").fetchone()
            known = json.loads(row[0]) if row else self.datasets  # an older zoo keeps its first dataset first
            known.setdefault(name, entry)
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('datasets', ?)", (json.dumps(known),))
        self.meta = self._read_meta()

    def dataset_source(self, name: str | None = None) -> tuple[str, str | None]:
        """``(source, data root)`` to load dataset ``name`` with :func:`~metavote.data.load_dataset`
        (default: the zoo's first dataset): its recorded folder while it exists, else its name
        under the recorded data root (or the default roots), so a zoo copied elsewhere still opens."""
        datasets = self.datasets
        if not datasets:  # no task yet: the backbone's dataset
            return self.meta.get("dataset") or "cifar100", None
        if name is None:
            name = next(iter(datasets))
        if name not in datasets:
            raise ZooError(f"zoo {self.root} holds no task of dataset {name!r} (it holds: {', '.join(datasets)})")
        entry = datasets[name]
        if entry.get("path") and Path(entry["path"]).exists():
            return entry["path"], None
        data = entry.get("data") if entry.get("data") and Path(entry["data"]).is_dir() else None
        return name, data

    def describe(self) -> str:
        """The backbone in a few words: its architecture and size."""
        c = self.model_config
        if "hf_config" in c:  # a Hugging Face classifier: its model type
            return f"{c['arch']} {c['hf_config'].get('model_type')}"
        size = f" w{c['width']:g}" if "width" in c else f" d{c['embed_dim']} x{c['depth']}" if "embed_dim" in c else ""
        return f"{c['arch']}{size}"

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Zoo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing
    def add(self, task: Task, result: PruneResult) -> ZooRecord:
        """Store a pruning result (compact weights + Omega) for ``task``; replaces an earlier record
        of the same task and method."""
        rid = record_id(task, result.method)
        path = self.root / "records" / f"{rid}.safetensors"
        tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in result.model.state_dict().items()}
        tensors |= result.subnet.to_tensors()
        meta = {"task": json.dumps(task.to_dict()), "method": result.method, "params": json.dumps(result.params),
                "backbone": self.fingerprint}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        record = ZooRecord(rid, task, result.method, result.params, "ok", result.accuracy, float(result.costs.flops),
                           result.costs.seconds, path.name, file_digest(path), None, time.time())
        self._put(record)
        return record

    def add_failure(self, task: Task, method: str, params: dict, error: str) -> ZooRecord:
        """Record that pruning ``task`` failed (a later build retries it)."""
        record = ZooRecord(record_id(task, method), task, method, params, "failed", error=error, created=time.time())
        self._put(record)
        return record

    def _put(self, r: ZooRecord) -> None:
        row = (r.record_id, r.task.id, r.task.dataset, json.dumps(list(r.task.classes)), r.task.n_way, r.method,
               json.dumps(r.params), r.status, r.accuracy, r.flops, r.seconds, r.file, r.sha256, r.error, r.created)
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(f"INSERT OR REPLACE INTO records VALUES ({', '.join('?' * len(row))})", row)

    # -- claims
    def claim(self, rid: str, owner: str, lease: float, retry_failed_before: float | None = None) -> str:
        """Try to take record ``rid`` for ``owner`` (this process, on this host) for ``lease``
        seconds, in one transaction.

        Returns ``"claimed"`` (also when ``owner`` holds it already), ``"done"`` (the record
        exists with an intact file), ``"failed"`` (it failed and is not to be retried: a failure
        is retried only when recorded before ``retry_failed_before``) or ``"busy"`` (another
        builder's claim is live). A claim whose lease ran out, or whose owner on this host is gone,
        is taken over."""
        now = time.time()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            row = self._conn.execute("SELECT * FROM records WHERE record_id = ?", (rid,)).fetchone()
            if row is not None:
                record = self._row(row)
                if record.status == "ok" and self.verify(record):
                    return "done"
                if record.status == "failed" and (retry_failed_before is None or record.created >= retry_failed_before):
                    return "failed"
            held = self._conn.execute("SELECT * FROM claims WHERE record_id = ?", (rid,)).fetchone()
            if held is not None and held[1] != owner and Claim(*held).live:
                return "busy"
            self._conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (rid, owner, socket.gethostname(), os.getpid(), now, now, now + lease))
        return "claimed"

    def holds(self, rid: str, owner: str) -> bool:
        """Whether ``owner``'s claim on ``rid`` is still in force (a worker checks before training)."""
        row = self._conn.execute("SELECT expires FROM claims WHERE record_id = ? AND owner = ?", (rid, owner)).fetchone()
        return row is not None and row[0] > time.time()

    def heartbeat(self, owner: str, lease: float) -> int:
        """Renew every claim of ``owner`` for ``lease`` seconds from now; returns how many it holds."""
        now = time.time()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            return self._conn.execute("UPDATE claims SET heartbeat = ?, expires = ? WHERE owner = ?", (now, now + lease, owner)).rowcount

    def release(self, owner: str, rid: str | None = None) -> None:
        """Drop ``owner``'s claim on ``rid`` (or all of its claims)."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            if rid is None:
                self._conn.execute("DELETE FROM claims WHERE owner = ?", (owner,))
            else:
                self._conn.execute("DELETE FROM claims WHERE owner = ? AND record_id = ?", (owner, rid))

    def claims(self, live: bool = True) -> list[Claim]:
        """The claims in the index, oldest first (by default only live ones: the tasks being built now)."""
        found = [Claim(*row) for row in self._conn.execute("SELECT * FROM claims ORDER BY started")]
        return [c for c in found if c.live] if live else found

    def remove(self, rid: str) -> None:
        record = self.get(rid)
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM records WHERE record_id = ?", (rid,))
        if record.file:
            (self.root / "records" / record.file).unlink(missing_ok=True)

    # -- reading
    def records(self, method: str | None = None, dataset: str | None = None, status: str | None = "ok") -> list[ZooRecord]:
        """Records, oldest first, filtered by method, dataset and status (``None`` = any)."""
        query, args = "SELECT * FROM records WHERE 1=1", []
        for col, val in (("method", method), ("dataset", dataset), ("status", status)):
            if val is not None:
                query += f" AND {col} = ?"
                args.append(val)
        return [self._row(r) for r in self._conn.execute(query + " ORDER BY created", args)]

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM records WHERE status = 'ok'").fetchone()[0]

    def __iter__(self) -> Iterator[ZooRecord]:
        return iter(self.records())

    def get(self, key: str, method: str | None = None) -> ZooRecord:
        """A record by record id, or by task id (with ``method`` when a task has several records)."""
        rows = self._conn.execute("SELECT * FROM records WHERE record_id = ? OR task_id = ?", (key, key)).fetchall()
        found = [self._row(r) for r in rows if method is None or r[5] == method]
        if not found:
            raise ZooError(f"no record {key!r} in zoo {self.root}")
        if len(found) > 1:
            raise ZooError(f"task {key} has records of several methods ({', '.join(r.method for r in found)}); name one")
        return found[0]

    @staticmethod
    def _row(r: tuple) -> ZooRecord:
        return ZooRecord(r[0], Task(r[2], tuple(json.loads(r[3]))), r[5], json.loads(r[6]), r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14])

    def _tensors(self, record: ZooRecord) -> dict[str, torch.Tensor]:
        if record.status != "ok" or not record.file:
            raise ZooError(f"record {record.record_id} has no weights (status {record.status}: {record.error})")
        path = self.root / "records" / record.file
        if not path.exists():
            raise ZooError(f"record {record.record_id}: file {path} is missing; rebuild it (`metavote zoo build` redoes it)")
        if file_digest(path) != record.sha256:
            raise ZooError(f"record {record.record_id}: checksum of {path} does not match the index; rebuild it")
        try:
            with safe_open(str(path), "pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except SafetensorError as e:
            raise ZooError(f"record {record.record_id}: {path} is unreadable ({e})") from e

    def verify(self, record: ZooRecord) -> bool:
        """True when the record's file exists and matches its checksum."""
        path = self.root / "records" / (record.file or "")
        return record.status == "ok" and path.is_file() and file_digest(path) == record.sha256

    def subnetwork(self, record: ZooRecord) -> SubNetwork:
        return SubNetwork.from_tensors(self._tensors(record))

    def load(self, record: ZooRecord) -> tuple[Backbone, SubNetwork]:
        """The record's compact model (with its task head, on the zoo's device) and its sub-network."""
        tensors = self._tensors(record)
        try:
            subnet = SubNetwork.from_tensors(tensors)
        except ConfigError as e:
            raise ZooError(f"record {record.record_id}: {e}") from e
        state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        shape = (record.task.n_way, tuple(sorted(subnet.widths().items())))
        if shape not in self._skeletons:  # building and shrinking a full-size model is the slow part
            full = create_model(self.model_config, record.task.n_way)
            try:
                subnet.check(full.unit_groups())
            except ConfigError as e:
                raise ZooError(f"record {record.record_id} does not fit the zoo's backbone: {e}") from e
            self._skeletons[shape] = shrink(full, subnet.kept)
        model = copy.deepcopy(self._skeletons[shape])
        model.load_state_dict(state)
        return model.to(self.device).eval(), subnet

    def dense(self, record: ZooRecord, backbone: Backbone) -> dict[str, torch.Tensor]:
        """The record's weights written into a copy of the backbone's state dict at Omega (body only)."""
        model, subnet = self.load(record)
        return dense_view(backbone.state_dict(), subnet, model.state_dict(), TensorIndex(backbone, backbone.unit_groups()),
                          skip=backbone.classifier_keys())
