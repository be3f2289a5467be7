"""The ablations: each runs MVP (and its comparisons) over one varied factor on seeded test tasks,
through the same resumable loop as the bench (:func:`~metavote.bench.harness.run_variants`)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

from ..data import ImageDataset, Task, sample_tasks
from ..errors import ConfigError
from ..methods import create_method
from ..profiles import Profile, get_profile, ratio_for
from ..similarity import LEEPSimilarity, Similarity, make_similarity, nearest
from ..training import Costs
from ..zoo import Zoo, ZooRecord
from .harness import BenchContext, bench, bench_tasks, main_methods, profile_method, run_variants


def ranked_pool(ctx: BenchContext, data, similarity: str, zoo_method: str | None = None) -> list[ZooRecord]:
    """The whole pool of zoo records ranked by a similarity to the target, best first."""
    pool = ctx.zoo.records(method=zoo_method or ctx.zoo.source_method)
    measure = make_similarity(similarity, backbone=ctx.backbone, dataset=ctx.dataset)
    return [r for r, _ in nearest(ctx.zoo, data, len(pool) - (data.task.id in {p.task.id for p in pool}), measure, records=pool)]


def ablate_iterations(ctx: BenchContext, tasks: Sequence[Task], profile: Profile, iterations=(10, 20, 50, 100, 200), out=None, progress=True) -> list[dict]:
    """MVP and the profile's conventional method (IFP; AHNP for a ViT) at each iteration budget (the
    neighbour search runs once per task): the paper's Figure 4."""
    key = profile.upper_bound

    def variants(data, task, log):
        neighbours = None
        for j in iterations:
            conventional = create_method(key, **profile.settings(key, iterations=j))
            yield f"{conventional.name} J={j}", {"family": conventional.name, "x": j}, lambda m=conventional: ctx.run(m, data)
            if neighbours is None and not log.has(task, f"MVP J={j}"):
                neighbours = ranked_pool(ctx, data, "leep")[:3]
            yield f"MVP J={j}", {"family": "MVP", "x": j}, \
                lambda j=j: ctx.run(create_method("mvp", **profile.settings("mvp", iterations=j), neighbours=neighbours), data)

    return run_variants(ctx, tasks, variants, out, progress, "iterations")


def ablate_neighbours(ctx: BenchContext, tasks: Sequence[Task], profile: Profile, counts=range(1, 9), out=None, progress=True) -> list[dict]:
    """MVP at J with the 1 … 8 nearest neighbours by LEEP."""
    mvp = profile.settings("mvp")
    available = len(ctx.zoo.records(method=ctx.zoo.source_method))
    if max(counts) > available:
        raise ConfigError(f"the zoo has {available} {ctx.zoo.source_method.upper()} records; the neighbours ablation needs at least {max(counts)}")

    def variants(data, task, log):
        ranked = None
        for n in counts:
            if ranked is None and not log.has(task, f"N={n}"):
                ranked = ranked_pool(ctx, data, "leep")
            yield f"N={n}", {"family": "MVP", "x": n}, lambda n=n: ctx.run(create_method("mvp", **mvp, neighbours=ranked[:n]), data)

    return run_variants(ctx, tasks, variants, out, progress, "neighbours")


def ablate_groups(ctx: BenchContext, tasks: Sequence[Task], profile: Profile, similarities=("leep", "wordnet"), groups: int = 5,
                  neighbours: int = 3, out=None, progress=True) -> list[dict]:
    """MVP at J from the ``neighbours`` best tasks of each similarity group (1 = most similar):
    the pool ranked by the similarity is cut into ``groups`` equal parts."""
    mvp = profile.settings("mvp")

    def variants(data, task, log):
        for sim in similarities:
            parts = None
            for g in range(1, groups + 1):
                if parts is None and not log.has(task, f"{sim} group {g}"):
                    parts = np.array_split(np.array(ranked_pool(ctx, data, sim), dtype=object), groups)
                yield (f"{sim} group {g}", {"family": sim, "x": g},
                       lambda g=g: ctx.run(create_method("mvp", **mvp, neighbours=list(parts[g - 1][:neighbours])), data))

    return run_variants(ctx, tasks, variants, out, progress, "groups")


