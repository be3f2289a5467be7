"""The zoo as the product (issue 38): a traffic run. Users' 5-way CIFAR-100 tasks arrive one after another; each is
pruned by `prune --method auto` at J = 20 and saved into a writable layer on the published 20-record zoo, while
`zoo refine` trains the saved records between arrivals on a budget a deployment could afford (``--refine`` times the
arrivals' own CPU seconds). At zoo sizes 20, 50, 100, 200 and 300 a fixed set of held-out test tasks, drawn from the
same arrival model, is pruned by `auto` and by MVP at J = 20 and 50 (not saved). The peer, Torch-Pruning magnitude, runs
once on the same test tasks at 10 to 1000 steps.

    python benchmarks/peer/traffic.py run --arrivals uniform --refine 1     # resumable: run it again after a stop
    python benchmarks/peer/traffic.py run --arrivals zipf --refine 1
    python benchmarks/peer/traffic.py run --arrivals uniform --refine 2
    python benchmarks/peer/traffic.py peer --arrivals uniform
    python benchmarks/peer/traffic.py peer --arrivals zipf
    python benchmarks/peer/traffic.py report                                 # benchmarks/peer/results/traffic.{json,md}, docs/figures/traffic.png

Arrival models: ``uniform`` draws 5 classes uniformly; ``zipf`` draws them by popularity p(k) ∝ 1/k over a seeded
order of the 100 classes (popular classes repeat, as real requests do). No task arrives twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import FIGURES, md_table, save  # noqa: E402

from metavote.bench import flops_ratio  # noqa: E402
from metavote.bench.harness import profile_method, run_variants  # noqa: E402
from metavote.data import Task, sample_tasks  # noqa: E402
from metavote.experiments import PUBLISHED_ZOO, context, prune, published_zoo, with_layer  # noqa: E402
from metavote.profiles import get_profile  # noqa: E402
from metavote.training import set_threads  # noqa: E402
from metavote.zoo import refine_zoo  # noqa: E402

OUT = Path("runs/traffic")
ARRIVALS, CHECKPOINTS, TEST_TASKS = 300, (20, 50, 100, 200, 300), 20
SEEDS = {"uniform": 3000, "zipf": 4000}
PEER_STEPS = (10, 20, 50, 100, 200, 500, 1000)
PROFILE = get_profile("cpu")


def draw(dataset, model: str, count: int, seed: int, exclude=()) -> list[Task]:
    """``count`` distinct 5-way tasks of the arrival model, none of ``exclude``."""
    if model == "uniform":
        return sample_tasks(dataset, 5, count, seed=seed, exclude=exclude)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset.classes))  # the popularity order: class order[k] has rank k + 1
    p = 1.0 / np.arange(1, len(order) + 1)
    p /= p.sum()
    seen, tasks = {t.id for t in exclude}, []
    while len(tasks) < count:
        picked = order[rng.choice(len(order), size=5, replace=False, p=p)]
        task = dataset.task([dataset.classes[i] for i in picked])
        if task.id not in seen:
            seen.add(task.id)
            tasks.append(task)
    return tasks


def task_plan(ctx, model: str, test_tasks: int = TEST_TASKS) -> tuple[list[Task], list[Task]]:
    """The arrivals and the held-out test tasks of an arrival model (none of the published zoo's tasks)."""
    zoo_tasks = [r.task for r in ctx.zoo.records(status=None)]
    test = draw(ctx.dataset, model, TEST_TASKS, SEEDS[model] + 1, exclude=zoo_tasks)[:test_tasks]
    return draw(ctx.dataset, model, ARRIVALS, SEEDS[model], exclude=[*zoo_tasks, *test]), test


def shared_classes(zoo, task: Task, neighbours) -> int | None:
    """How many classes the task shares with its nearest record (the first neighbour)."""
    if not neighbours:
        return None
    found = zoo.find(neighbours[0])
    return len(set(found[0].task.classes) & set(task.classes)) if found else None


def checkpoint(grown, test: list[Task], folder: Path, size: int) -> None:
    """`auto` and MVP at J = 20 and 50 on the test tasks, from the zoo as it stands; nothing saved."""
    def variants(data, task, log):
        for key in ("nearest", "mvp"):
            for j in (20, 50):
                m = profile_method(PROFILE, key, grown.dataset, iterations=j)
                family = "auto (nearest record)" if key == "nearest" else "MVP"
                yield f"{family} J={j}", {"family": family, "x": j, "size": size}, lambda m=m: grown.run(m, data)
    run_variants(grown, test, variants, folder / f"size-{size}", False, f"zoo size {size}")


def run(args) -> None:
    set_threads(args.threads)
    ctx = context(published_zoo(None) or PUBLISHED_ZOO, read_only=True)
    folder = Path(args.out) / f"{args.arrivals}-refine{args.refine:g}"
    grown = with_layer(ctx, folder / "layer")
    arrivals, test = task_plan(ctx, args.arrivals, args.test_tasks)
    arrivals = arrivals[: args.limit]
    log_path = folder / "arrivals.jsonl"
    done = [json.loads(line) for line in open(log_path)] if log_path.exists() else []
    credit = sum(a["train_seconds"] for a in done) * args.refine - sum(a["refine_seconds"] for a in done)
    base = len(ctx.zoo)
    with open(log_path, "a") as out:
        for i in range(len(done), len(arrivals)):
            if base + i in CHECKPOINTS:
                checkpoint(grown, test, folder, base + i)
            task = arrivals[i]
            started = time.process_time()
            result, _ = prune(grown, task.classes, "auto", progress=False)
            train = time.process_time() - started
            credit += args.refine * train
            refined, spent, refine_tflops = 0, 0.0, 0.0
            while args.refine and credit > 0:  # whole records, weakest first, while the arrivals' CPU time allows
                started = time.process_time()
                report = refine_zoo(grown.zoo.root, limit=1, progress=False)
                used = time.process_time() - started
                spent, credit = spent + used, credit - used
                if not report.refined:
                    break
                refined += 1
                refine_tflops += report.refined[0]["tflops"]
            row = {"i": i, "task": task.id, "classes": list(task.classes), "method": result.method, "accuracy": result.accuracy,
                   "tflops": result.costs.tflops, "search_tflops": result.params.get("search_tflops", 0.0),
                   "train_seconds": train, "refined": refined, "refine_seconds": spent, "refine_tflops": refine_tflops,
                   "neighbours": result.params.get("neighbours"), "shared": shared_classes(grown.zoo, task, result.params.get("neighbours"))}
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"{args.arrivals} {i + 1}/{len(arrivals)}: {100 * result.accuracy:.1f}%, shares {row['shared']}, refined {refined}")
    if base + len(arrivals) in CHECKPOINTS:
        checkpoint(grown, test, folder, base + len(arrivals))


