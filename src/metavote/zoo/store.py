"""The zoo of pruned models: an SQLite index plus one safetensors file per record.

Layout of a zoo folder::

    index.sqlite                 # tables `meta` (backbone fingerprint, model config, datasets), `records`, `claims`
    records/<task id>.<method>.safetensors   # compact weights ("model.*"), Omega ("omega.*", "size.*")

Writes are atomic and safe with several writer processes: a record's file is written to a
temporary name and renamed, *then* its row is inserted in one SQLite transaction (WAL mode,
busy timeout). A crash between the two leaves an orphan file and no row: the zoo stays readable
and the task is simply redone. Each row stores the file's SHA-256, checked on load.

A zoo opens **read-only** when its folder cannot be written (or has no write permission bit:
a folder marked read-only counts even for root), when asked (``Zoo(root, read_only=True)``) or
when its path ends in ``?mode=ro`` (``file:`` prefix allowed): nothing in the folder is created or
changed, and any write is refused in one line. New records then go to a **layer**, a writable zoo
of the same backbone stacked on top (:meth:`Zoo.layer`): it votes with its own records and the
read-only ones beneath, and remembers where they are, so ``Zoo(layer)`` alone opens the stack.
Every record says which folder it came from (:attr:`ZooRecord.origin`).

Builders that share a zoo claim a task before training it (:meth:`Zoo.claim`, one transaction):
a claim names its owner, host and pid and holds a lease that the owner's heartbeat renews. A
claim is live until its lease runs out, or at once when its owner was a process of this host that
no longer exists (a killed builder); then another builder may take the task.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import sqlite3
import stat
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import save_file

from ..data import Task
from ..errors import ConfigError, MetavoteError
from ..files import atomic_path, file_digest
from ..models.base import Backbone
from ..models.registry import create_model
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
    origin: Path | None = field(default=None, compare=False)
    """The zoo folder holding the record's file (in a layered zoo, the layer it came from)."""

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


