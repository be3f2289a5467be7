"""Building a zoo: many tasks pruned in parallel (local processes or Ray), resumable.

Any registered method builds a zoo (``zoo build --method KEY``, IFP by default): the caller hands
over a :class:`~metavote.methods.Method` (plain settings, so it travels to worker processes), and
each worker runs it on its task and adds the result. Finished tasks are skipped, so a killed build
resumes where it stopped; a task that fails is recorded with its error (``retry_failed`` retries it).
Builders claim each task in the zoo's index before training it, so several can grow one zoo.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ..data import Task, load_dataset
from ..errors import ConfigError, one_line
from ..models import head_rows_for, load_backbone
from ..pruning import PruneResult
from ..training import available_cores
from .store import Zoo, new_owner, record_id



class Method(Protocol):
    """What the builder needs of a pruning method (:class:`~metavote.methods.Method` is one): the zoo
    knows methods only by this face, so it does not import them."""

    key: str
    needs_zoo: bool
    builds_zoo: bool

    def settings(self) -> dict: ...

    def check_model(self, model) -> None: ...

    def run(self, backbone, data, zoo=None, head_rows=None, progress: bool = False) -> PruneResult: ...


@dataclass
class BuildReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    failed_before: list[str] = field(default_factory=list)
    """Tasks that failed in an earlier build and were left alone (``retry_failed`` retries them)."""
    by_others: list[str] = field(default_factory=list)
    """Tasks another builder claimed and then finished (or recorded as failed) while this one ran."""
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
    owner: str | None = None
    """The builder whose claim the task is under; the worker checks the claim still holds before training."""
    image_size: int | None = None
    """The input size the backbone runs at (None: its own); the images are resized to it."""


@dataclass(frozen=True)
class JobResult:
    record_id: str
    error: str | None
    seconds: float
    lost: bool = False
    """The builder's claim had lapsed when the worker came to the task, so it did not train it."""


_WORKER_CACHE: dict = {}


