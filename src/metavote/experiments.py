"""End-to-end runs built from the library's pieces, each one call of the CLI: ``prune`` (one task
by one method), ``run_bench`` (the main table), ``run_ablation`` and the ``demo`` (the README's
main job)."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .bench import (
    BenchContext, ablate_budget, ablate_decomposition, ablate_groups, ablate_head, ablate_zoos, ablate_iterations, ablate_neighbours,
    ablate_recipe, ablate_task_size, ablate_unseen, bench, bench_tasks, flops_ratio, main_methods, markdown_table, one_off_costs,
    pipeline_families, ratio_notes, plot_ablation, plot_budget, size_notes, summarize, write_table, zoo_names, zoo_summary,
)
from .data import Task, load_dataset, sample_tasks
from .deploy import save_result
from .errors import ConfigError
from .methods import PruneResult, create_method, get_method_class, method_settings
from .models import count_parameters, head_rows_for, load_backbone, locate_backbone, replace_head
from .profiles import get_profile
from .search import ZooSearch
from .training import Timer, evaluate, select_device, set_threads
from .zoo import Zoo, build_zoo


def zoo_dataset(zoo: Zoo, dataset: str | os.PathLike | None = None, data: str | os.PathLike | None = None):
    """``dataset`` (a name or an image folder, under ``data``), or by default the dataset the zoo's
    tasks come from, as ``zoo build`` recorded it (its folder, else its name under the recorded root)."""
    if dataset is not None:
        return load_dataset(str(dataset), data)
    source, root = zoo.dataset_source()
    return load_dataset(source, data if data is not None else root)


def context(zoo_path: str | os.PathLike, data: str | os.PathLike | None = None, backbone: str | os.PathLike | None = None,
            device: str | torch.device | None = None, dataset: str | os.PathLike | None = None,
            read_only: bool | None = None) -> BenchContext:
    """Open a zoo with a dataset and the backbone it was built from (checked by fingerprint); the
    backbone and every zoo model it loads go to ``device`` (default: CUDA when available).

    ``dataset`` (a name or an image folder; ``data`` is its root) defaults to the dataset the zoo's
    tasks come from, as ``zoo build`` recorded it. ``read_only`` as :class:`~metavote.zoo.Zoo`'s."""
    device = select_device(device)
    zoo = Zoo(zoo_path, device=device, read_only=read_only)
    loaded = zoo_dataset(zoo, dataset, data)
    backbone = backbone or zoo.meta.get("backbone")  # a zoo of a named backbone (efficientnet-lite0) names it
    size = (zoo.meta.get("input_size") or [None])[-1]
    model, meta = load_backbone(locate_backbone(backbone), dataset=loaded, image_size=size)
    if meta["fingerprint"] != zoo.fingerprint:
        raise ConfigError(f"the backbone is not the one zoo {zoo_path} was built from; pass the right one with --backbone")
    return BenchContext(model.to(device), meta.get("classes"), loaded.resized(model.input_size), zoo, meta.get("wnids"))


DEFAULT_LAYERS = Path("runs") / "layers"
"""Where ``prune`` puts the records of a task pruned from a read-only zoo, unless told (``--save-to``)."""


def with_layer(ctx: BenchContext, save_to: str | os.PathLike | None = None) -> BenchContext:
    """``ctx`` with its zoo under a writable layer (:meth:`~metavote.zoo.Zoo.layer`) at ``save_to``
    (default ``runs/layers/<zoo folder name>``), which takes new records while both vote."""
    top = Zoo.layer(ctx.zoo, save_to or DEFAULT_LAYERS / ctx.zoo.root.resolve().name)
    return dataclasses.replace(ctx, zoo=top)


