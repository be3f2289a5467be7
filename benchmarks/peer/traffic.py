"""The zoo as the product (issue 38): a traffic run. Users' 5-way CIFAR-100 tasks arrive one after another; each is
pruned by `prune --method auto` at J = 20 and saved into a writable layer on the published 20-record zoo, while
`zoo refine` trains the saved records between arrivals on a budget a deployment could afford (``--refine`` times the
arrivals' own CPU seconds). At zoo sizes 20, 50, 100, 200 and 300 a fixed set of held-out test tasks, drawn from the
same arrival model, is pruned by `auto` and by MVP at J = 20 and 50 (not saved). The peer, Torch-Pruning magnitude, runs
once on the same test tasks at 10 to 1000 steps (for the uniform model the test tasks are auto_budget's, whose
Torch-Pruning rows are reused). The ratio is taken against the strongest pipeline: the upper envelope of every peer row.

    python benchmarks/peer/traffic.py run --arrivals uniform --refine 1     # resumable: run it again after a stop
    python benchmarks/peer/traffic.py run --arrivals zipf --refine 1
    python benchmarks/peer/traffic.py run --arrivals uniform --refine 2
    python benchmarks/peer/traffic.py peer --arrivals uniform
    python benchmarks/peer/traffic.py peer --arrivals zipf
    python benchmarks/peer/traffic.py serving --arrivals uniform             # item 2 (and 3: ann or exhaustive LEEP), validation tasks
    python benchmarks/peer/traffic.py writers                                # item 4: tasks per hour with 1, 2 and 4 writers
    python benchmarks/peer/traffic.py report                                 # benchmarks/peer/results/traffic.{json,md}, docs/figures/traffic.png
    metavote zoo pack runs/traffic/uniform-refine1/layer grown-uniform.tar   # item 5: the grown zoo as one bundle (every record)

Arrival models: ``uniform`` draws 5 classes uniformly; ``zipf`` draws them by popularity p(k) ∝ 1/k over a seeded
order of the 100 classes (popular classes repeat, as real requests do). No task arrives twice.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import FIGURES, md_table, mean_se, paired, save  # noqa: E402

from metavote.bench import flops_ratio  # noqa: E402
from metavote.bench.harness import RowLog, pipeline_families, profile_method, run_variants  # noqa: E402
from metavote.data import Task, sample_tasks  # noqa: E402
from metavote.experiments import PUBLISHED_ZOO, context, prune, published_zoo, with_layer  # noqa: E402
from metavote.profiles import get_profile  # noqa: E402
from metavote.training import set_threads  # noqa: E402
from metavote.zoo import Zoo, refine_zoo  # noqa: E402

OUT = Path("runs/traffic")
ARRIVALS, CHECKPOINTS, TEST_TASKS = 300, (20, 50, 100, 200, 300), 20
SEEDS = {"uniform": 3000, "zipf": 4000}
TEST_SEEDS = {"uniform": 1000, "zipf": 4001}  # uniform: the main table's 20 test tasks (bench_tasks, seed 1000), so the peer rows of
# auto_budget (benchmarks/peer/results/auto_budget.json: Torch-Pruning at 10 to 1000 steps) are the same runs on the same tasks
PEER_STEPS = (10, 20, 50, 100, 200, 500, 1000)
VALIDATION_SEEDS = {"uniform": 3002, "zipf": 4002}
WRITER_SEED = 3003
AUTO_BUDGET = Path(__file__).resolve().parent / "results" / "auto_budget.json"
PROFILE = get_profile("cpu")
SERVING = [  # item 2's variants at J = 20: (label, method, settings)
    ("nearest record, every record", "nearest", {}),
    ("nearest record, every record, quality 1", "nearest", {"quality": 1.0}),
    ("nearest record, IFP records only", "nearest", {"zoo_method": "ifp"}),
    ("MVP, IFP records only (the paper)", "mvp", {}),
    ("MVP, every record", "mvp", {"zoo_method": "all"}),
    ("MVP, every record, quality 1", "mvp", {"zoo_method": "all", "quality": 1.0}),
    ("MVP, every record, 5 neighbours", "mvp", {"zoo_method": "all", "neighbours": 5}),
    ("nearest record, every record, WordNet", "nearest", {"similarity": "wordnet"}),
    ("MVP, every record, WordNet", "mvp", {"zoo_method": "all", "similarity": "wordnet"}),
    ("nearest record, every record, exhaustive LEEP", "nearest", {"similarity": "leep"}),
]
LEEP = SERVING[-1][0]  # item 3: against the default's ann search (SERVING[0])


def published():
    """The published zoo, read-only: every stage starts from it."""
    return context(published_zoo(None) or PUBLISHED_ZOO, read_only=True)


def zoo_tasks(ctx) -> list[Task]:
    return [r.task for r in ctx.zoo.records(status=None)]


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
    held = zoo_tasks(ctx)
    test = draw(ctx.dataset, model, TEST_TASKS, TEST_SEEDS[model], exclude=held)[:test_tasks]
    return draw(ctx.dataset, model, ARRIVALS, SEEDS[model], exclude=[*held, *test]), test


def shared_classes(zoo, task: Task, neighbours) -> int | None:
    """How many classes the task shares with its nearest record (the first neighbour)."""
    if not neighbours:
        return None
    found = zoo.find(neighbours[0])
    return len(set(found[0].task.classes) & set(task.classes)) if found else None


def checkpoint(grown, test: list[Task], folder: Path, size: int) -> None:
    """`auto` and MVP at J = 20 on the test tasks, from the zoo as it stands, and at J = 50 at the first and last sizes;
    nothing saved. MVP votes among every
    record at the ratio (``zoo_method="all"``), the saved ones too; at size 20 that is the published zoo's IFP records,
    MVP's default pool."""
    def variants(data, task, log):
        for key in ("nearest", "mvp"):
            for j in (20, 50) if size in (CHECKPOINTS[0], CHECKPOINTS[-1]) else (20,):  # J = 50 at the first and last (time)
                m = profile_method(PROFILE, key, grown.dataset, iterations=j, zoo_method="all")  # MVP votes among every record too
                family = "auto (nearest record)" if key == "nearest" else "MVP"
                yield f"{family} J={j}", {"family": family, "x": j, "size": size}, lambda m=m: grown.run(m, data)
    run_variants(grown, test, variants, folder / f"size-{size}", False, f"zoo size {size}")