def run_job(job: Job) -> JobResult:
    """Prune one task with the job's method and add it to the zoo.

    Runs in a worker process (local pool or Ray); the dataset and backbone are loaded once per process.
    """
    torch.set_num_threads(job.threads)
    task = Task.from_dict(job.task)
    rid = record_id(task, job.method.key)
    start = time.perf_counter()
    try:
        key = (job.dataset, job.data, job.backbone, job.device, job.image_size)
        if _WORKER_CACHE.get("key") != key:
            dataset = load_dataset(job.dataset, job.data)
            backbone, meta = load_backbone(job.backbone, dataset=dataset, image_size=job.image_size)
            dataset = dataset.resized(backbone.input_size)  # the images at the model's size (cached once per machine)
            backbone.to(job.device)
            _WORKER_CACHE.update(key=key, dataset=dataset, backbone=backbone, meta=meta)
        dataset, backbone, meta = _WORKER_CACHE["dataset"], _WORKER_CACHE["backbone"], _WORKER_CACHE["meta"]
        with Zoo(job.zoo, meta, device=job.device) as zoo:
            if job.owner is not None and not zoo.holds(rid, job.owner):
                return JobResult(rid, None, time.perf_counter() - start, lost=True)
            data = dataset.load_task(task)
            result = job.method.run(backbone, data, zoo if job.method.needs_zoo else None, head_rows_for(meta["classes"], task.classes))
            zoo.add(task, result)
        return JobResult(rid, None, time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - a failed task is recorded, the build goes on
        return JobResult(rid, f"{type(e).__name__}: {one_line(e)}", time.perf_counter() - start)


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
    retry_failed: bool = False,
    lease: float = 120.0,
    image_size: int | None = None,
) -> BuildReport:
    """Prune every task not yet in the zoo with ``method`` (IFP for a zoo that MVP votes from), in
    parallel; finished tasks are skipped, and so are failed ones unless ``retry_failed``.

    Several builders may grow one zoo at once (on this machine, or on others over a shared file
    system): each claims a task in the zoo's index before it trains it, so no task is trained
    twice. A claim's ``lease`` (seconds) is renewed by a heartbeat while the builder lives; the
    claims of a builder that died are taken over, at once on this host and after the lease
    elsewhere. A builder returns when every task is done or failed, waiting for the tasks other
    builders hold.

    ``executor="local"``: a pool of ``workers`` processes, each with ``threads`` torch threads
    (default: the cores available to this process, by its affinity, divided among the workers; never
    more threads in all than those cores). Workers exit within a second or two when this process
    dies, so a killed build leaves no orphans behind.
    ``executor="ray"``: Ray tasks of one CPU each on a running cluster (``address``) or on a local
    Ray instance with ``workers`` CPUs; tasks still running are cancelled when the build stops.
    A task that fails is recorded with its error. Workers train on ``device``. ``workers``
    defaults to 2 on the CPU and to 1 (in this process) on a GPU, which one worker keeps busy.
    ``backbone``: a file, a Hugging Face folder or a backbone name (``efficientnet-lite0``,
    ``py:MODULE:FUNCTION``), run at ``image_size`` (default: its own); the images are resized to it
    once, and a model that does not run at that size is one line before any task starts.
    """
    if not method.builds_zoo:
        raise ConfigError(f"{method.key} does not prune units (heads, nodes, channels), so it cannot build a zoo")
    device = torch.device(device)
    workers = workers if workers is not None else (2 if device.type == "cpu" else 1)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor must be 'local' or 'ray', got {executor!r}")
    if lease <= 0:
        raise ConfigError(f"lease must be positive, got {lease}")
    cores = available_cores()
    if threads is None:
        threads = max(1, cores // workers)
    elif threads < 1 or (device.type == "cpu" and threads * workers > max(cores, workers)):
        raise ConfigError(f"{workers} worker(s) x {threads} thread(s) oversubscribe the {cores} core(s) this process may use; "
                          f"pass --threads {max(1, cores // workers)} or fewer workers")
    ds = load_dataset(dataset, data)
    model, meta = load_backbone(backbone, dataset=ds, image_size=image_size)
    method.check_model(model)
    ds.resized(model.input_size)  # resized and cached once here, before the workers read it
    start_time = time.time()
    owner = new_owner()
    report = BuildReport()
    start = time.perf_counter()
    bar = tqdm(total=len(tasks), desc="zoo build", unit="task", disable=not progress, dynamic_ncols=True)
    with Zoo(zoo_root, meta) as zoo, _Heartbeat(zoo_root, owner, lease):
        zoo.set_source_method(method.key)
        zoo.note_dataset(ds.name, dataset, ds.source, data)
        runner = _Ray(workers, address) if executor == "ray" else _Pool(workers) if workers > 1 else _Serial()
        queue, waiting, held_by_others = list(tasks), [], set()
        poll = min(2.0, lease / 4)

        def collect(job: Job, result: JobResult) -> None:
            zoo.release(owner, result.record_id)
            if result.lost:  # our lease lapsed (a stalled builder): the task goes back to the queue
                queue.append(Task.from_dict(job.task))
            elif result.error is None:
                report.done.append(result.record_id)
            else:
                report.failed[result.record_id] = result.error
                zoo.add_failure(Task.from_dict(job.task), method.key, method.settings(), result.error)
                bar.write(f"task {result.record_id} failed: {result.error}")
            if not result.lost:
                bar.update(1)
                bar.set_postfix(failed=len(report.failed), last=f"{result.seconds:.0f}s", refresh=False)

        try:
            with runner:
                while queue or waiting or runner.busy:
                    while queue and runner.busy < workers:  # claim only what a worker starts now
                        task = queue.pop(0)
                        rid = record_id(task, method.key)
                        state = zoo.claim(rid, owner, lease, start_time if retry_failed else None)
                        if state == "claimed":
                            runner.submit(Job(str(zoo_root), dataset, str(data) if data else None, str(backbone), task.to_dict(),
                                              method, threads, str(device), owner, model.input_size[-1]))
                            continue
                        if state == "busy":
                            waiting.append(task)
                            held_by_others.add(rid)
                            continue
                        if rid in held_by_others:  # another builder finished it (or recorded its failure)
                            report.by_others.append(rid)
                        else:
                            (report.skipped if state == "done" else report.failed_before).append(rid)
                        bar.update(1)
                    idle = bool(waiting) and runner.busy < workers  # free workers; other builders hold the rest
                    if runner.busy:
                        finished = runner.next(timeout=poll if idle else None)
                        if finished is not None:
                            collect(*finished)
                    elif idle:
                        bar.set_postfix(waiting=len(waiting), refresh=True)
                        time.sleep(poll)
                    if idle:  # look again: finished, failed, or its builder died and the claim can be taken over
                        queue, waiting = queue + waiting, []
        finally:
            zoo.release(owner)
    bar.close()
    report.seconds = time.perf_counter() - start
    return report


class _Heartbeat:
    """Renews a builder's claims every quarter lease from a daemon thread with its own connection."""

    def __init__(self, zoo_root, owner: str, lease: float) -> None:
        self.zoo_root, self.owner, self.lease = zoo_root, owner, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="zoo-claims-heartbeat", daemon=True)

    def _beat(self) -> None:
        with Zoo(self.zoo_root) as zoo:
            while not self._stop.wait(self.lease / 4):
                zoo.heartbeat(self.owner, self.lease)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class _Serial:
    """Runs each job in this process when it is collected (one worker)."""

    def __init__(self) -> None:
        self._jobs: list[Job] = []

    busy = property(lambda self: len(self._jobs))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._jobs.clear()

    def submit(self, job: Job) -> None:
        self._jobs.append(job)

    def next(self, timeout: float | None = None) -> tuple[Job, JobResult]:
        job = self._jobs.pop(0)
        return job, run_job(job)