def default_method(zoo: Zoo, ratio: float, align: int | str = 1) -> tuple[str, str]:
    """The method ``prune`` uses when none is named, and why. When the zoo's records were pruned at
    ``ratio``: the nearest record (its start is one sub-network trained as a whole; ahead of MVP
    on the CNN zoos measured), except in a zoo built by AHNP, whose records lay a transformer's
    heads and nodes out unevenly: there MVP's vote, laid out as its neighbours lay theirs, led the
    nearest record by 1.1 ± 0.4 points at J = 20 on 10 validation tasks (8 of 10). Else MVP, whose
    vote makes a sub-network of any ratio (and of aligned widths, ``align`` > 1 or ``"auto"``)."""
    if align == "auto" or align > 1:
        return "mvp", f"widths in multiples of {align if align != 'auto' else 'this CPU’s channel block'} are drawn by the vote; a record keeps its own"
    ratios = sorted(float(r) for r in zoo.param_values("ratio", zoo.source_method))
    if any(abs(r - ratio) < 1e-9 for r in ratios):
        if zoo.source_method == "ahnp":
            return "mvp", (f"the zoo's AHNP records are pruned at r = {ratio:g}; their neighbours' vote, laid out as they lay their "
                           "heads and nodes, leads the nearest one on a ViT")
        return "nearest", f"the zoo's records are pruned at r = {ratio:g}, so the nearest one is kept as it is"
    held = ", ".join(f"{r:g}" for r in ratios) or "unknown"
    return "mvp", f"the zoo's records are pruned at r = {held}, not {ratio:g}: the vote makes a sub-network of the ratio asked"


def check_settings_used(method: str, given: set[str], chosen: bool = False) -> None:
    """One line naming ``method`` when a setting the caller gave is one it does not use (``chosen``:
    by ``--method auto``, whose choice the line names), rather than dropping it in silence."""
    cls = get_method_class(method)
    unused = sorted(k for k in given if k not in method_settings(method) or k in cls.ignores)
    if unused:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in unused)
        how = f"{method} (chosen by --method auto)" if chosen else method
        raise ConfigError(f"{how} does not use {names}; leave {'it' if len(unused) == 1 else 'them'} out"
                          + (", or name the method that does (--method mvp)" if chosen else ""))


def prune(ctx: BenchContext, classes: Sequence[str] | None = None, method: str = "auto", profile_name: str = "cpu", save: bool = True,
          progress: bool = True, out: str | os.PathLike | None = None, **settings) -> tuple[PruneResult, Task]:
    """Prune the backbone for the task of ``classes`` of ``ctx.dataset`` (default: all its classes;
    new classes are welcome: their head is imprinted) with a registered method (``mvp``, ``nearest``,
    ``ifp``, ``random``, ...; ``auto``: :func:`default_method`) at a profile's budget; ``settings`` (ratio, iterations, lr, batch_size and the
    method's own, e.g. neighbours, similarity, temperature) override it. With ``save`` the result
    joins the zoo as a record of its method (if the method prunes units: PoWER's tokens are not a
    record); with ``out`` it is also written as a standalone model file (:func:`~metavote.deploy.load_pruned`)."""
    budget = {k: settings.pop(k) for k in ("ratio", "iterations", "lr", "batch_size") if k in settings}
    temperature = settings.pop("temperature", None)
    p = get_profile(profile_name, temperature=temperature)
    chosen = method == "auto"
    if chosen:
        method = default_method(ctx.zoo, budget.get("ratio", p.ratio), settings.get("align") or 1)[0]
    check_settings_used(method, set(settings) | ({"temperature"} if temperature is not None else set()), chosen)
    cls = get_method_class(method)
    extra = {"dataset": ctx.dataset} if "dataset" in method_settings(method) else {}  # MVP's embedding similarity
    m = create_method(method, **p.settings(method, **({"iterations": p.iterations} | budget)), **settings, **extra)
    task = ctx.dataset.task(list(classes) if classes else list(ctx.dataset.classes))
    result = m.run(ctx.backbone, ctx.dataset.load_task(task), ctx.zoo if cls.needs_zoo else None, ctx.head_rows(task), progress=progress)
    if save and cls.builds_zoo:
        ctx.zoo.note_dataset(ctx.dataset.name, ctx.dataset.source or ctx.dataset.name, ctx.dataset.source)
        record = ctx.zoo.add(task, result)
        with ZooSearch(ctx.zoo, ctx.backbone, ctx.dataset) as search:
            search.add([record])  # its task embedding, stored once
    if out is not None:
        save_result(out, result, task, ctx.zoo.fingerprint)
    return result, task