def run(args) -> None:
    set_threads(args.threads)
    ctx = published()
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
    """Torch-Pruning magnitude on the test tasks, budget after budget (a stopped run holds whole budgets). For the uniform
    model the test tasks are auto_budget's, whose Torch-Pruning and IFP rows are taken as they are (same profile, tasks
    and recipe); only the budgets they lack are run."""
    set_threads(args.threads)
    ctx = published()
    _, test = task_plan(ctx, args.arrivals, args.test_tasks)
    log = RowLog(Path(args.out) / f"peer-{args.arrivals}")
    if args.arrivals == "uniform" and AUTO_BUDGET.exists():
        wanted = {t.id for t in test}
        earlier = json.load(open(AUTO_BUDGET))["results"]["rows"]
        for r in earlier:
            if r["task"] in wanted and r["family"] in pipeline_families(earlier) and not log.has(ctx.dataset.task(r["classes"]), r["method"]):
                log.add({**r, "from": AUTO_BUDGET.name})
    for j in PEER_STEPS:
        m = profile_method(PROFILE, "tp-magnitude", iterations=j)
        if any(r["family"] == m.name and r["x"] == j for r in log.rows):
            label = next(r["method"] for r in log.rows if r["family"] == m.name and r["x"] == j)
        else:
            label = f"{m.name} J={j}"

        def variants(data, task, _, m=m, j=j, label=label):
            yield label, {"family": m.name, "x": j}, lambda: ctx.run(m, data)
        run_variants(ctx, test, variants, log.path.parent, True, f"peer J={j}")


def serving(args) -> None:
    """Item 2: what serves the grown zoo best, chosen on validation tasks of the arrival model (none of the zoo's, the
    arrivals' or the test tasks), at J = 20 on the run's final layer: the nearest record or MVP's vote, MVP's pool
    (IFP records only, or every record), the quality weight, the number of neighbours."""
    set_threads(args.threads)
    ctx = published()
    folder = Path(args.out) / f"{args.arrivals}-refine{args.refine:g}"
    grown = with_layer(ctx, folder / "layer")
    arrivals, test = task_plan(ctx, args.arrivals)
    tasks = test if args.test else \
        draw(ctx.dataset, args.arrivals, args.tasks, VALIDATION_SEEDS[args.arrivals], exclude=[*zoo_tasks(ctx), *test, *arrivals])
    size = len(grown.zoo.records())

    def variants(data, task, log):
        for label, key, settings in SERVING:
            if args.only and label not in args.only:
                continue
            m = profile_method(PROFILE, key, grown.dataset, **settings)
            yield label, {"family": label, "x": m.iterations, "size": size}, lambda m=m: grown.run(m, data)
    run_variants(grown, tasks, variants, folder / ("serving-test" if args.test else "serving"), True, "serving")


