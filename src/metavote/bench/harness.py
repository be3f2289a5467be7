"""The evaluation harness: run methods on test tasks disjoint from the zoo's.

:func:`bench` runs every :class:`~metavote.methods.Method` on every test task and writes one row per
(task, method) to ``rows.jsonl`` as it goes, so an interrupted bench resumes where it stopped.
:func:`summarize` turns rows into the paper's table (accuracy mean ± std over tasks, training
TFLOPs, seconds per task), written as markdown and CSV by :func:`write_table`. Budgets come from
the one profile system (:mod:`metavote.profiles`).
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import ImageDataset, Task, sample_tasks
from ..errors import ConfigError
from ..methods import Method, PruneResult, create_method, method_settings
from ..models import Backbone, count_parameters, head_rows_for
from ..profiles import Profile
from ..similarity import wordnet_head_rows
from ..training import step_flops
from ..zoo import Zoo
from .ratios import flops_ratio


def profile_method(profile: Profile, key: str, dataset: ImageDataset | None = None, **settings) -> Method:
    """Method ``key`` at the profile's budget (``settings`` override it); a method that reads other
    tasks (MVP's embedding, Reptile's meta-training) gets ``dataset``."""
    return create_method(key, **profile.settings(key, **settings), **({"dataset": dataset} if "dataset" in method_settings(key) else {}))


def main_methods(profile: Profile, dataset: ImageDataset | None = None, also: Sequence[str] = (), baselines: bool = True,
                 peers: bool = True) -> list[Method]:
    """The main table: MVP at J, conventional pruning (IFP, or AHNP for a ViT) at 10·J and (where
    the profile says so) at J, random pruning at J, then (``peers``) the pipelines users run instead
    (Torch-Pruning's one-shot magnitude and Taylor and its iterative pruning) at J and 10·J, then
    (``baselines``) the profile's baselines at J (the paper's other rows: IHT-Reptile, MEST, DLTH for a
    ResNet; UVC, PoWER for a ViT; its random pruning), then the methods of ``also`` at J (e.g. ``nearest``)."""
    conventional = profile.upper_bound
    at_j = [create_method(conventional, **profile.settings(conventional, iterations=profile.iterations))] if profile.conventional_at_j else []
    make = functools.partial(profile_method, profile, dataset=dataset)
    extra = profile.extra if baselines else ()
    budgets = (profile.iterations, profile.conventional_factor * profile.iterations)
    peer_rows = [make(key, iterations=j) for key in (profile.peers if peers else ()) for j in budgets]
    return [make("mvp"), make(conventional), *at_j, make("random"), *peer_rows, *(make(key) for key in (*extra, *also))]


def bench_tasks(dataset: ImageDataset, zoo: Zoo, count: int, n_way: int = 5, seed: int = 1000) -> list[Task]:
    """``count`` seeded N-way tasks, none of them a task of the zoo."""
    return sample_tasks(dataset, n_way, count, seed=seed, exclude=[r.task for r in zoo.records(status=None)])


@dataclass
class BenchContext:
    """What every bench run shares: backbone, its class names (for head rows), dataset, zoo."""

    backbone: Backbone
    classes: list[str] | None
    dataset: ImageDataset
    zoo: Zoo
    wnids: list[str | None] | None = None
    """The WordNet ids of the backbone's head classes (ImageNet's, for EfficientNet-Lite0)."""
    head_map: str = "names"
    """How a task's classes find rows of the pre-trained head: ``names`` (the same class names,
    every class or none), ``wordnet`` (also the head classes that are the class or a kind of it,
    :func:`~metavote.similarity.wordnet_head_rows`; classes with none are imprinted)."""

    def head_rows(self, task: Task) -> list | None:
        exact = head_rows_for(self.classes, task.classes) if self.classes else None
        if exact is not None or self.head_map == "names" or not self.wnids:
            return exact
        if self.head_map != "wordnet":
            raise ConfigError(f"head_map must be 'names' or 'wordnet', got {self.head_map!r}")
        wnids = dict(zip(self.dataset.classes, self.dataset.wnids))
        return wordnet_head_rows(self.wnids, task.classes, wnids)

    def run(self, method: Method, data, progress: bool = False) -> PruneResult:
        """``method`` on one task of this context's dataset, with the task's head rows."""
        return method.run(self.backbone, data, self.zoo, self.head_rows(data.task), progress=progress)


def _row(task: Task, label: str, result: PruneResult, extra: dict | None = None) -> dict:
    return {"task": task.id, "classes": list(task.classes), "method": label, "accuracy": result.accuracy,
            "tflops": result.costs.tflops, "seconds": result.costs.seconds, "iterations": result.costs.iterations,
            "search_seconds": result.params.get("search_seconds", 0.0), "search_tflops": result.params.get("search_tflops", 0.0),
            "parameters": count_parameters(result.model),
            "neighbours": result.params.get("neighbours"), "inference_gflops": step_flops(result.model, 1, backward=False) / 1e9,
            **{k: result.params[k] for k in ("meta_tflops", "meta_seconds", "meta_tasks") if k in result.params}, **(extra or {})}


PEER_FAMILY = "Torch-Pruning"
"""How the peer's rows are named (``Torch-Pruning magnitude``, ``... Taylor``, ``... iterative``)."""