class _Pool:
    """A pool of spawned worker processes that exit when this process dies."""

    def __init__(self, workers: int) -> None:
        self._pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_exit_with_parent, initargs=(os.getpid(),))
        self._pending: dict = {}

    busy = property(lambda self: len(self._pending))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=exc[0] is None, cancel_futures=True)

    def submit(self, job: Job) -> None:
        self._pending[self._pool.submit(run_job, job)] = job

    def next(self, timeout: float | None = None) -> tuple[Job, JobResult] | None:
        """The next finished job and its result, or None when none finished within ``timeout`` seconds."""
        finished, _ = wait(self._pending, timeout, return_when=FIRST_COMPLETED)
        if not finished:
            return None
        fut = next(iter(finished))
        return self._pending.pop(fut), fut.result()


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """In a pool worker: a daemon thread that ends the process once ``parent`` is gone (a killed
    parent's workers would otherwise finish their queue and then wait forever)."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(every)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class _Ray:
    """Ray tasks of one CPU each, on a cluster at ``address`` or a local instance; the tasks still
    running are cancelled when the build stops (a driver killed outright takes its tasks with it:
    Ray ends the tasks of a dead owner, and a local instance's reaper ends the instance)."""

    def __init__(self, workers: int, address: str | None) -> None:
        try:
            import ray
        except ImportError as e:
            raise ConfigError("the Ray executor needs Ray: pip install 'metavote[ray]'") from e
        self.ray, self.workers, self.address = ray, workers, address
        self._pending: dict = {}
        self._started = False

    busy = property(lambda self: len(self._pending))

    def __enter__(self):
        if not self.ray.is_initialized():
            self.ray.init(address=self.address, num_cpus=None if self.address else self.workers, include_dashboard=False, log_to_driver=False)
            self._started = True
        self._remote = self.ray.remote(num_cpus=1)(run_job)
        return self

    def __exit__(self, *exc) -> None:
        for ref in self._pending:
            self.ray.cancel(ref, force=True)
        self._pending.clear()
        if self._started:
            self.ray.shutdown()

    def submit(self, job: Job) -> None:
        self._pending[self._remote.remote(job)] = job

    def next(self, timeout: float | None = None) -> tuple[Job, JobResult] | None:
        ready, _ = self.ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        if not ready:
            return None
        ref = ready[0]
        return self._pending.pop(ref), self.ray.get(ref)