def writers(args) -> None:
    """Item 4: tasks per hour with 1, 2 and 4 writers, each a user's process running `prune --method auto` and saving
    into one fresh layer on the published zoo, while a refiner process runs `zoo refine` over and over."""
    import multiprocessing

    ctx = published()
    _, test = task_plan(ctx, "uniform")
    pool = draw(ctx.dataset, "uniform", args.tasks, WRITER_SEED, exclude=[*zoo_tasks(ctx), *test])
    spawn = multiprocessing.get_context("spawn")
    rows = []
    for n in args.writers:
        layer = Path(args.out) / f"writers-{n}" / "layer"
        if layer.parent.exists():
            shutil.rmtree(layer.parent)
        with_layer(ctx, layer).zoo.close()
        shares = [[list(t.classes) for t in pool[i::n]] for i in range(n)]
        refiner = spawn.Process(target=_refiner, args=(str(layer),))
        users = [spawn.Process(target=_user, args=(str(layer), share)) for share in shares]
        start = time.perf_counter()
        refiner.start()
        for p in users:
            p.start()
        for p in users:
            p.join()
        wall = time.perf_counter() - start
        refiner.terminate()
        refiner.join()
        with Zoo(layer, read_only=True) as z:
            own = [r for r in z.records() if r.origin == z.root]
            whole = all(z.verify(r) for r in own)
            refined = sum(1 for r in own if r.params.get("refined"))
        rows.append({"writers": n, "tasks": len(pool), "saved": len(own), "whole": whole, "refined": refined, "seconds": wall,
                     "tasks_per_hour": 3600 * len(own) / wall, "failed": sum(p.exitcode != 0 for p in users)})
        print(rows[-1])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "writers.json").write_text(json.dumps(rows, indent=2))


def _user(layer: str, tasks: list[list[str]]) -> None:
    """A user's process: `prune --method auto` at J = 20 on the published zoo, each task saved into the layer."""
    set_threads(1)
    grown = with_layer(published(), layer)
    for classes in tasks:
        prune(grown, classes, "auto", progress=False)


def _refiner(layer: str) -> None:
    """`zoo refine` over and over, one record at a time, as a deployment runs it beside its users."""
    set_threads(1)
    while True:
        if not refine_zoo(layer, limit=1, progress=False).refined:
            time.sleep(0.5)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path)] if path.exists() else []


def checkpoint_point(rows: list[dict], peers: list[dict], size: int, zoo_tflops: float) -> dict:
    """One checkpoint's accuracies, the FLOPs ratio at equal accuracy against the strongest pipeline (the upper envelope of
    the peer rows) and against Torch-Pruning magnitude alone, classes shared with the nearest record, and the break-even:
    the users' tasks after which ``zoo_tflops`` is paid back by what `auto` at J = 20 saves on each against that pipeline."""
    point = {"size": size, "tasks": len({r["task"] for r in rows}), "zoo_tflops": zoo_tflops}
    strongest = pipeline_families(peers)
    for family in ("auto (nearest record)", "MVP"):
        for j in (20, 50):
            sel = [r for r in rows if r["family"] == family and r["x"] == j]
            if not sel:
                continue
            key = f"{'auto' if family.startswith('auto') else 'mvp'}{j}"
            point[key] = float(np.mean([r["accuracy"] for r in sel]))
            if family.startswith("auto"):
                shared = [r["shared"] for r in sel if r["shared"] is not None]
                point[f"shared{j}"] = float(np.mean(shared))
                point[f"shared{j}_counts"] = {str(k): shared.count(k) for k in range(6) if k in shared}
            tasks = {r["task"] for r in sel}
            same = [p for p in peers if p["task"] in tasks]
            if not same:
                continue
            for name, reference in (("", strongest), ("_magnitude", "Torch-Pruning magnitude")):
                ratio = flops_ratio([*sel, *same], family, reference)[0]
                point[f"ratio{name}_{key}"], point[f"bound{name}_{key}"] = ratio["ratio"], ratio["bound"]
                if not name:
                    point[f"reference_tflops_{key}"] = ratio["reference_tflops"]
                    own = float(np.mean([r["tflops"] + r.get("search_tflops", 0.0) for r in sel]))
                    saved = ratio["reference_tflops"] - own
                    point[f"break_even_{key}"] = zoo_tflops / saved if saved > 0 else None
    return point


