"""The evaluation harness: run methods on test tasks disjoint from the zoo's, and the ablations.

:func:`bench` runs every :class:`~metavote.methods.Method` on every test task and writes one row per
(task, method) to ``rows.jsonl`` as it goes, so an interrupted bench resumes where it stopped.
:func:`summarize` turns rows into the paper's table (accuracy mean ± std over tasks, training
TFLOPs, seconds per task), written as markdown and CSV by :func:`write_table`.

Profiles (``BENCH_PROFILES``) fix the budget. ``paper``: r = 0.9, MVP J = 100 at batch 128, IFP
at 10·J. ``cpu``: the CPU-profile zoo's recipe, r = 0.8 at batch 64 with MVP J = 20 and IFP at
10·J = 200 (exactly how the zoo's records were pruned).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .data import ImageDataset, Task, sample_tasks
from .errors import ConfigError
from .methods import IFP, MVP, Method, RandomPruning
from .models import ResNet, count_parameters, head_rows_for
from .pruning import PruneResult
from .similarity import make_similarity, nearest
from .zoo import Zoo, ZooRecord

BENCH_PROFILES: dict[str, dict] = {
    "paper": {"ratio": 0.9, "iterations": 100, "lr": 0.01, "batch_size": 128, "ifp_lr": 0.005},
    "cpu": {"ratio": 0.8, "iterations": 20, "lr": 0.01, "batch_size": 64, "ifp_lr": 0.01},
}


def bench_profile(name: str, **overrides) -> dict:
    """A profile's budget with overrides (``None`` ignored); an ``lr`` override sets IFP's too."""
    if name not in BENCH_PROFILES:
        raise ConfigError(f"unknown bench profile {name!r}; choose from {', '.join(BENCH_PROFILES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "lr" in overrides:
        overrides.setdefault("ifp_lr", overrides["lr"])
    unknown = set(overrides) - set(BENCH_PROFILES[name])
    if unknown:
        raise ConfigError(f"unknown budget setting(s) {', '.join(sorted(unknown))}")
    return BENCH_PROFILES[name] | overrides


def ratio_for(n_way_ratio: float, profile: str) -> float:
    """The paper's ratio for a task size, mapped to a profile: at width 0.5 (``cpu``) keeping twice
    the fraction keeps the same channel counts, so r_cpu = 1 - 2 (1 - r)."""
    return n_way_ratio if profile == "paper" else round(1 - 2 * (1 - n_way_ratio), 4)


def main_methods(profile: dict, dataset: ImageDataset | None = None) -> list[Method]:
    """The main table: MVP at J, IFP at J and at 10·J, random pruning at J."""
    r, j, b, lr = profile["ratio"], profile["iterations"], profile["batch_size"], profile["lr"]
    return [
        MVP(r, j, lr, b, dataset=dataset),
        IFP(r, 10 * j, profile["ifp_lr"], b),
        IFP(r, j, profile["ifp_lr"], b),
        RandomPruning(r, j, lr, b),
    ]


def bench_tasks(dataset: ImageDataset, zoo: Zoo, count: int, n_way: int = 5, seed: int = 1000) -> list[Task]:
    """``count`` seeded N-way tasks, none of them a task of the zoo."""
    return sample_tasks(dataset, n_way, count, seed=seed, exclude=[r.task for r in zoo.records(status=None)])


@dataclass
class BenchContext:
    """What every bench run shares: backbone, its class names (for head rows), dataset, zoo."""

    backbone: ResNet
    classes: list[str] | None
    dataset: ImageDataset
    zoo: Zoo

    def head_rows(self, task: Task) -> list[int] | None:
        return head_rows_for(self.classes, task.classes) if self.classes else None


def _row(task: Task, label: str, result: PruneResult, extra: dict | None = None) -> dict:
    return {"task": task.id, "classes": list(task.classes), "method": label, "accuracy": result.accuracy,
            "tflops": result.costs.tflops, "seconds": result.costs.seconds, "iterations": result.costs.iterations,
            "search_seconds": result.params.get("search_seconds", 0.0), "parameters": count_parameters(result.model),
            "neighbours": result.params.get("neighbours"), **(extra or {})}


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
            yield m.label, {"family": m.name, "x": m.iterations}, lambda m=m: m.run(ctx.backbone, data, ctx.zoo, ctx.head_rows(task))

    return [r for r in _ablate(ctx, tasks, variants, out, progress, "bench") if r["method"] in labels]


def summarize(rows: Sequence[dict], key: str = "method") -> list[dict]:
    """Per ``key`` (in first-seen order): accuracy mean ± std over tasks, mean TFLOPs and seconds."""
    out = []
    for value in dict.fromkeys(r[key] for r in rows):
        sel = [r for r in rows if r[key] == value]
        acc = np.array([r["accuracy"] for r in sel])
        out.append({key: value, "tasks": len(sel), "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
                    "tflops": float(np.mean([r["tflops"] for r in sel])), "seconds": float(np.mean([r["seconds"] for r in sel])),
                    "search_seconds": float(np.mean([r.get("search_seconds", 0.0) for r in sel])),
                    "parameters": float(np.mean([r["parameters"] for r in sel]))})
    return out


def markdown_table(summary: Sequence[dict], key: str = "method") -> str:
    lines = [f"| {key} | tasks | accuracy (%) | training TFLOPs | seconds per task | + neighbour search (s) | parameters |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        search = f"{s['search_seconds']:.1f}" if s["search_seconds"] else "–"
        lines.append(f"| {s[key]} | {s['tasks']} | {100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f} | "
                     f"{s['tflops']:.3f} | {s['seconds']:.1f} | {search} | {s['parameters']:,.0f} |")
    return "\n".join(lines)


def write_table(summary: Sequence[dict], out: str | os.PathLike, title: str, key: str = "method") -> list[Path]:
    """``summary.md`` (a titled markdown table) and ``summary.csv`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "summary.md"
    md.write_text(f"{title}\n\n{markdown_table(summary, key)}\n")
    path = out / "summary.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    return [md, path]


# ----------------------------------------------------------------------------- ablations


def ranked_pool(ctx: BenchContext, data, similarity: str, zoo_method: str = "ifp") -> list[ZooRecord]:
    """The whole pool of zoo records ranked by a similarity to the target, best first."""
    pool = ctx.zoo.records(method=zoo_method)
    measure = make_similarity(similarity, backbone=ctx.backbone, dataset=ctx.dataset)
    return [r for r, _ in nearest(ctx.zoo, data, len(pool) - (data.task.id in {p.task.id for p in pool}), measure, records=pool)]


def _ablate(ctx: BenchContext, tasks: Sequence[Task], variants: Callable, out, progress: bool, desc: str) -> list[dict]:
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


def ablate_iterations(ctx: BenchContext, tasks: Sequence[Task], profile: dict, iterations=(10, 20, 50, 100, 200), out=None, progress=True) -> list[dict]:
    """MVP and IFP at each iteration budget (the neighbour search runs once per task)."""
    r, b = profile["ratio"], profile["batch_size"]

    def variants(data, task, log):
        neighbours = None
        for j in iterations:
            ifp_m = IFP(r, j, profile["ifp_lr"], b)
            yield f"IFP J={j}", {"family": "IFP", "x": j}, lambda m=ifp_m: m.run(ctx.backbone, data, ctx.zoo, ctx.head_rows(task))
            if neighbours is None and not log.has(task, f"MVP J={j}"):
                neighbours = ranked_pool(ctx, data, "leep")[:3]
            mvp_m = MVP(r, j, profile["lr"], b)
            yield f"MVP J={j}", {"family": "MVP", "x": j}, lambda m=mvp_m: m.run(ctx.backbone, data, ctx.zoo, ctx.head_rows(task), records=neighbours)

    return _ablate(ctx, tasks, variants, out, progress, "iterations")


def ablate_neighbours(ctx: BenchContext, tasks: Sequence[Task], profile: dict, counts=range(1, 9), out=None, progress=True) -> list[dict]:
    """MVP at J with the 1 … 8 nearest neighbours by LEEP."""
    method = MVP(profile["ratio"], profile["iterations"], profile["lr"], profile["batch_size"])
    available = len(ctx.zoo.records(method="ifp"))
    if max(counts) > available:
        raise ConfigError(f"the zoo has {available} IFP records; the neighbours ablation needs at least {max(counts)}")

    def variants(data, task, log):
        ranked = None
        for n in counts:
            if ranked is None and not log.has(task, f"N={n}"):
                ranked = ranked_pool(ctx, data, "leep")
            yield f"N={n}", {"family": "MVP", "x": n}, lambda n=n: method.run(ctx.backbone, data, ctx.zoo, ctx.head_rows(task), records=ranked[:n])

    return _ablate(ctx, tasks, variants, out, progress, "neighbours")


def ablate_groups(ctx: BenchContext, tasks: Sequence[Task], profile: dict, similarities=("leep", "wordnet"), groups: int = 5,
                  neighbours: int = 3, out=None, progress=True) -> list[dict]:
    """MVP at J from the ``neighbours`` best tasks of each similarity group (1 = most similar):
    the pool ranked by the similarity is cut into ``groups`` equal parts."""
    method = MVP(profile["ratio"], profile["iterations"], profile["lr"], profile["batch_size"])

    def variants(data, task, log):
        for sim in similarities:
            parts = None
            for g in range(1, groups + 1):
                if parts is None and not log.has(task, f"{sim} group {g}"):
                    parts = np.array_split(np.array(ranked_pool(ctx, data, sim), dtype=object), groups)
                yield (f"{sim} group {g}", {"family": sim, "x": g},
                       lambda g=g: method.run(ctx.backbone, data, ctx.zoo, ctx.head_rows(task), records=list(parts[g - 1][:neighbours])))

    return _ablate(ctx, tasks, variants, out, progress, "groups")


def ablate_task_size(ctx: BenchContext, profile_name: str, count: int, sizes=((3, 0.95), (10, 0.85)), seed: int = 1000, out=None,
                     progress=True, **overrides) -> list[dict]:
    """N-way tasks at the paper's ratio for N (mapped to the profile): MVP at J against IFP at J and
    at 10·J. Neighbours come from the (5-way) zoo: votes are over units, whatever the task size."""
    profile = bench_profile(profile_name, **{k: v for k, v in overrides.items() if k != "ratio"})
    rows = []
    for n_way, paper_ratio in sizes:
        r = ratio_for(paper_ratio, profile_name)
        p = profile | {"ratio": r}
        tasks = bench_tasks(ctx.dataset, ctx.zoo, count, n_way, seed)
        methods = main_methods(p, ctx.dataset)[:3]

        def variants(data, task, log, methods=methods, n_way=n_way, r=r):
            for m in methods:
                yield f"{n_way}-way r={r:g} {m.label}", {"family": m.label, "x": n_way, "ratio": r}, \
                    lambda m=m: m.run(ctx.backbone, data, ctx.zoo, ctx.head_rows(task))

        rows += _ablate(ctx, tasks, variants, out, progress, f"{n_way}-way")
    return rows


def ablate_importance(ctx: BenchContext, other: Zoo, tasks: Sequence[Task], profile: dict, neighbours: int = 3, out=None,
                      progress=True) -> list[dict]:
    """MVP at J with neighbours from two zoos of the same backbone pruned with different importance
    criteria (e.g. activation and Taylor), each restricted to the tasks both zoos hold."""
    if other.fingerprint != ctx.zoo.fingerprint:
        raise ConfigError(f"zoo {other.root} was built from another backbone than zoo {ctx.zoo.root}")
    common = {r.task.id for r in ctx.zoo.records(method="ifp")} & {r.task.id for r in other.records(method="ifp")}
    if len(common) < neighbours:
        raise ConfigError(f"the two zoos share {len(common)} tasks; the importance ablation needs at least {neighbours}")
    zoos = {}
    for zoo in (ctx.zoo, other):
        name = str(zoo.records(method="ifp")[0].params.get("importance", zoo.root.name))
        zoos[name if name not in zoos else f"{name} ({zoo.root.name})"] = zoo
    method = MVP(profile["ratio"], profile["iterations"], profile["lr"], profile["batch_size"])
    leep = make_similarity("leep")

    def variants(data, task, log):
        for name, zoo in zoos.items():
            pool = [r for r in zoo.records(method="ifp") if r.task.id in common]
            yield (f"{name} zoo", {"family": "MVP", "x": name},
                   lambda zoo=zoo, pool=pool: method.run(ctx.backbone, data, zoo, ctx.head_rows(task),
                                                         records=[r for r, _ in nearest(zoo, data, neighbours, leep, records=pool)]))

    return _ablate(ctx, tasks, variants, out, progress, "importance")


def ablate_unseen(ctx: BenchContext, target: ImageDataset, count: int, profile: dict, seed: int = 1000, out=None, progress=True) -> list[dict]:
    """Target tasks from a dataset the backbone and the zoo never saw (5-way, seeded): MVP at J
    (neighbours from the zoo by LEEP, head by imprinting) against IFP at J and at 10·J."""
    if set(target.classes) & set(ctx.dataset.classes):
        raise ConfigError(f"{target.name} shares classes with the zoo's dataset; the unseen ablation needs new classes")
    tasks = sample_tasks(target, min(5, target.num_classes), count, seed=seed)
    unseen = BenchContext(ctx.backbone, ctx.classes, target, ctx.zoo)  # head_rows: None, the classes are new
    return bench(unseen, main_methods(profile)[:3], tasks, out, progress)


def plot_ablation(rows: Sequence[dict], path: str | os.PathLike, title: str, xlabel: str, logx: bool = False, bars: bool = False) -> Path:
    """Accuracy (mean ± std over tasks) against ``x``, one line (or bar set) per ``family``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in rows))
    xs = sorted({r["x"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(families)
    for k, fam in enumerate(families):
        mean = [100 * np.mean([r["accuracy"] for r in rows if r["family"] == fam and r["x"] == x] or [np.nan]) for x in xs]
        std = [100 * np.std([r["accuracy"] for r in rows if r["family"] == fam and r["x"] == x] or [np.nan]) for x in xs]
        if bars:
            pos = np.arange(len(xs)) + (k - (len(families) - 1) / 2) * width
            ax.bar(pos, mean, width, yerr=std, capsize=3, label=fam)
        else:
            ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=fam)
    if bars:
        ax.set_xticks(np.arange(len(xs)), [str(x) for x in xs])
        low = min(100 * (np.mean(a) - np.std(a)) for fam in families for x in xs
                  if (a := [r["accuracy"] for r in rows if r["family"] == fam and r["x"] == x]))
        ax.set_ylim(bottom=max(0.0, 10 * np.floor(low / 10) - 10))  # bars of close heights stay readable
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
    tasks = len({r["task"] for r in rows})
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=f"{title} ({tasks} tasks, mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