def run_bench(ctx: BenchContext, profile_name: str = "cpu", tasks: int = 20, seed: int = 1000, out: str | os.PathLike = "runs/bench",
              progress: bool = True, also: Sequence[str] = (), baselines: bool = True, peers: bool = True,
              **overrides) -> tuple[list[dict], str]:
    """The main table: MVP at J, IFP at J and 10·J, random at J and the profile's baselines on
    ``tasks`` seeded test tasks disjoint from the zoo's, plus the methods of ``also`` (registry keys,
    e.g. ``nearest``; ``baselines=False`` leaves the profile's baselines out, ``peers=False`` Torch-Pruning's pipelines at
    J and 10·J). Writes rows.jsonl,
    summary.md and summary.csv to ``out``; resumable.
    ``overrides`` (ratio, iterations, lr, batch_size; MVP's temperature) change the profile's budget."""
    p = get_profile(profile_name, **overrides)
    test = bench_tasks(ctx.dataset, ctx.zoo, tasks, seed=seed)
    rows = bench(ctx, main_methods(p, ctx.dataset, also, baselines, peers), test, out, progress)
    summary = summarize(rows)
    title = (f"{len(test)} test tasks (5-way, seed {seed}, disjoint from the zoo's {len(ctx.zoo.records(method=ctx.zoo.source_method))}), "
             f"profile {profile_name}: r={p.ratio}, batch {p.batch_size}")
    notes = "".join(f"\n\n{line}" for line in (*size_notes(summary), *ratio_notes(rows), *one_off_costs(rows)))
    write_table(summary, out, title, notes=notes)
    return rows, f"{title}\n\n{markdown_table(summary)}{notes}"


ABLATIONS = ("iterations", "neighbours", "groups", "task-size", "unseen", "zoos", "budget", "decomposition", "head", "recipe")