def _ratio(point: dict, key: str, name: str = "") -> str:
    r = point.get(f"ratio{name}_{key}")
    return "–" if r is None else f"{point[f'bound{name}_{key}'].replace('=', '')}{r:.1f}x"


def report(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx = published()
    build = sum(r.flops for r in ctx.zoo.records()) / 1e12  # the published zoo's own pruning, TFLOPs
    results, text = {"published_zoo_tflops": build}, []
    out = Path(args.out)
    runs = sorted(p for p in out.glob("*-refine*") if (p / "arrivals.jsonl").exists())
    fig, (ax_acc, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4))
    for folder in runs:
        model = folder.name.split("-")[0]
        peers = _rows(out / f"peer-{model}" / "rows.jsonl")
        arrivals = _rows(folder / "arrivals.jsonl")
        grown = with_layer(ctx, folder / "layer")
        table, points = [], []
        for size in CHECKPOINTS:
            rows = _rows(folder / f"size-{size}" / "rows.jsonl")
            if not rows:
                continue
            for r in rows:
                r["shared"] = shared_classes(grown.zoo, grown.dataset.task(r["classes"]), r["neighbours"])
            served = arrivals[: size - CHECKPOINTS[0]]
            point = checkpoint_point(rows, peers, size, build + sum(a["refine_tflops"] for a in served))
            point["refined"] = sum(a["refined"] for a in served)
            held = [set(r.task.classes) for r in ctx.zoo.records()] + [set(a["classes"]) for a in served]
            best = {r["task"]: max(len(h & set(r["classes"])) for h in held) for r in rows}
            point["most_shared"] = float(np.mean(list(best.values())))  # the most classes any record of the zoo shares with a test task
            points.append(point)
            be = point.get("break_even_auto20")
            table.append([size, point["tasks"], *[f"{100 * point[k]:.2f}" if k in point else "–" for k in ("auto20", "auto50", "mvp20", "mvp50")],
                          _ratio(point, "auto20"), _ratio(point, "auto20", "_magnitude"), _ratio(point, "mvp20"),
                          f"{point.get('shared20', float('nan')):.2f} (best {point['most_shared']:.2f})", point["refined"], f"{point['zoo_tflops']:.0f}",
                          "–" if be is None else f"{be:.0f}"])
        served = arrivals[: CHECKPOINTS[-1] - CHECKPOINTS[0]]
        results[folder.name] = {"checkpoints": points, "arrivals": len(arrivals), "peer_families": pipeline_families(peers),
                                "arrival_accuracy": float(np.mean([a["accuracy"] for a in served])) if served else None,
                                "arrival_cpu_seconds": float(sum(a["train_seconds"] for a in served)),
                                "refine_cpu_seconds": float(sum(a["refine_seconds"] for a in served))}
        text += [f"### {folder.name} ({len(arrivals)} arrivals; peers: {', '.join(pipeline_families(peers)) or 'none yet'})", "",
                 md_table(["zoo size", "test tasks", "auto J=20 (%)", "auto J=50", "MVP J=20", "MVP J=50", "ratio auto J=20, strongest",
                           "vs magnitude", "ratio MVP J=20", "classes shared with the record found (the most any record shares)", "records refined",
                           "zoo TFLOPs (build + refine)", "break-even (tasks)"], table), ""]
        sizes = [p["size"] for p in points]
        line, = ax_acc.plot(sizes, [100 * p.get("auto20", np.nan) for p in points], marker="o", label=f"auto J=20, {folder.name}")
        ax_acc.plot(sizes, [100 * p.get("mvp20", np.nan) for p in points], marker="x", ls=":", color=line.get_color(), label=f"MVP J=20, {folder.name}")
        ax_ratio.plot(sizes, [p.get("ratio_auto20", np.nan) for p in points], marker="o", color=line.get_color(), label=f"auto J=20, {folder.name}")

        serving_rows = _rows(folder / "serving" / "rows.jsonl")
        if serving_rows:
            base = SERVING[0][0]
            by = {label: {r["task"]: r for r in serving_rows if r["method"] == label} for label, _, _ in SERVING}
            accuracy = {label: {t: r["accuracy"] for t, r in rows.items()} for label, rows in by.items()}
            lines, results[folder.name]["serving"] = [], []
            for label, sel in ((label, list(rows.values())) for label, rows in by.items() if rows):
                results[folder.name]["serving"].append({
                    "variant": label, "tasks": len(sel), "accuracy": float(np.mean([r["accuracy"] for r in sel])),
                    "search_tflops": float(np.mean([r["search_tflops"] for r in sel])), "search_seconds": float(np.mean([r["search_seconds"] for r in sel]))})
                lines.append([label, len(sel), mean_se([r["accuracy"] for r in sel]), "" if label == base else paired(accuracy[label], accuracy[base]),
                              f"{np.mean([r['search_tflops'] for r in sel]) * 1e3:.1f}", f"{np.mean([r['search_seconds'] for r in sel]):.1f}"])
            text += [f"Serving the grown zoo ({folder.name}, {len(grown.zoo.records())} records), validation tasks, J = 20:", "",
                     md_table(["variant", "tasks", "accuracy (%)", f"vs {base}", "search GFLOPs", "search s"], lines), ""]
            ann, leep = by[base], by[LEEP]
            both = [t for t in ann if t in leep]
            if both:
                agree = sum(ann[t]["neighbours"][0] == leep[t]["neighbours"][0] for t in both)
                results[folder.name]["search"] = {"tasks": len(both), "same_record": agree,
                                                  "flops_ratio": float(np.mean([leep[t]["search_tflops"] for t in both]) / np.mean([ann[t]["search_tflops"] for t in both])),
                                                  "seconds": [float(np.mean([ann[t]["search_seconds"] for t in both])), float(np.mean([leep[t]["search_seconds"] for t in both]))]}
    ax_acc.set(xlabel="zoo size (records)", ylabel="test accuracy (%)", xscale="log")
    ax_ratio.set(xlabel="zoo size (records)", ylabel="FLOPs ratio at equal accuracy", xscale="log")
    ax_ratio.axhline(10, color="grey", ls="--", lw=0.8)
    ax_ratio.set_ylim(0, 11)
    for ax in (ax_acc, ax_ratio):
        ax.set_xticks(CHECKPOINTS, [str(c) for c in CHECKPOINTS])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "traffic.png", dpi=120)
    w = out / "writers.json"
    if w.exists():
        results["writers"] = json.loads(w.read_text())
        text += ["Writers into one layer while `zoo refine` runs (2 cores):", "",
                 md_table(["writers", "tasks saved", "all whole", "records refined meanwhile", "seconds", "tasks per hour"],
                          [[r["writers"], f"{r['saved']} of {r['tasks']}", r["whole"], r["refined"], f"{r['seconds']:.0f}", f"{r['tasks_per_hour']:.0f}"]
                           for r in results["writers"]]), ""]
    save("traffic", results, "\n".join(text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)
    for name in ("run", "peer", "serving", "writers", "report"):
        p = sub.add_parser(name)
        p.add_argument("--arrivals", choices=tuple(SEEDS), default="uniform")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--out", default=str(OUT), help="where the runs' rows and layers go (default runs/traffic)")
        p.add_argument("--test-tasks", type=int, default=TEST_TASKS, help="held-out test tasks at each checkpoint (a smoke run: fewer)")
        if name in ("run", "serving"):
            p.add_argument("--refine", type=float, default=1.0, help="refine budget: this many times the arrivals' CPU seconds")
        if name == "run":
            p.add_argument("--limit", type=int, default=CHECKPOINTS[-1] - 20,
                           help="stop after this many arrivals (default 280: the published 20 records and 280 saved make the last checkpoint, 300)")
        if name == "serving":
            p.add_argument("--tasks", type=int, default=10, help="validation tasks")
            p.add_argument("--test", action="store_true", help="run the variants on the test tasks instead (the report's choice)")
            p.add_argument("--only", nargs="*", help="run only the variants of these labels")
        if name == "writers":
            p.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
            p.add_argument("--tasks", type=int, default=8, help="tasks pruned and saved in all, shared among the writers")
    args = ap.parse_args()
    {"run": run, "peer": peer, "serving": serving, "writers": writers, "report": report}[args.stage](args)


if __name__ == "__main__":
    main()
