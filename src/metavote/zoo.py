"""The zoo of pruned models: an SQLite index plus one safetensors file per record, and its builder.

Layout of a zoo folder::

    index.sqlite                 # table `meta` (backbone fingerprint, arch, width) + table `records`
    records/<task id>.<method>.safetensors   # compact weights ("model.*"), Omega ("omega.*", "size.*")

Writes are atomic and safe with several writer processes: a record's file is written to a
temporary name and renamed, *then* its row is inserted in one SQLite transaction (WAL mode,
busy timeout). A crash between the two leaves an orphan file and no row: the zoo stays readable
and the task is simply redone. Each row stores the file's SHA-256, checked on load.
"""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .data import Task, load_dataset
from .errors import ConfigError, MetavoteError, one_line
from .files import atomic_path, file_digest
from .models import ResNet, build_model, head_rows_for, load_backbone
from .pruning import PruneResult, SubNetwork, dense_view, ifp, shrink, tensor_axes, unit_groups

INDEX = "index.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    record_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, dataset TEXT NOT NULL, classes TEXT NOT NULL,
    n_way INTEGER NOT NULL, method TEXT NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL,
    accuracy REAL, flops REAL, seconds REAL, file TEXT, sha256 TEXT, error TEXT, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_task ON records(task_id);
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