def run_ablation(ctx: BenchContext, name: str, profile_name: str = "cpu", tasks: int = 10, seed: int = 1000,
                 out: str | os.PathLike = "runs/ablations", progress: bool = True, target_dataset: str | os.PathLike | None = None,
                 other_zoo: str | os.PathLike | None = None, **overrides) -> tuple[list[dict], str, Path]:
    """One ablation on ``tasks`` seeded test tasks: rows (``<out>/<name>/rows.jsonl``), a summary
    table per variant and one figure (``<out>/<name>.png``). ``unseen`` draws its tasks from
    ``target_dataset`` (an image folder, e.g. from :func:`~metavote.data.convert_fashion_mnist`);
    ``zoos`` compares MVP from this zoo with MVP from ``other_zoo`` (another build from the same
    backbone: a Taylor zoo, a J = 1000 zoo), on the tasks both zoos hold when they share at least
    three (zoo quality), else each whole (e.g. a dense zoo of one domain), with each zoo's voters
    after the table (:func:`~metavote.bench.zoo_summary`). ``budget`` adds the FLOPs ratio at equal
    accuracy (:func:`~metavote.bench.flops_ratio`) after the table."""
    p = get_profile(profile_name, **overrides)
    folder = Path(out) / name
    test = bench_tasks(ctx.dataset, ctx.zoo, tasks, seed=seed)
    notes = ""
    if name == "iterations":
        rows = ablate_iterations(ctx, test, p, out=folder, progress=progress)
        fig = plot_ablation(rows, Path(out) / f"{name}.png", "Accuracy against fine-tuning iterations", "iterations J", logx=True)
    elif name == "neighbours":
        rows = ablate_neighbours(ctx, test, p, out=folder, progress=progress)
        fig = plot_ablation(rows, Path(out) / f"{name}.png", f"MVP (J={p.iterations}) against the number of neighbours", "neighbours N")
    elif name == "groups":
        rows = ablate_groups(ctx, test, p, out=folder, progress=progress)
        fig = plot_ablation(rows, Path(out) / f"{name}.png", f"MVP (J={p.iterations}) with neighbours from one similarity group",
                            "similarity group (1 = most similar)", bars=True)
    elif name == "task-size":
        rows = ablate_task_size(ctx, profile_name, tasks, seed=seed, out=folder, progress=progress, **overrides)
        fig = plot_ablation(rows, Path(out) / f"{name}.png", "Task size: MVP against IFP", "N-way", bars=True)
    elif name == "unseen":
        if target_dataset is None:
            raise ConfigError("the unseen ablation needs --target-dataset (an image folder, e.g. `metavote data fashion-mnist --out DIR`)")
        target = load_dataset(str(target_dataset))
        rows = ablate_unseen(ctx, target, tasks, p, seed=seed, out=folder, progress=progress)
        fig = plot_ablation(rows, Path(out) / f"{name}.png", f"Unseen dataset ({target.name}): MVP against IFP", "iterations J", bars=True)
    elif name == "zoos":
        if other_zoo is None:
            raise ConfigError("the zoos ablation needs --other-zoo (e.g. one built with `zoo build --importance taylor` or `--iterations 1000`)")
        other = Zoo(other_zoo, device=ctx.zoo.device)
        common = len({r.task.id for r in other.records()} & {r.task.id for r in ctx.zoo.records()}) >= 3
        test = sample_tasks(ctx.dataset, 5, tasks, seed=seed, exclude=[r.task for z in (ctx.zoo, other) for r in z.records(status=None)])
        rows = ablate_zoos(ctx, other, test, p, common=common, out=folder, progress=progress)
        fig = plot_ablation(rows, Path(out) / f"{name}.png", f"MVP (J={p.iterations}) with neighbours from each zoo", "zoo", bars=True)
        notes = zoos_notes(rows, dict(zip(zoo_names([ctx.zoo, other]), (ctx.zoo, other))), common)
    elif name == "budget":
        rows = ablate_budget(ctx, test, p, out=folder, progress=progress)
        fig = plot_budget(rows, Path(out) / f"{name}.png", "Accuracy against training FLOPs")
    elif name == "decomposition":
        rows = ablate_decomposition(ctx, test, p, out=folder, progress=progress)
        fig = plot_ablation(rows, Path(out) / f"{name}.png", "What MVP's start is worth", "sub-network and weights", bars=True)
    elif name == "head":
        rows = ablate_head(ctx, test, p, out=folder, progress=progress)
        fig = plot_ablation(rows, Path(out) / f"{name}.png", f"MVP (J={p.iterations}) with each task head", "head", bars=True)
    elif name == "recipe":
        rows = ablate_recipe(ctx, test, p, out=folder, progress=progress)
        fig = plot_ablation(rows, Path(out) / f"{name}.png", f"MVP's few-step recipe at {p.iterations * p.batch_size} images", "peak lr", bars=True)
    else:
        raise ConfigError(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
    summary = summarize(rows)
    notes = budget_notes(rows, p.upper_bound.upper()) if name == "budget" else notes
    write_table(summary, folder, f"ablation {name}, profile {profile_name}, {len(test)} tasks (seed {seed})", notes=notes)
    return rows, markdown_table(summary) + notes, fig


def zoos_notes(rows: Sequence[dict], zoos: dict[str, Zoo], common: bool) -> str:
    """Each zoo of a ``zoos`` ablation, as a markdown table: the records MVP voted from and its accuracy."""
    lines = ["", "", "MVP's voters in each zoo" + (" (each zoo restricted to the tasks both hold)" if common else " (each zoo whole)") + ":", "",
             "| zoo | folder | voters used | voters' accuracy on their tasks (%) | voters' training TFLOPs | "
             "target classes a neighbour shares | MVP accuracy (%) | nearest record accuracy (%) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for z in zoo_summary(rows, zoos):
        lines.append(f"| {z['zoo']} | {z['folder']} | {z['voters']} | {100 * z['voter_accuracy']:.2f} | {z['voter_tflops']:.2f} | "
                     f"{z['shared']:.2f} | {100 * z['accuracy']:.2f} | {100 * z['nearest_accuracy']:.2f} |")
    return "\n".join(lines)


def budget_notes(rows: Sequence[dict], reference: str = "IFP") -> str:
    """The FLOPs ratio at equal accuracy as a markdown table: for each zoo-side family (MVP and its
    variants, the nearest record) at each J, the training TFLOPs the strongest conventional pipeline
    needs for the same accuracy (the upper envelope of ``reference`` and Torch-Pruning's pipelines,
    those the rows hold) over the family's, without and with the neighbour search's FLOPs, then the
    ratio against ``reference`` alone (the paper's comparison) when peers are there too."""
    families = list(dict.fromkeys(r["family"] for r in rows))
    pipelines = pipeline_families(rows, reference)
    alone = reference in pipelines and len(pipelines) > 1
    lines = ["", "", f"FLOPs ratio at equal accuracy (the strongest of {', '.join(pipelines)} at each accuracy: its TFLOPs for the same accuracy, "
             "interpolated, over the zoo method's):", "",
             "| zoo method | accuracy (%) | training TFLOPs | + search TFLOPs | strongest pipeline needs TFLOPs | ratio | ratio with search | "
             + (f"ratio against {reference} alone | " if alone else "") + "pipeline needs iterations (images ratio) |",
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if alone else "") + "---:|"]
    for family in [f for f in families if f.startswith("MVP") or f == "nearest record"]:
        plain, searched = flops_ratio(rows, family, pipelines), flops_ratio(rows, family, pipelines, search=True)
        paper = flops_ratio(rows, family, reference) if alone else plain
        for a, b, c in zip(plain, searched, paper):
            bound = a["bound"].replace("=", "")
            lines.append(f"| {family} J={a['x']} | {100 * a['accuracy']:.2f} | {a['tflops']:.3f} | {b['tflops'] - a['tflops']:.3f} | "
                         f"{bound}{a['reference_tflops']:.3f} | {bound}{a['ratio']:.1f}x | {b['bound'].replace('=', '')}{b['ratio']:.1f}x | "
                         + (f"{c['bound'].replace('=', '')}{c['ratio']:.1f}x | " if alone else "")
                         + f"{bound}{a['reference_iterations']:.0f} ({bound}{a['reference_iterations'] / a['x']:.1f}x) |")
    lines.append("\n`>` : the zoo method is above every pipeline point, so the ratio is at least the figure; `<` : below every point.")
    return "\n".join(lines)


PUBLISHED_ZOO = "cifar100-resnet18w0.5-ifp1000"
"""The published zoo the demo uses when it is there: 20 CIFAR-100 tasks pruned by IFP at J = 1000."""


def published_zoo(path: str | os.PathLike | None = None) -> Path | None:
    """``path``, ``$METAVOTE_ZOO``, or ``../shared/zoos/<PUBLISHED_ZOO>`` when it exists (else None)."""
    places = [Path(p) for p in (path, os.environ.get("METAVOTE_ZOO")) if p]
    places += [Path.cwd().parent / "shared" / "zoos" / PUBLISHED_ZOO, Path(__file__).resolve().parents[3] / "shared" / "zoos" / PUBLISHED_ZOO]
    return next((p for p in places if (p / "index.sqlite").exists()), None)


def demo(
    data: str | os.PathLike | None = None,
    backbone: str | os.PathLike | None = None,
    out: str | os.PathLike = "runs/demo",
    zoo: str | os.PathLike | None = None,
    zoo_tasks: int = 6,
    threads: int | None = None,
    device: str | torch.device | None = None,
    reference: Sequence[int] = (50, 100, 200),
    peers: Sequence[str] = ("tp-magnitude",),
    dataset: str | os.PathLike = "cifar100",
    **overrides,
) -> dict:
    """What MVP is for, in about three minutes on 2 cores: a new CIFAR-100 task pruned at r = 0.8
    with J = 20 iterations from a zoo, by MVP (the paper's vote) and by the nearest record, against
    random pruning at J, conventional pruning (IFP) at each of ``reference`` iterations and the
    pipelines of ``peers`` (Torch-Pruning's one-shot magnitude pruning, the strongest on the main
    table's 20 tasks) at J and each of ``reference``; it prints accuracy, training FLOPs and wall time
    (the search included) and the FLOPs ratio at equal accuracy: the strongest pipeline's FLOPs for
    the same accuracy (interpolated on the upper envelope of IFP and the peers) over the method's,
    then IFP's alone (the paper's comparison).

    The zoo is ``zoo``, else the published one (:func:`published_zoo`), opened read-only: nothing
    is written into it (its search embeddings go to the user's cache). Without one, a small zoo
    of ``zoo_tasks`` tasks is built under ``out`` first (IFP at the CPU profile's J = 200), which
    takes minutes more and gives MVP fewer, weaker neighbours. ``dataset`` (a name or an image
    folder) and ``overrides`` of the CPU profile's budget (ratio, iterations, lr, batch_size) make
    small runs. Returns the printed figures.
    """
    set_threads(threads)
    device = select_device(device)
    out = Path(out)
    name = str(dataset)
    dataset = load_dataset(name, data)
    path = locate_backbone(backbone)
    model, meta = load_backbone(path, dataset=dataset)
    model.to(device)
    print(f"backbone {path.name}: {meta['arch']} width {meta['width']:g}, {count_parameters(model):,} parameters, "
          f"{dataset.name} top-1 {meta.get('test_acc', float('nan')):.2%} (from its metadata)")

    p = get_profile("cpu", **overrides)
    found = published_zoo(zoo)
    if found is not None:
        z = Zoo(found, device=device, read_only=True)
        print(f"\n[1/2] zoo {found} (read-only): {len(z)} records, {z.describe()}, pruned by IFP at "
              f"J = {z.records()[0].params.get('iterations')} (`metavote zoo ls --zoo {found}`)")
        target = sample_tasks(dataset, 5, 1, seed=2026, exclude=[r.task for r in z.records(status=None)])[0]
    else:
        ifp = create_method("ifp", **p.settings("ifp"))
        tasks = sample_tasks(dataset, 5, zoo_tasks + 1, seed=2026)
        zoo_tasks_, target = tasks[:-1], tasks[-1]
        print(f"\n[1/2] no published zoo found: building one of {len(zoo_tasks_)} tasks in {out / 'zoo'} ({ifp.label}, CPU profile)")
        report = build_zoo(out / "zoo", zoo_tasks_, path, ifp, name, data, device=device)
        print(f"  built {len(report.done)}, reused {len(report.skipped)}, failed {len(report.failed)}")
        z = Zoo(out / "zoo", device=device)

    with Timer() as indexing, ZooSearch(z, model, dataset) as search:
        search.index()  # the records' task embeddings: computed once per zoo, then read from the cache
    print(f"  search index: {len(z)} task embeddings ready in {indexing.seconds:.1f} s ({z.cache_dir})")

    j = p.iterations
    print(f"\n[2/2] a new task at r = {p.ratio}, J = {j} on {device}: {target}")
    task_data = dataset.load_task(target)
    rows = head_rows_for(meta["classes"], target.classes)
    dense = replace_head(copy.deepcopy(model), target.n_way, rows)
    print(f"  dense backbone with the task's head rows: {evaluate(dense, task_data.test_images, task_data.test_labels):.2%} "
          f"({count_parameters(dense):,} parameters)")
    runs = [("MVP", create_method("mvp", **p.settings("mvp"), dataset=dataset), j),
            ("nearest record", create_method("nearest", **p.settings("nearest"), dataset=dataset), j),
            ("random", create_method("random", **p.settings("random")), j)]
    runs += [("IFP", create_method("ifp", **p.settings("ifp", iterations=n)), n) for n in reference]
    runs += [(m.name, m, n) for key in peers for n in (j, *reference) for m in [create_method(key, **p.settings(key, iterations=n))]]
    print(f"  {'method':<23} {'J':>4} {'accuracy':>9} {'training TFLOPs':>16} {'search TFLOPs':>14} {'wall s':>7}")
    results, table = {}, []
    for name, method, n in runs:
        with Timer() as wall:
            result = method.run(model, task_data, z, rows, progress=False)
        search = result.params.get("search_tflops", 0.0)
        results[f"{name} J={n}"] = result
        table.append({"family": name, "x": n, "accuracy": result.accuracy, "tflops": result.costs.tflops, "search_tflops": search})
        print(f"  {name:<23} {n:>4} {result.accuracy:>9.2%} {result.costs.tflops:>16.3f} {search:>14.4f} {wall.seconds:>7.1f}")
    figures = {"target": target.id, "zoo": str(z.root), **{f"{k} accuracy": v.accuracy for k, v in results.items()},
               **{f"{k} tflops": v.costs.tflops for k, v in results.items()}}
    pipelines = pipeline_families(table)
    print(f"\n  FLOPs ratio at equal accuracy: the strongest pipeline's training FLOPs for the same accuracy (interpolated on the "
          f"upper envelope of {', '.join(pipelines)}) over the method's; then IFP's alone (the paper's comparison)")
    for name in ("MVP", "nearest record"):
        plain, searched, paper = flops_ratio(table, name, pipelines), flops_ratio(table, name, pipelines, search=True), flops_ratio(table, name)
        for a, b, c in zip(plain, searched, paper):
            bound, ifp = a["bound"].replace("=", ""), c["bound"].replace("=", "")
            figures[f"{name} ratio"], figures[f"{name} ratio with search"], figures[f"{name} ratio against IFP"] = a["ratio"], b["ratio"], c["ratio"]
            print(f"  {name:<16} {bound}{a['ratio']:.1f}x ({b['bound'].replace('=', '')}{b['ratio']:.1f}x counting its neighbour search); "
                  f"{ifp}{c['ratio']:.1f}x against IFP alone, which needs {ifp}{c['reference_iterations']:.0f} iterations for its {a['accuracy']:.2%}")
    mvp_model = results[f"MVP J={j}"].model
    figures["parameter_ratio"] = count_parameters(dense) / count_parameters(mvp_model)
    print(f"  the pruned models: {count_parameters(mvp_model):,} parameters ({figures['parameter_ratio']:.0f}x fewer than the dense model)")
    z.close()
    return figures