def ablate_task_size(ctx: BenchContext, profile_name: str, count: int, sizes=((3, 0.95), (10, 0.85)), seed: int = 1000, out=None,
                     progress=True, **overrides) -> list[dict]:
    """N-way tasks at the paper's ratio for N (mapped to the profile): MVP at J against IFP at J and
    at 10·J. Neighbours come from the (5-way) zoo: votes are over units, whatever the task size."""
    profile = get_profile(profile_name, **{k: v for k, v in overrides.items() if k != "ratio"})
    rows = []
    for n_way, paper_ratio in sizes:
        r = ratio_for(paper_ratio, profile_name)
        tasks = bench_tasks(ctx.dataset, ctx.zoo, count, n_way, seed)
        methods = main_methods(profile.replace(ratio=r), ctx.dataset)[:3]

        def variants(data, task, log, methods=methods, n_way=n_way, r=r):
            for m in methods:
                yield f"{n_way}-way r={r:g} {m.label}", {"family": m.label, "x": n_way, "ratio": r}, lambda m=m: ctx.run(m, data)

        rows += run_variants(ctx, tasks, variants, out, progress, f"{n_way}-way")
    return rows


def zoo_names(zoos: Sequence[Zoo]) -> list[str]:
    """Short, distinct names for zoos of one backbone: the first build setting in which they all
    differ (the method that built them, importance, iterations J, ratio r), else their folders."""
    methods = [z.source_method for z in zoos]
    if len(set(methods)) == len(methods):
        return methods
    params = [z.records(method=z.source_method)[0].params for z in zoos]
    for key, form in (("importance", "{}"), ("iterations", "J={}"), ("ratio", "r={}")):
        values = [str(p.get(key)) for p in params]
        if len(set(values)) == len(values):
            return [form.format(v) for v in values]
    names = [z.root.name for z in zoos]
    return names if len(set(names)) == len(names) else [str(z.root) for z in zoos]


def ablate_zoos(ctx: BenchContext, other: Zoo, tasks: Sequence[Task], profile: Profile, neighbours: int = 3, common: bool = True,
                nearest_record: bool = True, out=None, progress=True) -> list[dict]:
    """MVP at J with LEEP neighbours from this context's zoo and from ``other`` (the same backbone,
    another build: importance criterion, budget J, pruner, or tasks), and (``nearest_record``) the
    first of those neighbours fine-tuned alone (what ``prune --method auto`` runs when a zoo holds the
    ratio). ``common``: each zoo restricted to the
    tasks both hold, so that only how the records were pruned differs (zoo quality); else each zoo
    whole (e.g. a dense zoo of one domain against a broad one). Rows carry ``zoo`` (the name from
    :func:`zoo_names`) and their neighbours; :func:`zoo_summary` tells the zoos apart."""
    if other.fingerprint != ctx.zoo.fingerprint:
        raise ConfigError(f"zoo {other.root} was built from another backbone than zoo {ctx.zoo.root}")
    if other.root.resolve() == ctx.zoo.root.resolve():
        raise ConfigError(f"--other-zoo is zoo {ctx.zoo.root} itself; compare two different zoos")
    zoos = dict(zip(zoo_names([ctx.zoo, other]), (ctx.zoo, other)))
    pools = {name: zoo.records(method=zoo.source_method) for name, zoo in zoos.items()}
    if common:
        shared = set.intersection(*({r.task.id for r in pool} for pool in pools.values()))
        if len(shared) < neighbours:
            raise ConfigError(f"the two zoos share {len(shared)} tasks; comparing them on common tasks needs at least {neighbours}")
        pools = {name: [r for r in pool if r.task.id in shared] for name, pool in pools.items()}
    mvp = profile.settings("mvp")
    leep = make_similarity("leep")

    def variants(data, task, log):
        for name, zoo in zoos.items():
            ranked = functools.cache(lambda zoo=zoo, pool=pools[name]: [r for r, _ in nearest(zoo, data, neighbours, leep, records=pool)])
            yield (f"{name} zoo", {"family": "MVP", "x": name, "zoo": name},
                   lambda zoo=zoo, ranked=ranked: create_method("mvp", **mvp, neighbours=ranked()).run(ctx.backbone, data, zoo, ctx.head_rows(task)))
            if nearest_record:
                yield (f"{name} zoo, nearest record", {"family": "nearest record", "x": name, "zoo": name},
                       lambda zoo=zoo, ranked=ranked: create_method("nearest", **profile.settings("nearest"), neighbours=ranked()[:1])
                       .run(ctx.backbone, data, zoo, ctx.head_rows(task)))

    return run_variants(ctx, tasks, variants, out, progress, "zoos")