class Zoo:
    """A zoo folder bound to one backbone.

    ``Zoo(root, backbone_meta)`` creates the folder if needed and refuses a zoo made from another
    backbone; ``Zoo(root)`` opens an existing zoo whatever its backbone. Models it loads are put on
    ``device`` (default the CPU; :meth:`to` changes it).
    """

    def __init__(self, root: str | os.PathLike, backbone_meta: dict | None = None, device: str | torch.device = "cpu") -> None:
        self.root = Path(root)
        self.device = torch.device(device)
        self._skeletons: dict[tuple, ResNet] = {}
        index = self.root / INDEX
        if not index.exists():
            if backbone_meta is None:
                raise ZooError(f"{self.root} is not a zoo (no {INDEX}); build one with `metavote zoo build`")
            if self.root.exists() and any(p.name != "records" for p in self.root.iterdir()):
                raise ZooError(f"{self.root} exists, is not empty and is not a zoo; choose a new folder")
        (self.root / "records").mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(index, timeout=60, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout = 60000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ZooError(f"{index} is not a readable zoo index ({e})") from e
        self.meta = self._read_meta()
        if backbone_meta is not None:
            wanted = {"fingerprint": backbone_meta["fingerprint"], "arch": backbone_meta["arch"], "width": float(backbone_meta["width"]),
                      "dataset": backbone_meta.get("dataset")}
            if not self.meta:
                self._write_meta(wanted)
                self.meta = self._read_meta()
            elif self.meta["fingerprint"] != wanted["fingerprint"]:
                raise ZooError(
                    f"zoo {self.root} was built from backbone {self.meta['fingerprint'][:12]} "
                    f"({self.meta['arch']} w{self.meta['width']:g}), not from the given {wanted['fingerprint'][:12]}; "
                    "use a new zoo folder for a new backbone"
                )

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

    def load(self, record: ZooRecord) -> tuple[ResNet, SubNetwork]:
        """The record's compact model (with its task head, on the zoo's device) and its sub-network."""
        tensors = self._tensors(record)
        subnet = SubNetwork.from_tensors(tensors)
        state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        shape = (record.task.n_way, tuple(sorted(subnet.widths().items())))
        if shape not in self._skeletons:  # building and shrinking a full-size model is the slow part
            self._skeletons[shape] = shrink(build_model(self.meta["arch"], self.meta["width"], record.task.n_way), subnet.kept)
        model = copy.deepcopy(self._skeletons[shape])
        model.load_state_dict(state)
        return model.to(self.device).eval(), subnet

    def dense(self, record: ZooRecord, backbone: ResNet) -> dict[str, torch.Tensor]:
        """The record's weights written into a copy of the backbone's state dict at Omega (body only)."""
        model, subnet = self.load(record)
        return dense_view(backbone.state_dict(), subnet, model.state_dict(), tensor_axes(backbone, unit_groups(backbone)))


# ----------------------------------------------------------------------------- building

PROFILES: dict[str, dict] = {
    # the paper's IFP: full run at r = 0.9, J = 1000, lr 0.005, batch 128 (GPU scale)
    "paper": {"ratio": 0.9, "iterations": 1000, "lr": 0.005, "batch_size": 128},
    # 2 CPU cores, width-0.5 backbone: r = 0.8 keeps 6..51 channels as the paper's r = 0.9 does at
    # width 1.0; 200 iterations of batch 64 with 8 gradual pruning steps (one every 15 iterations)
    "cpu": {"ratio": 0.8, "iterations": 200, "lr": 0.01, "batch_size": 64},
}


def profile(name: str, **overrides) -> dict:
    """IFP parameters of a named profile, with overrides (``None`` values are ignored)."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return PROFILES[name] | {k: v for k, v in overrides.items() if v is not None}


@dataclass
class BuildReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to prune one task into a zoo (plain data, so it pickles)."""

    zoo: str
    dataset: str
    data: str | None
    backbone: str
    task: dict
    params: dict
    threads: int
    device: str = "cpu"


_WORKER_CACHE: dict = {}


def run_job(job: Job) -> tuple[str, str | None, float]:
    """Prune one task with IFP and add it to the zoo. Returns (record id, error or None, seconds).

    Runs in a worker process (local pool or Ray); the dataset and backbone are loaded once per process.
    """
    torch.set_num_threads(job.threads)
    task = Task.from_dict(job.task)
    start = time.perf_counter()
    try:
        key = (job.dataset, job.data, job.backbone, job.device)
        if _WORKER_CACHE.get("key") != key:
            dataset = load_dataset(job.dataset, job.data)
            backbone, meta = load_backbone(job.backbone, dataset=dataset)
            backbone.to(job.device)
            _WORKER_CACHE.update(key=key, dataset=dataset, backbone=backbone, meta=meta)
        dataset, backbone, meta = _WORKER_CACHE["dataset"], _WORKER_CACHE["backbone"], _WORKER_CACHE["meta"]
        data = dataset.load_task(task)
        result = ifp(backbone, data, head_rows=head_rows_for(meta["classes"], task.classes), **job.params)
        with Zoo(job.zoo, meta) as zoo:
            zoo.add(task, result)
        return record_id(task, "ifp"), None, time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - a failed task is recorded, the build goes on
        return record_id(task, "ifp"), f"{type(e).__name__}: {one_line(e)}", time.perf_counter() - start


def build_zoo(
    zoo_root: str | os.PathLike,
    tasks: Sequence[Task],
    backbone: str | os.PathLike,
    params: dict,
    dataset: str = "cifar100",
    data: str | os.PathLike | None = None,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> BuildReport:
    """Prune every task not yet in the zoo with IFP, in parallel; finished tasks are skipped.

    ``executor="local"``: a pool of ``workers`` processes, each with cores/workers torch threads.
    ``executor="ray"``: Ray tasks of one CPU each on a running cluster (``address``) or on a local
    Ray instance with ``workers`` CPUs. A task that fails is recorded with its error. Workers
    train on ``device``. ``workers`` defaults to 2 on the CPU and to 1 (in this process) on a GPU,
    which one worker keeps busy.
    """
    device = torch.device(device)
    workers = workers if workers is not None else (2 if device.type == "cpu" else 1)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor must be 'local' or 'ray', got {executor!r}")
    ds = load_dataset(dataset, data)
    _, meta = load_backbone(backbone, dataset=ds)
    report = BuildReport()
    with Zoo(zoo_root, meta) as zoo:
        finished = {r.record_id: r for r in zoo.records(method="ifp")}
        todo = []
        for task in tasks:
            rid = record_id(task, "ifp")
            if rid in finished and zoo.verify(finished[rid]):  # a missing or damaged file is redone
                report.skipped.append(rid)
            else:
                todo.append(task)
    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = [Job(str(zoo_root), dataset, str(data) if data else None, str(backbone), t.to_dict(), dict(params), threads, str(device))
            for t in todo]
    start = time.perf_counter()
    bar = tqdm(total=len(tasks), initial=len(report.skipped), desc="zoo build", unit="task", disable=not progress, dynamic_ncols=True)
    results = _run_ray(jobs, workers, address) if executor == "ray" else _run_local(jobs, workers)
    with Zoo(zoo_root) as zoo:
        for job, (rid, error, secs) in results:
            if error is None:
                report.done.append(rid)
            else:
                report.failed[rid] = error
                zoo.add_failure(Task.from_dict(job.task), "ifp", job.params, error)
                bar.write(f"task {rid} failed: {error}")
            bar.update(1)
            bar.set_postfix(failed=len(report.failed), last=f"{secs:.0f}s", refresh=False)
    bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _run_local(jobs: list[Job], workers: int) -> Iterator[tuple[Job, tuple]]:
    if workers == 1:
        for job in jobs:
            yield job, run_job(job)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(run_job, job): job for job in jobs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield pending.pop(fut), fut.result()


def _run_ray(jobs: list[Job], workers: int, address: str | None) -> Iterator[tuple[Job, tuple]]:
    try:
        import ray
    except ImportError as e:
        raise ConfigError("the Ray executor needs Ray: pip install 'metavote[ray]'") from e
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(run_job)
        pending = {remote.remote(job): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                yield pending.pop(ref), ray.get(ref)
    finally:
        if started:
            ray.shutdown()