def zoo_location(spec: str | os.PathLike) -> tuple[Path, bool]:
    """``DIR``, ``DIR?mode=ro`` or ``file:DIR?mode=ro`` -> (the folder, whether read-only was asked)."""
    text = os.fspath(spec)
    if text.startswith("file:"):
        text = text[len("file:"):]
    path, _, query = text.partition("?")
    if not query:
        return Path(path), False
    mode = urllib.parse.parse_qs(query).get("mode", [""])[-1]
    if mode not in ("ro", "rw") or set(urllib.parse.parse_qs(query)) != {"mode"}:
        raise ZooError(f"unknown zoo option {query!r} in {spec}; the only one is mode=ro (read-only) or mode=rw")
    return Path(path), mode == "ro"


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` (an existing zoo) cannot be written, or None: the file system or the
    permissions refuse it, or no write bit is set on the folder or its index (a folder marked
    read-only, which root could otherwise write)."""
    index = folder / INDEX
    if not os.access(folder, os.W_OK) or (index.exists() and not os.access(index, os.W_OK)):
        return "its folder cannot be written"
    for path in (folder, index):
        if path.exists() and not stat.S_IMODE(path.stat().st_mode) & 0o222:
            return f"{path.name if path is index else 'its folder'} is marked read-only"
    return None


class Zoo:
    """A zoo folder bound to one backbone.

    ``Zoo(root, backbone_meta)`` creates the folder if needed and refuses a zoo made from another
    backbone; ``Zoo(root)`` opens an existing zoo whatever its backbone. Models it loads are put on
    ``device`` (default the CPU; :meth:`to` changes it). ``read_only`` (default: when the folder
    cannot be written or ``root`` ends in ``?mode=ro``) opens it without creating or changing a file.
    """

    def __init__(self, root: str | os.PathLike, backbone_meta: dict | None = None, device: str | torch.device = "cpu",
                 read_only: bool | None = None) -> None:
        self.root, asked = zoo_location(root)
        self.device = torch.device(device)
        self._skeletons: dict[tuple, Backbone] = {}
        index = self.root / INDEX
        if not index.exists():
            if backbone_meta is None or read_only or asked:
                raise ZooError(f"{self.root} is not a zoo (no {INDEX}); build one with `metavote zoo build`")
            if self.root.exists() and any(p.name != "records" and not p.name.startswith(INDEX) for p in self.root.iterdir()):
                raise ZooError(f"{self.root} exists, is not empty and is not a zoo; choose a new folder")
        why = "opened read-only" if read_only or asked else (unwritable(self.root) if index.exists() and read_only is None else None)
        self._frozen_version: tuple | None = None
        self.read_only: str | None = why
        """Why the zoo cannot be written (None when it can)."""
        try:
            if why:
                self._conn = sqlite3.connect(self._read_only_uri(index), uri=True, isolation_level=None)
                self._conn.execute("SELECT COUNT(*) FROM records").fetchone()
            else:
                (self.root / "records").mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(index, timeout=60, isolation_level=None)
                self._conn.execute("PRAGMA busy_timeout = 60000")
                self._use_wal()
                self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ZooError(f"{index} is not a readable zoo index ({e})") from e
        self.meta = self._read_meta()
        self.layers = self._open_layers()
        """The read-only zoos under this one, whose records vote too (see :meth:`layer`)."""
        if backbone_meta is not None:
            config = backbone_meta.get("config") or {"arch": backbone_meta["arch"], "width": float(backbone_meta["width"])}
            wanted = {"fingerprint": backbone_meta["fingerprint"], "arch": config["arch"], "config": config,
                      "dataset": backbone_meta.get("dataset")}
            wanted |= {k: backbone_meta[k] for k in ("backbone", "input_size") if backbone_meta.get(k)}  # a named backbone, its size
            if not self.meta:
                if why:
                    raise ZooError(f"zoo {self.root} is read-only ({why}) and has no backbone recorded")
                self._write_meta(wanted | {"zoo_id": uuid.uuid4().hex})  # this zoo, not another built later in its folder
                self.meta = self._read_meta()
            elif self.meta["fingerprint"] != wanted["fingerprint"]:
                raise ZooError(
                    f"zoo {self.root} was built from backbone {self.meta['fingerprint'][:12]} "
                    f"({self.describe()}), not from the given {wanted['fingerprint'][:12]}; "
                    "use a new zoo folder for a new backbone"
                )

    @staticmethod
    def _read_only_uri(index: Path) -> str:
        """An SQLite URI that reads ``index`` and writes nothing beside it: immutable when no
        write-ahead log is pending (a cleanly closed zoo), else read-only on the existing log."""
        wal = index.with_name(index.name + "-wal")
        pending = wal.exists() and wal.stat().st_size > 0
        return f"file:{urllib.parse.quote(str(index.resolve()))}?mode=ro" + ("" if pending else "&immutable=1")

    def _writable(self) -> None:
        if self.read_only:
            raise ZooError(f"zoo {self.root} is read-only ({self.read_only}); put new records in a zoo layered on it "
                           "(`--save-to DIR`, or Zoo.layer in Python)")

    def _open_layers(self) -> list[Zoo]:
        layers = []
        for path in self.meta.get("layers") or []:
            if not (Path(path) / INDEX).exists():
                raise ZooError(f"zoo {self.root} is layered on {path}, which is not a zoo any more; put it back or re-create the layer")
            lower = Zoo(path, device=self.device, read_only=True)
            if lower.fingerprint != self.fingerprint:
                raise ZooError(f"zoo {self.root} is layered on {path}, which holds another backbone's records")
            layers.append(lower)
        return layers

    @classmethod
    def layer(cls, base: Zoo, root: str | os.PathLike, device: str | torch.device | None = None) -> Zoo:
        """A writable zoo at ``root`` stacked on ``base`` (typically read-only: a published zoo):
        created with ``base``'s backbone if new, or an existing zoo of the same backbone to which
        ``base`` is added. Its records and ``base``'s vote together; new records go to ``root``."""
        top = cls(root, {"fingerprint": base.fingerprint, "config": base.model_config, "arch": base.model_config["arch"],
                         "dataset": base.meta.get("dataset")}, device=device or base.device, read_only=False)
        below = [str(z.root.resolve()) for z in (base, *base.layers)]
        known = list(top.meta.get("layers") or [])
        if top.root.resolve() in {Path(p) for p in below}:
            raise ZooError(f"zoo {root} cannot be layered on itself")
        new = [p for p in below if p not in known]
        if new:
            with top._conn:
                top._conn.execute("BEGIN IMMEDIATE")
                top._conn.execute("INSERT OR REPLACE INTO meta VALUES ('layers', ?)", (json.dumps(known + new),))
            if "method" not in top.meta and "method" in base.meta:
                top._write_meta({"method": base.meta["method"]})
            top.meta = top._read_meta()
            top.close_layers()
            top.layers = top._open_layers()
        return top

    def close_layers(self) -> None:
        for lower in self.layers:
            lower.close()

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
        self._writable()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            for k, v in meta.items():
                self._conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (k, json.dumps(v)))

    def to(self, device: str | torch.device) -> Zoo:
        """Load models onto ``device`` from now on; returns the zoo."""
        self.device = torch.device(device)
        for lower in self.layers:
            lower.to(device)
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
        return self.meta.get("method") or next((z.meta["method"] for z in self.layers if "method" in z.meta), DEFAULT_ZOO_METHOD)

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
        found: dict[str, dict] = {}
        for lower in self.layers:  # the layers' datasets first: the zoo's own tasks came later
            for name, entry in lower.datasets.items():
                found.setdefault(name, entry)
        recorded = self.meta.get("datasets")
        if recorded:
            return found | {k: v for k, v in recorded.items() if k not in found}
        names = [r[0] for r in self._conn.execute("SELECT dataset FROM records GROUP BY dataset ORDER BY MIN(created)")]
        return found | {n: {"source": n, "path": None, "data": None} for n in names if n not in found}  # found by name under the data roots

    def note_dataset(self, name: str, source: str | os.PathLike, path: str | os.PathLike | None = None,
                     data: str | os.PathLike | None = None) -> None:
        """Record where the tasks of dataset ``name`` come from: ``source`` as the user gave it (a
        name or a folder), its absolute ``path`` and the ``data`` root, the first time a dataset is
        seen (a zoo may hold tasks of several datasets)."""
        if name in (self.meta.get("datasets") or {}):
            return
        self._writable()
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

    @property
    def cache_dir(self) -> Path:
        """A folder for what is derived from the zoo (meta-trained weights, search indexes): the
        zoo's own when it can be written, else one in the user's cache, keyed by the zoo's folder and
        its id (a zoo built again in the same folder does not find the old one's index)."""
        if not self.read_only:
            return self.root
        key = hashlib.sha256(f"{self.root.resolve()}{self.meta.get('zoo_id', '')}".encode()).hexdigest()[:16]
        return Path(os.environ.get("METAVOTE_CACHE", Path.home() / ".cache" / "metavote")) / "zoos" / f"{self.root.name}-{key}"

    def close(self) -> None:
        self.close_layers()
        self._conn.close()

    def __enter__(self) -> Zoo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing
    def add(self, task: Task, result: PruneResult) -> ZooRecord:
        """Store a pruning result (compact weights + Omega) for ``task``; replaces an earlier record
        of the same task and method."""
        self._writable()
        rid = record_id(task, result.method)
        path = self._write_file(f"{rid}.safetensors", task, result.method, result.params, result.model, result.subnet)
        record = ZooRecord(rid, task, result.method, result.params, "ok", result.accuracy, float(result.costs.flops),
                           result.costs.seconds, path.name, file_digest(path), None, time.time())
        self._put(record)
        return record

    def _write_file(self, name: str, task: Task, method: str, params: dict, model: Backbone, subnet: SubNetwork) -> Path:
        """A record's file (compact weights and Omega), written atomically under ``records/``."""
        path = self.root / "records" / name
        tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        tensors |= subnet.to_tensors()
        meta = {"task": json.dumps(task.to_dict()), "method": method, "params": json.dumps(params), "backbone": self.fingerprint}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    def update_model(self, record: ZooRecord, model: Backbone, params: dict, accuracy: float, flops: float,
                     seconds: float) -> ZooRecord | None:
        """Replace a record's weights (same task, method and Omega: a record trained further) and its row.

        The new weights go to a new file; the row then points at it in one transaction, only if the
        row is still the one ``record`` was read from (same file and checksum; else None and the new
        file is removed). Readers are never blocked and never see a half-written file: one that read
        the old row still finds the old file, which stays until :meth:`clean_superseded` (a later
        refine) removes it after a grace period."""
        self._writable()
        if record.origin not in (None, self.root):
            raise ZooError(f"record {record.record_id} belongs to zoo {record.origin}, a read-only layer under {self.root}")
        subnet = self.subnetwork(record)
        name = f"{record.record_id}.{os.urandom(3).hex()}.safetensors"
        path = self._write_file(name, record.task, record.method, params, model, subnet)
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            row = self._conn.execute("SELECT file, sha256 FROM records WHERE record_id = ?", (record.record_id,)).fetchone()
            if row is None or tuple(row) != (record.file, record.sha256):
                path.unlink(missing_ok=True)
                return None
            self._conn.execute("UPDATE records SET params = ?, accuracy = ?, flops = ?, seconds = ?, file = ?, sha256 = ? WHERE record_id = ?",
                               (json.dumps(params), accuracy, flops, seconds, path.name, file_digest(path), record.record_id))
            old = self._conn.execute("SELECT value FROM meta WHERE key = 'superseded'").fetchone()
            superseded = (json.loads(old[0]) if old else []) + [[record.file, time.time()]]
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('superseded', ?)", (json.dumps(superseded),))
            self._bump()
        return self.find(record.record_id)[0]

    def clean_superseded(self, grace: float = 3600.0) -> int:
        """Delete the files :meth:`update_model` replaced more than ``grace`` seconds ago (a reader
        holding an older row has had that long to open them); returns how many went."""
        self._writable()
        now = time.time()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            old = self._conn.execute("SELECT value FROM meta WHERE key = 'superseded'").fetchone()
            entries = json.loads(old[0]) if old else []
            used = {f for (f,) in self._conn.execute("SELECT file FROM records WHERE file IS NOT NULL")}
            gone = [f for f, t in entries if now - t >= grace and f not in used]
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('superseded', ?)",
                               (json.dumps([[f, t] for f, t in entries if f not in gone]),))
        for f in gone:
            (self.root / "records" / f).unlink(missing_ok=True)
        return len(gone)

    def add_failure(self, task: Task, method: str, params: dict, error: str) -> ZooRecord:
        """Record that pruning ``task`` failed (a later build retries it)."""
        self._writable()
        record = ZooRecord(record_id(task, method), task, method, params, "failed", error=error, created=time.time())
        self._put(record)
        return record

    def _put(self, r: ZooRecord) -> None:
        self.put_records([r])

    def put_records(self, records: Sequence[ZooRecord]) -> None:
        """Insert (or replace) index rows whose files are already in ``records/``, in one
        transaction: how bundles and synthetic zoos fill an index."""
        self._writable()
        rows = [(r.record_id, r.task.id, r.task.dataset, json.dumps(list(r.task.classes)), r.task.n_way, r.method, json.dumps(r.params),
                 r.status, r.accuracy, r.flops, r.seconds, r.file, r.sha256, r.error, r.created) for r in records]
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(f"INSERT OR REPLACE INTO records VALUES ({', '.join('?' * 15)})", rows)
            self._bump()

    # -- claims
    def claim(self, rid: str, owner: str, lease: float, retry_failed_before: float | None = None) -> str:
        """Try to take record ``rid`` for ``owner`` (this process, on this host) for ``lease``
        seconds, in one transaction.

        Returns ``"claimed"`` (also when ``owner`` holds it already), ``"done"`` (the record
        exists with an intact file), ``"failed"`` (it failed and is not to be retried: a failure
        is retried only when recorded before ``retry_failed_before``) or ``"busy"`` (another
        builder's claim is live). A claim whose lease ran out, or whose owner on this host is gone,
        is taken over."""
        self._writable()
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
        self._writable()
        now = time.time()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            return self._conn.execute("UPDATE claims SET heartbeat = ?, expires = ? WHERE owner = ?", (now, now + lease, owner)).rowcount

    def release(self, owner: str, rid: str | None = None) -> None:
        """Drop ``owner``'s claim on ``rid`` (or all of its claims)."""
        self._writable()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            if rid is None:
                self._conn.execute("DELETE FROM claims WHERE owner = ?", (owner,))
            else:
                self._conn.execute("DELETE FROM claims WHERE owner = ? AND record_id = ?", (owner, rid))

    def claims(self, live: bool = True) -> list[Claim]:
        """The claims in the index, oldest first (by default only live ones: the tasks being built now)."""
        if not self._has_table("claims"):  # a read-only zoo from before claims
            return []
        found = [Claim(*row) for row in self._conn.execute("SELECT * FROM claims ORDER BY started")]
        return [c for c in found if c.live] if live else found

    def _has_table(self, name: str) -> bool:
        return self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None

    def remove(self, rid: str) -> None:
        record = self.get(rid)
        if record.origin != self.root:
            raise ZooError(f"record {rid} belongs to zoo {record.origin}, a read-only layer under {self.root}")
        self._writable()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM records WHERE record_id = ?", (rid,))
            self._bump()
        if record.file:
            (self.root / "records" / record.file).unlink(missing_ok=True)

    # -- reading
    def records(self, method: str | None = None, dataset: str | None = None, status: str | None = "ok") -> list[ZooRecord]:
        """Records, oldest first, filtered by method, dataset and status (``None`` = any); in a
        layered zoo, the layers' records first, each replaced by this zoo's record of the same id."""
        query, args = "SELECT * FROM records WHERE 1=1", []
        for col, val in (("method", method), ("dataset", dataset), ("status", status)):
            if val is not None:
                query += f" AND {col} = ?"
                args.append(val)
        own = [self._row(r) for r in self._conn.execute(query + " ORDER BY created", args)]
        if not self.layers:
            return own
        mine = {r.record_id for r in own}
        below = {r.record_id: r for z in reversed(self.layers) for r in z.records(method, dataset, status) if r.record_id not in mine}
        return list(below.values()) + own

    def version(self) -> tuple:
        """Changes whenever a record of the zoo or its layers is added, replaced or removed, so
        derived indexes know when to refresh. Cheap: a counter every write bumps (a read-only zoo,
        or one written before the counter, is counted once)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        if row is not None:
            own = (int(json.loads(row[0])),)
        elif self.read_only and self._frozen_version is not None:
            own = self._frozen_version
        else:
            own = tuple(self._conn.execute("SELECT COUNT(*), MAX(created) FROM records WHERE status = 'ok'").fetchone())
            if self.read_only:
                self._frozen_version = own
        return (own, *(z.version() for z in self.layers))

    def _bump(self) -> None:
        """Count one more write (inside the writer's transaction)."""
        self._conn.execute("INSERT INTO meta VALUES ('version', '1') ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    def __len__(self) -> int:
        if self.layers:
            return len(self.records())
        return self._conn.execute("SELECT COUNT(*) FROM records WHERE status = 'ok'").fetchone()[0]

    def __iter__(self) -> Iterator[ZooRecord]:
        return iter(self.records())

    def get(self, key: str, method: str | None = None) -> ZooRecord:
        """A record by record id, or by task id (with ``method`` when a task has several records)."""
        found = self.find(key, method)
        if not found:
            raise ZooError(f"no record {key!r} in zoo {self.root}")
        if len(found) > 1:
            raise ZooError(f"task {key} has records of several methods ({', '.join(r.method for r in found)}); name one")
        return found[0]

    def find(self, key: str, method: str | None = None) -> list[ZooRecord]:
        """The records (any status) of ``key``, a record or task id, of ``method`` if given: this
        zoo's, else those of the first layer holding one."""
        rows = self._conn.execute("SELECT * FROM records WHERE record_id = ? OR task_id = ?", (key, key)).fetchall()
        found = [self._row(r) for r in rows if method is None or r[5] == method]
        for lower in self.layers:
            if found:
                break
            found = lower.find(key, method)
        return found

    def param_values(self, key: str, method: str | None = None) -> set:
        """The distinct values of setting ``key`` among the ok records (of ``method``) of the zoo
        and its layers, read by SQLite without loading the rows."""
        query = "SELECT DISTINCT json_extract(params, ?) FROM records WHERE status = 'ok'" + (" AND method = ?" if method else "")
        own = {v for (v,) in self._conn.execute(query, (f"$.{key}", method) if method else (f"$.{key}",)) if v is not None}
        return own.union(*(z.param_values(key, method) for z in self.layers))

    def count(self, method: str | None = None) -> int:
        """How many ok records (of ``method``) the zoo and its layers hold, without reading them."""
        if self.layers:
            return len(self.records(method=method))
        query = "SELECT COUNT(*) FROM records WHERE status = 'ok'" + (" AND method = ?" if method else "")
        return self._conn.execute(query, (method,) if method else ()).fetchone()[0]

    def _row(self, r: tuple) -> ZooRecord:
        return ZooRecord(r[0], Task(r[2], tuple(json.loads(r[3]))), r[5], json.loads(r[6]), r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14],
                         origin=self.root)

    def record_path(self, record: ZooRecord) -> Path:
        """Where the record's file lives (its own layer's folder)."""
        return (record.origin or self.root) / "records" / (record.file or "")

    def _tensors(self, record: ZooRecord) -> dict[str, torch.Tensor]:
        if record.status != "ok" or not record.file:
            raise ZooError(f"record {record.record_id} has no weights (status {record.status}: {record.error})")
        path = self.record_path(record)
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
        path = self.record_path(record)
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
