"""Refining a zoo: weak records trained further on their own small models, so a zoo improves with use.

A zoo grows by every ``prune --save-to``, and those records were trained for the user's budget
(J = 20 for ``auto``), far below the zoo's own (IFP at 1000 steps). :func:`refine_zoo` continues
the training of such a record on its compact model (its Omega and weights unchanged in shape) up
to the zoo's budget, on the record's own task, with the record's recipe (lr, batch size,
optimizer; a fresh cosine schedule), then swaps the record's file in one transaction
(:meth:`~metavote.zoo.Zoo.update_model`): readers are never blocked and never see a half-written
record. Each record is claimed first, like a build's task, so several refiners share a zoo; a run
stopped at any point (``minutes``, a kill) loses at most the record in progress, and the next run
goes on with the records still weak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..data import load_dataset
from ..errors import ConfigError
from ..training import Costs, Timer, evaluate, finetune, recalibrate_bn
from .build import _Heartbeat
from .store import Zoo, ZooRecord, new_owner


def record_budget(record: ZooRecord) -> int:
    """The optimizer steps a record's model has had on its task: its method's iterations plus any refinement."""
    return int(record.params.get("iterations") or 0) + int(record.params.get("refined") or 0)


def zoo_budget(zoo: Zoo) -> int:
    """The zoo's own budget: the median :func:`record_budget` of its source method's records (IFP at 1000 for the published zoo)."""
    budgets = [record_budget(r) for r in zoo.records(method=zoo.source_method)]
    if not budgets:
        raise ConfigError(f"zoo {zoo.root} has no records of its source method {zoo.source_method}; name the budget (--below J)")
    return int(np.median(budgets))


def weak_records(zoo: Zoo, below: int | None = None) -> list[ZooRecord]:
    """The zoo's own ok records (not its read-only layers') trained for fewer than ``below`` steps
    (default: :func:`zoo_budget`), weakest first."""
    below = zoo_budget(zoo) if below is None else below
    own = [r for r in zoo.records() if r.origin == zoo.root and record_budget(r) < below]
    return sorted(own, key=lambda r: (record_budget(r), r.created))


@dataclass
class RefineReport:
    refined: list[dict] = field(default_factory=list)
    """Per record refined: id, steps added, budget and accuracy before and after."""
    busy: list[str] = field(default_factory=list)
    """Records another refiner held, or that changed while this one trained them."""
    left: int = 0
    """Weak records not reached (``limit`` or ``minutes``)."""
    cleaned: int = 0
    """Superseded files deleted at the start."""
    seconds: float = 0.0


def refine_zoo(zoo_root, below: int | None = None, limit: int | None = None, minutes: float | None = None, lease: float = 120.0,
               grace: float = 3600.0, progress: bool = True, device: str = "cpu") -> RefineReport:
    """Train the zoo's weak records (:func:`weak_records`) up to ``below`` steps each (default the zoo's
    own budget), weakest first, at most ``limit`` of them, starting no new one after ``minutes``.

    Each record is loaded (:meth:`~metavote.zoo.Zoo.load`), fine-tuned ``below - budget`` steps on its
    task's training split with its recipe, its BatchNorm statistics re-estimated as its method does,
    evaluated on the task's test split and written back (:meth:`~metavote.zoo.Zoo.update_model`);
    its params gain ``refined`` (steps added in all) and ``accuracy_before_refine``, its FLOPs and
    seconds the refinement's. Files superseded more than ``grace`` seconds ago are deleted first."""
    report = RefineReport()
    start = time.perf_counter()
    owner = new_owner()
    with Zoo(zoo_root, device=device) as zoo, _Heartbeat(zoo_root, owner, lease):
        report.cleaned = zoo.clean_superseded(grace)
        below = zoo_budget(zoo) if below is None else below
        todo = weak_records(zoo, below)
        datasets: dict = {}
        bar = tqdm(total=len(todo) if limit is None else min(limit, len(todo)), desc="zoo refine", unit="record", disable=not progress)
        try:
            for i, record in enumerate(todo):
                if (limit is not None and len(report.refined) >= limit) or (minutes is not None and time.perf_counter() - start > 60 * minutes):
                    report.left = len(todo) - i
                    break
                claim = f"{record.record_id}#refine"
                if zoo.claim(claim, owner, lease) != "claimed":
                    report.busy.append(record.record_id)
                    continue
                try:
                    done = _refine_one(zoo, record, below, datasets)
                finally:
                    zoo.release(owner, claim)
                if done is None:
                    report.busy.append(record.record_id)
                else:
                    report.refined.append(done)
                    bar.update(1)
                    bar.set_postfix(last=f"{100 * done['before']:.1f}->{100 * done['after']:.1f}%", refresh=False)
        finally:
            bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _refine_one(zoo: Zoo, record: ZooRecord, below: int, datasets: dict) -> dict | None:
    name = record.task.dataset
    model, _ = zoo.load(record)
    if name not in datasets:
        datasets[name] = load_dataset(*zoo.dataset_source(name)).resized(model.input_size)  # the zoo's input size
    data = datasets[name].load_task(record.task)
    p = record.params
    steps = below - record_budget(record)
    costs = Costs()
    seed = int(p.get("seed") or 0) + record_budget(record)  # new batches, not the ones the record saw first
    with Timer() as timer:
        finetune(model, data, steps, float(p.get("lr") or 0.01), int(p.get("batch_size") or 64), seed, costs,
                 f"refine {record.record_id}", False, p.get("optimizer") or "sgd")
        recalibrate_bn(model, data, int(p.get("refresh_bn") or 0), int(p.get("batch_size") or 64), seed, costs)
        accuracy = evaluate(model, data.test_images, data.test_labels)
    params = p | {"refined": int(p.get("refined") or 0) + steps,
                  "accuracy_before_refine": p.get("accuracy_before_refine", record.accuracy)}
    updated = zoo.update_model(record, model, params, accuracy, float(record.flops or 0) + costs.flops,
                               float(record.seconds or 0) + timer.seconds)
    if updated is None:
        return None
    return {"record": record.record_id, "steps": steps, "budget_before": record_budget(record), "budget": record_budget(updated),
            "before": record.accuracy, "after": accuracy, "tflops": costs.tflops, "seconds": timer.seconds}