PAPER_PIPELINES = ("IFP", "AHNP")
"""The paper's conventional methods: IFP for a CNN, AHNP for a ViT."""


def pipeline_families(rows: Sequence[dict], reference: str | None = None) -> list[str]:
    """The conventional pipelines the rows hold, in row order: ``reference`` (the paper's method; by
    default whichever of IFP and AHNP the rows hold) and Torch-Pruning's; the strongest at each
    accuracy is their upper envelope."""
    papers = PAPER_PIPELINES if reference is None else (reference,)
    return [f for f in dict.fromkeys(r["family"] for r in rows) if f in papers or f.startswith(PEER_FAMILY)]


def ratio_notes(rows: Sequence[dict]) -> list[str]:
    """A line per zoo method of the table (MVP, the nearest record) at its J: the FLOPs ratio at equal
    accuracy against the strongest conventional pipeline (the upper envelope of the paper's method,
    IFP or AHNP, and the Torch-Pruning rows over J and 10 J), then against the paper's method alone
    (the paper's comparison) where the table has it."""
    families = list(dict.fromkeys(r["family"] for r in rows))
    conventional = pipeline_families(rows)
    if not conventional:
        return []
    paper = next((f for f in conventional if f in PAPER_PIPELINES), None)
    lines = []
    for family in (f for f in families if f in ("MVP", "nearest record")):
        own = flops_ratio(rows, family, paper) if paper else None
        for k, strongest in enumerate(flops_ratio(rows, family, conventional)):
            head = f"{family} (J={strongest['x']}, {100 * strongest['accuracy']:.2f}%): "
            alone = f"{own[k]['bound'].replace('=', '')}{own[k]['ratio']:.1f}x" if own else ""
            if conventional == [paper]:  # no peer rows: the paper's comparison only
                lines.append(f"{head}{alone} fewer training FLOPs than {paper} at equal accuracy (interpolated)")
                continue
            names = " and ".join([paper] * bool(paper) + [PEER_FAMILY])
            lines.append(f"{head}{strongest['bound'].replace('=', '')}{strongest['ratio']:.1f}x fewer training FLOPs than the strongest "
                         f"conventional pipeline at equal accuracy ({names} at J and 10 J, interpolated)"
                         + (f"; {alone} against {paper} alone" if own else ""))
    return lines


def one_off_costs(rows: Sequence[dict]) -> list[str]:
    """A line per method that paid a one-off cost outside its rows (IHT-Reptile's meta-training)."""
    lines = []
    for method in dict.fromkeys(r["method"] for r in rows if r.get("meta_tflops") is not None):
        r = next(r for r in rows if r["method"] == method and r.get("meta_tflops") is not None)
        lines.append(f"{method}: meta-training paid once (like the zoo), {r['meta_tflops']:.3f} TFLOPs and {r['meta_seconds']:.0f} s "
                     f"on {r['meta_tasks']} zoo tasks; not in the per-task columns")
    return lines