def peer(args) -> None:
    set_threads(args.threads)
    ctx = context(published_zoo(None) or PUBLISHED_ZOO, read_only=True)
    _, test = task_plan(ctx, args.arrivals, args.test_tasks)

    def variants(data, task, log):
        for j in PEER_STEPS:
            m = profile_method(PROFILE, "tp-magnitude", iterations=j)
            yield f"{m.name} J={j}", {"family": m.name, "x": j}, lambda m=m: ctx.run(m, data)
    run_variants(ctx, test, variants, Path(args.out) / f"peer-{args.arrivals}", True, "peer")


def report(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx = context(published_zoo(None) or PUBLISHED_ZOO, read_only=True)
    results, text = {}, []
    out = Path(args.out)
    runs = sorted(p for p in out.glob("*-refine*") if (p / "arrivals.jsonl").exists())
    fig, (ax_acc, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4))
    for folder in runs:
        model = folder.name.split("-")[0]
        peer_path = out / f"peer-{model}" / "rows.jsonl"
        peers = [json.loads(line) for line in open(peer_path)] if peer_path.exists() else []
        arrivals = [json.loads(line) for line in open(folder / "arrivals.jsonl")]
        grown = with_layer(ctx, folder / "layer")
        table, points = [], []
        for size in CHECKPOINTS:
            path = folder / f"size-{size}" / "rows.jsonl"
            if not path.exists():
                continue
            rows = [json.loads(line) for line in open(path)]
            for r in rows:
                r["shared"] = shared_classes(grown.zoo, grown.dataset.task(r["classes"]), r["neighbours"])
            served = arrivals[: size - CHECKPOINTS[0]]
            zoo_tflops = sum(a["refine_tflops"] for a in served)
            point = {"size": size, "tasks": len({r["task"] for r in rows}), "refine_tflops": zoo_tflops}
            for family in ("auto (nearest record)", "MVP"):
                for j in (20, 50):
                    sel = [r for r in rows if r["family"] == family and r["x"] == j]
                    if not sel:
                        continue
                    key = f"{'auto' if family.startswith('auto') else 'mvp'}{j}"
                    point[key] = float(np.mean([r["accuracy"] for r in sel]))
                    if family.startswith("auto"):
                        point[f"shared{j}"] = float(np.mean([r["shared"] for r in sel if r["shared"] is not None]))
                    tasks = {r["task"] for r in sel}
                    if peers:
                        ratio = flops_ratio([*sel, *[p for p in peers if p["task"] in tasks]], family, "Torch-Pruning magnitude")
                        point[f"ratio_{key}"] = ratio[0]["ratio"]
                        point[f"bound_{key}"] = ratio[0]["bound"]
            points.append(point)
            table.append([size, point["tasks"], *[f"{100 * point[k]:.2f}" if k in point else "–" for k in ("auto20", "auto50", "mvp20", "mvp50")],
                          *[f"{point.get('bound_' + k, '').replace('=', '')}{point['ratio_' + k]:.1f}x" if "ratio_" + k in point else "–"
                            for k in ("auto20", "mvp20")], f"{point.get('shared20', float('nan')):.2f}", f"{zoo_tflops:.1f}"])
        results[folder.name] = {"checkpoints": points, "arrivals": len(arrivals)}
        text += [f"### {folder.name} ({len(arrivals)} arrivals)", "",
                 md_table(["zoo size", "test tasks", "auto J=20 (%)", "auto J=50", "MVP J=20", "MVP J=50", "ratio auto J=20", "ratio MVP J=20",
                           "classes shared with the nearest record", "refine TFLOPs so far"], table), ""]
        sizes = [p["size"] for p in points]
        ax_acc.plot(sizes, [100 * p.get("auto20", np.nan) for p in points], marker="o", label=f"auto J=20, {folder.name}")
        ax_ratio.plot(sizes, [p.get("ratio_auto20", np.nan) for p in points], marker="o", label=folder.name)
    ax_acc.set(xlabel="zoo size (records)", ylabel="test accuracy (%)", xscale="log")
    ax_ratio.set(xlabel="zoo size (records)", ylabel="FLOPs ratio at equal accuracy", xscale="log")
    ax_ratio.axhline(10, color="grey", ls="--", lw=0.8)
    for ax in (ax_acc, ax_ratio):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "traffic.png", dpi=120)
    save("traffic", results, "\n".join(text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)
    for name in ("run", "peer", "report"):
        p = sub.add_parser(name)
        p.add_argument("--arrivals", choices=tuple(SEEDS), default="uniform")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--out", default=str(OUT), help="where the runs' rows and layers go (default runs/traffic)")
        p.add_argument("--test-tasks", type=int, default=TEST_TASKS, help="held-out test tasks at each checkpoint (a smoke run: fewer)")
        if name == "run":
            p.add_argument("--refine", type=float, default=1.0, help="refine budget: this many times the arrivals' CPU seconds")
            p.add_argument("--limit", type=int, default=ARRIVALS, help="stop after this many arrivals")
    args = ap.parse_args()
    {"run": run, "peer": peer, "report": report}[args.stage](args)


if __name__ == "__main__":
    main()