def zoo_summary(rows: Sequence[dict], zoos: dict[str, Zoo]) -> list[dict]:
    """Per zoo of :func:`ablate_zoos` rows: the records MVP voted from (how many, their mean
    accuracy on their own tasks and training TFLOPs), MVP's and the nearest record's mean accuracy,
    with how many of the target's classes MVP's neighbours' tasks share on average."""
    out = []
    for name, zoo in zoos.items():
        mine = [r for r in rows if r.get("zoo") == name and r["family"] == "MVP"]
        alone = [r["accuracy"] for r in rows if r.get("zoo") == name and r["family"] == "nearest record"]
        voters = [zoo.get(n, zoo.source_method) for r in mine for n in r.get("neighbours") or ()]
        out.append({"zoo": name, "folder": str(zoo.root), "tasks": len(mine), "voters": len({v.record_id for v in voters}),
                    "voter_accuracy": float(np.mean([v.accuracy for v in voters])) if voters else float("nan"),
                    "voter_tflops": float(np.mean([v.flops for v in voters])) / 1e12 if voters else float("nan"),
                    "accuracy": float(np.mean([r["accuracy"] for r in mine])) if mine else float("nan"),
                    "nearest_accuracy": float(np.mean(alone)) if alone else float("nan"),
                    "shared": float(np.mean([o["shared"] for o in neighbour_overlap(mine, zoo)])) if mine else float("nan")})
    return out


def ablate_unseen(ctx: BenchContext, target: ImageDataset, count: int, profile: Profile, seed: int = 1000, out=None, progress=True) -> list[dict]:
    """Target tasks from a dataset the backbone and the zoo never saw (5-way, seeded): MVP at J
    (neighbours from the zoo by LEEP, head by imprinting) against IFP at J and at 10·J."""
    if set(target.classes) & set(ctx.dataset.classes):
        raise ConfigError(f"{target.name} shares classes with the zoo's dataset; the unseen ablation needs new classes")
    tasks = sample_tasks(target, min(5, target.num_classes), count, seed=seed)
    unseen = BenchContext(ctx.backbone, ctx.classes, target, ctx.zoo)  # head_rows: None, the classes are new
    return bench(unseen, main_methods(profile)[:3], tasks, out, progress)


# ----------------------------------------------------------------------------- where MVP's gain comes from


SEARCHES = {"leep": "LEEP over the whole zoo", "preselect": "LEEP over the embedding's top 20",
            "leep-10": "LEEP on 10 images per class", "wordnet": "WordNet (no forward pass)"}


def find_neighbours(ctx: BenchContext, data, neighbours: int = 3, search: str = "leep",
                    embedding: Similarity | None = None) -> tuple[list[ZooRecord], float]:
    """MVP's neighbours for a task by one of :data:`SEARCHES` and the search's forward-pass TFLOPs.
    ``embedding``: the pre-selecting measure to reuse across tasks (it caches the zoo's class means)."""
    costs = Costs()
    pool = ctx.zoo.records(method=ctx.zoo.source_method)
    if search == "preselect" and embedding is None:
        embedding = make_similarity("embedding", backbone=ctx.backbone, dataset=ctx.dataset)
    measure = {"leep-10": LEEPSimilarity(per_class=10), "wordnet": make_similarity("wordnet", dataset=ctx.dataset)}.get(search) \
        or make_similarity("leep")
    ranked = nearest(ctx.zoo, data, neighbours, measure, preselect=embedding if search == "preselect" else None, records=pool, costs=costs)
    return [r for r, _ in ranked], costs.tflops