class RowLog:
    """Rows appended to ``<out>/rows.jsonl`` as they are made; rows already there are kept."""

    def __init__(self, out: str | os.PathLike | None) -> None:
        self.path = Path(out) / "rows.jsonl" if out is not None else None
        self.rows: list[dict] = []
        if self.path is not None and self.path.exists():
            self.rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def has(self, task: Task, label: str) -> bool:
        return any(r["task"] == task.id and r["method"] == label for r in self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def bench(ctx: BenchContext, methods: Sequence[Method], tasks: Sequence[Task], out: str | os.PathLike | None = None,
          progress: bool = True) -> list[dict]:
    """Run every method on every task; returns one row per (task, method), resuming from ``out``.
    Rows carry ``family`` (the method's name) and ``x`` (its iterations) for :func:`plot_ablation`."""
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two methods share a label: {labels}")

    def variants(data, task, log):
        for m in methods:
            yield m.label, {"family": m.name, "x": m.iterations}, lambda m=m: ctx.run(m, data)

    return [r for r in run_variants(ctx, tasks, variants, out, progress, "bench") if r["method"] in labels]


def summarize(rows: Sequence[dict], key: str = "method") -> list[dict]:
    """Per ``key`` (in first-seen order): accuracy mean ± std over tasks, mean TFLOPs and seconds."""
    out = []
    for value in dict.fromkeys(r[key] for r in rows):
        sel = [r for r in rows if r[key] == value]
        acc = np.array([r["accuracy"] for r in sel])
        out.append({key: value, "tasks": len(sel), "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
                    "tflops": float(np.mean([r["tflops"] for r in sel])), "seconds": float(np.mean([r["seconds"] for r in sel])),
                    "search_seconds": float(np.mean([r.get("search_seconds", 0.0) for r in sel])),
                    "parameters": float(np.mean([r["parameters"] for r in sel])),
                    "inference_gflops": float(np.mean([r.get("inference_gflops", np.nan) for r in sel]))})
    return out


def markdown_table(summary: Sequence[dict], key: str = "method") -> str:
    lines = [f"| {key} | tasks | accuracy (%) | training TFLOPs | seconds per task | + neighbour search (s) | parameters | "
             "inference GFLOPs per image |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        search = f"{s['search_seconds']:.1f}" if s["search_seconds"] else "–"
        inference = f"{s['inference_gflops']:.3g}" if np.isfinite(s.get("inference_gflops", np.nan)) else "–"  # 3 significant digits: small models too
        lines.append(f"| {s[key]} | {s['tasks']} | {100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f} | "
                     f"{s['tflops']:.3f} | {s['seconds']:.1f} | {search} | {s['parameters']:,.0f} | {inference} |")
    return "\n".join(lines)


def size_notes(summary: Sequence[dict], key: str = "method", tolerance: float = 0.01) -> list[str]:
    """The table's size check: a line per row whose parameter count or inference FLOPs lie more than
    ``tolerance`` from the table's most common ones (every method prunes to the same widths, so a
    row off them compares a different model), or one line saying every row is within it."""
    params = [round(s["parameters"]) for s in summary]
    gflops = [s.get("inference_gflops", np.nan) for s in summary]
    common_params = max(set(params), key=params.count)
    finite = [g for g in gflops if np.isfinite(g)]
    common_gflops = max(set(finite), key=finite.count) if finite else None
    lines = []
    for s, p, g in zip(summary, params, gflops):
        off = [f"{p:,} parameters"] if abs(p / common_params - 1) > tolerance else []
        if common_gflops and np.isfinite(g) and abs(g / common_gflops - 1) > tolerance:
            off.append(f"{g:.3g} inference GFLOPs")
        if off:
            lines.append(f"size check: {s[key]} has {' and '.join(off)}, more than {tolerance:.0%} off the table's {common_params:,}")
    return lines or [f"size check: every row has {common_params:,} parameters (within {tolerance:.0%})"
                     + (f" and {common_gflops:.3g} inference GFLOPs" if common_gflops else "")]


def write_table(summary: Sequence[dict], out: str | os.PathLike, title: str, key: str = "method", notes: str = "") -> list[Path]:
    """``summary.md`` (a titled markdown table, ``notes`` after it) and ``summary.csv`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "summary.md"
    md.write_text(f"{title}\n\n{markdown_table(summary, key)}{notes}\n")
    path = out / "summary.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    return [md, path]


def run_variants(ctx: BenchContext, tasks: Sequence[Task], variants: Callable, out, progress: bool, desc: str) -> list[dict]:
    """Run ``variants(data, task, log) -> iterable of (label, extra, thunk)`` on each task; a thunk
    runs only when its (task, label) row is not logged yet, so a stopped run resumes."""
    log = RowLog(out)
    for task in tqdm(tasks, desc=desc, unit="task", disable=not progress):
        data = ctx.dataset.load_task(task)
        for label, extra, run in variants(data, task, log):
            if not log.has(task, label):
                log.add(_row(task, label, run(), extra))
    wanted = {t.id for t in tasks}
    return [r for r in log.rows if r["task"] in wanted]
