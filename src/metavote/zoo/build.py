"""Building a zoo: many tasks pruned in parallel (local processes or Ray), resumable.

Any registered method builds a zoo (``zoo build --method KEY``, IFP by default): the caller hands
over a :class:`~metavote.methods.Method` (plain settings, so it travels to worker processes), and
each worker runs it on its task and adds the result. Finished tasks are skipped, so a killed build
resumes where it stopped; a task that fails is recorded with its error and retried by the next run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..data import Task, load_dataset
from ..errors import ConfigError, one_line
from ..models import head_rows_for, load_backbone
from ..training import available_cores
from .store import Zoo, record_id

if TYPE_CHECKING:
    from ..methods.base import Method


@dataclass
class BuildReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to prune one task into a zoo (plain data and a method's settings, so it pickles)."""

    zoo: str
    dataset: str
    data: str | None
    backbone: str
    task: dict
    method: Method
    threads: int
    device: str = "cpu"


_WORKER_CACHE: dict = {}


def run_job(job: Job) -> tuple[str, str | None, float]:
    """Prune one task with the job's method and add it to the zoo. Returns (record id, error or None, seconds).

    Runs in a worker process (local pool or Ray); the dataset and backbone are loaded once per process.
    """
    torch.set_num_threads(job.threads)
    task = Task.from_dict(job.task)
    rid = record_id(task, job.method.key)
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
        with Zoo(job.zoo, meta, device=job.device) as zoo:
            result = job.method.run(backbone, data, zoo if job.method.needs_zoo else None, head_rows_for(meta["classes"], task.classes))
            zoo.add(task, result)
        return rid, None, time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - a failed task is recorded, the build goes on
        return rid, f"{type(e).__name__}: {one_line(e)}", time.perf_counter() - start


def build_zoo(
    zoo_root: str | os.PathLike,
    tasks: Sequence[Task],
    backbone: str | os.PathLike,
    method: Method,
    dataset: str = "cifar100",
    data: str | os.PathLike | None = None,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> BuildReport:
    """Prune every task not yet in the zoo with ``method`` (IFP for a zoo that MVP votes from), in
    parallel; finished tasks are skipped.

    ``executor="local"``: a pool of ``workers`` processes, each with ``threads`` torch threads
    (default: the cores available to this process, by its affinity, divided among the workers; never
    more threads in all than those cores). Workers exit within a second or two when this process
    dies, so a killed build leaves no orphans behind.
    ``executor="ray"``: Ray tasks of one CPU each on a running cluster (``address``) or on a local
    Ray instance with ``workers`` CPUs. A task that fails is recorded with its error. Workers
    train on ``device``. ``workers`` defaults to 2 on the CPU and to 1 (in this process) on a GPU,
    which one worker keeps busy.
    """
    if not method.builds_zoo:
        raise ConfigError(f"{method.key} does not prune units (heads, nodes, channels), so it cannot build a zoo")
    device = torch.device(device)
    workers = workers if workers is not None else (2 if device.type == "cpu" else 1)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor must be 'local' or 'ray', got {executor!r}")
    ds = load_dataset(dataset, data)
    model, meta = load_backbone(backbone, dataset=ds)
    if model.family not in method.families:
        raise ConfigError(f"{method.key} prunes {', '.join(method.families)} models; {backbone} is a {model.family}")
    report = BuildReport()
    with Zoo(zoo_root, meta) as zoo:
        zoo.set_source_method(method.key)
        zoo.note_dataset(ds.name, dataset, ds.source, data)
        finished = {r.record_id: r for r in zoo.records(method=method.key)}
        todo = []
        for task in tasks:
            rid = record_id(task, method.key)
            if rid in finished and zoo.verify(finished[rid]):  # a missing or damaged file is redone
                report.skipped.append(rid)
            else:
                todo.append(task)
    cores = available_cores()
    if threads is None:
        threads = max(1, cores // workers)
    elif threads < 1 or (device.type == "cpu" and threads * workers > max(cores, workers)):
        raise ConfigError(f"{workers} worker(s) x {threads} thread(s) oversubscribe the {cores} core(s) this process may use; "
                          f"pass --threads {max(1, cores // workers)} or fewer workers")
    jobs = [Job(str(zoo_root), dataset, str(data) if data else None, str(backbone), t.to_dict(), method, threads, str(device))
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
                zoo.add_failure(Task.from_dict(job.task), method.key, method.settings(), error)
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
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        pending = {pool.submit(run_job, job): job for job in jobs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield pending.pop(fut), fut.result()


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """In a pool worker: a daemon thread that ends the process once ``parent`` is gone (a killed
    parent's workers would otherwise finish their queue and then wait forever)."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(every)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


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