def same_images(settings: dict, iterations: int, batch_size: int) -> dict:
    """``settings`` with the steps that see ``iterations`` × ``batch_size`` images at the batch size
    they name (none named: unchanged; iterations they name: kept)."""
    if "batch_size" not in settings or "iterations" in settings:
        return settings
    return settings | {"iterations": max(1, iterations * batch_size // settings["batch_size"])}


def ablate_budget(ctx: BenchContext, tasks: Sequence[Task], profile: Profile, mvp_iterations=(10, 20, 50, 100),
                  conventional_iterations=(20, 50, 100, 200), searches=("preselect", "leep-10", "wordnet"),
                  mvp_variants: dict[str, dict] | None = None, others: Mapping[str, Sequence[int]] | None = None,
                  out=None, progress=True) -> list[dict]:
    """Accuracy against training FLOPs for MVP, conventional pruning (IFP; AHNP for a ViT) and
    random pruning on the same tasks, for :func:`flops_ratio` and :func:`plot_budget`. MVP's rows
    carry the FLOPs of its LEEP search (``search_tflops``); at the profile's J, MVP also runs with
    each cheaper search of ``searches`` (:data:`SEARCHES`: LEEP among the embedding's top 20 only,
    LEEP on 10 images per class, WordNet). ``mvp_variants``: more MVP families, ``{name: settings}``
    (e.g. ``{"MVP (freeze 0.5)": {"freeze": 0.5}}``), each at every J of ``mvp_iterations`` with
    the same neighbours (``"neighbours": n``: the first n of the same LEEP ranking). A variant's
    ``batch_size`` keeps J's images: it runs J · batch / batch_size steps. ``others``: more
    registered methods at their own budgets, ``{key: (J, ...)}``; by default the nearest record
    (what ``prune --method auto`` runs when the zoo holds the ratio) at ``mvp_iterations`` and the
    profile's peers (Torch-Pruning's pipelines) at ``conventional_iterations``."""
    key = profile.upper_bound
    unknown = [s for s in searches if s not in SEARCHES]
    if unknown:
        raise ConfigError(f"unknown neighbour search(es) {', '.join(unknown)}; choose from {', '.join(SEARCHES)}")
    if others is None:
        others = {"nearest": mvp_iterations, **{peer: conventional_iterations for peer in profile.peers}}
    other_methods = [profile_method(profile, k, ctx.dataset, iterations=j) for k, budgets in others.items() for j in budgets]

    embedding = make_similarity("embedding", backbone=ctx.backbone, dataset=ctx.dataset) if "preselect" in searches else None

    def variants(data, task, log):
        found = functools.cache(lambda search, n: find_neighbours(ctx, data, n, search=search, embedding=embedding))

        def mvp(j: int, search: str = "leep", neighbours: int = 3, **settings):
            records, search_tflops = found(search, neighbours)
            settings = same_images(settings, j, profile.batch_size)
            result = ctx.run(create_method("mvp", **(profile.settings("mvp", iterations=j) | settings), neighbours=records), data)
            result.params["search_tflops"] = search_tflops  # given neighbours: charge the search that found them
            return result

        for j in conventional_iterations:
            conventional = create_method(key, **profile.settings(key, iterations=j))
            yield f"{conventional.name} J={j}", {"family": conventional.name, "x": j}, lambda m=conventional: ctx.run(m, data)
        for j in mvp_iterations:
            yield f"MVP J={j}", {"family": "MVP", "x": j}, lambda j=j: mvp(j)
            random = create_method("random", **profile.settings("random", iterations=j))
            yield f"random J={j}", {"family": "random", "x": j}, lambda m=random: ctx.run(m, data)
        for name, settings in (mvp_variants or {}).items():
            for j in mvp_iterations:
                yield f"{name} J={j}", {"family": name, "x": j}, lambda j=j, settings=settings: mvp(j, **settings)
        for search in searches:
            yield f"MVP ({search}) J={profile.iterations}", {"family": f"MVP ({search})", "x": profile.iterations}, \
                lambda search=search: mvp(profile.iterations, search)
        for m in other_methods:
            yield f"{m.name} J={m.iterations}", {"family": m.name, "x": m.iterations}, lambda m=m: ctx.run(m, data)

    return run_variants(ctx, tasks, variants, out, progress, "budget")


def _mvp_cases(ctx: BenchContext, tasks: Sequence[Task], profile: Profile, cases, out, progress, desc: str) -> list[dict]:
    """MVP with each case's ``(label, extra, settings)`` over the profile's, all from the same LEEP
    neighbours per task (searched once, when a case first runs)."""
    def variants(data, task, log):
        neighbours = functools.cache(lambda: find_neighbours(ctx, data)[0])
        for label, extra, settings in cases:
            yield label, extra, lambda settings=settings: ctx.run(
                create_method("mvp", **(profile.settings("mvp") | settings), neighbours=neighbours()), data)

    return run_variants(ctx, tasks, variants, out, progress, desc)


def ablate_decomposition(ctx: BenchContext, tasks: Sequence[Task], profile: Profile, iterations=(0, None), out=None, progress=True) -> list[dict]:
    """What MVP's start is worth, part by part, before fine-tuning (J = 0) and after J steps (the
    profile's): the voted Omega with averaged neighbour weights (MVP), the voted Omega with the
    backbone's weights, random units with averaged weights, the single nearest neighbour's model
    as it is, and random units with the backbone's weights (random pruning). The same LEEP
    neighbours, head (the pre-trained rows when the backbone knows the classes) and BatchNorm
    re-estimation for all."""
    parts = {"MVP: vote + averaged weights": dict(omega="vote", init="neighbours"),
             "vote + backbone weights": dict(omega="vote", init="backbone"),
             "random units + averaged weights": dict(omega="random", init="neighbours"),
             "nearest neighbour as it is": dict(omega="nearest", init="neighbours"),
             "random units + backbone weights": dict(omega="random", init="backbone")}
    steps = [profile.iterations if j is None else j for j in iterations]
    cases = [(f"{name} J={j}", {"family": f"J={j}", "x": name}, {"iterations": j, **part}) for j in steps for name, part in parts.items()]
    return _mvp_cases(ctx, tasks, profile, cases, out, progress, "decomposition")


def ablate_head(ctx: BenchContext, tasks: Sequence[Task], profile: Profile, head_steps=(0, 10), out=None, progress=True) -> list[dict]:
    """MVP at J with each head: the pre-trained rows for the task's classes (when the backbone
    knows them), the neighbours' rows (imprinted rows for classes no neighbour has) or imprinted
    on the sub-network's features, each with and without head-only steps before fine-tuning."""
    names = {"pretrained": "pre-trained rows", "neighbours": "neighbours' rows", "imprint": "imprinted"}
    heads = ("pretrained", "neighbours", "imprint") if ctx.classes else ("neighbours", "imprint")
    cases = [(f"{names[head]}, {steps} head steps", {"family": f"{steps} head-only steps", "x": names[head]}, {"head": head, "head_steps": steps})
             for steps in head_steps for head in heads]
    return _mvp_cases(ctx, tasks, profile, cases, out, progress, "head")


def ablate_recipe(ctx: BenchContext, tasks: Sequence[Task], profile: Profile, lr_factors=(0.5, 1, 2, 4), batch_factors=(1, 2, 4),
                  out=None, progress=True) -> list[dict]:
    """MVP's few-step fine-tuning recipe at a fixed image budget (J x batch, the profile's): the
    peak learning rate times each of ``lr_factors``, and the batch divided by each of
    ``batch_factors`` with J multiplied by it (the same images and FLOPs, more and smaller steps)."""
    base, cases = profile.settings("mvp"), []
    for b in batch_factors:
        j, batch = base["iterations"] * b, max(1, base["batch_size"] // b)
        for f in lr_factors:
            cases.append((f"J={j} batch {batch} lr {base['lr'] * f:g}", {"family": f"J={j}, batch {batch}", "x": f"lr x{f:g}"},
                          {"lr": base["lr"] * f, "iterations": j, "batch_size": batch}))
    return _mvp_cases(ctx, tasks, profile, cases, out, progress, "recipe")


def neighbour_overlap(rows: Sequence[dict], zoo: Zoo) -> list[dict]:
    """For each MVP row: the mean number of the target's classes its neighbours' tasks share
    (``shared``), next to its accuracy."""
    out = []
    for r in rows:
        if not r.get("neighbours"):
            continue
        target = set(r["classes"])
        shared = [len(target & set(zoo.get(n, zoo.source_method).task.classes)) for n in r["neighbours"]]
        out.append({"task": r["task"], "method": r["method"], "accuracy": r["accuracy"], "shared": float(np.mean(shared)),
                    "shared_max": max(shared)})
    return out
