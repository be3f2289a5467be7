"""The ablations: each runs MVP (and its comparisons) over one varied factor on seeded test tasks,
through the same resumable loop as the bench (:func:`~metavote.bench.harness.run_variants`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data import ImageDataset, Task, sample_tasks
from ..errors import ConfigError
from ..methods import create_method
from ..profiles import Profile, get_profile, ratio_for
from ..similarity import make_similarity, nearest
from ..zoo import Zoo, ZooRecord
from .harness import BenchContext, bench, bench_tasks, main_methods, run_variants


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


def ablate_importance(ctx: BenchContext, other: Zoo, tasks: Sequence[Task], profile: Profile, neighbours: int = 3, out=None,
                      progress=True) -> list[dict]:
    """MVP at J with neighbours from two zoos of the same backbone pruned with different importance
    criteria (e.g. activation and Taylor), each restricted to the tasks both zoos hold."""
    if other.fingerprint != ctx.zoo.fingerprint:
        raise ConfigError(f"zoo {other.root} was built from another backbone than zoo {ctx.zoo.root}")
    common = {r.task.id for r in ctx.zoo.records(method=ctx.zoo.source_method)} & {r.task.id for r in other.records(method=other.source_method)}
    if len(common) < neighbours:
        raise ConfigError(f"the two zoos share {len(common)} tasks; the importance ablation needs at least {neighbours}")
    zoos = {}
    for zoo in (ctx.zoo, other):
        name = str(zoo.records(method=zoo.source_method)[0].params.get("importance", zoo.root.name))
        zoos[name if name not in zoos else f"{name} ({zoo.root.name})"] = zoo
    mvp = profile.settings("mvp")
    leep = make_similarity("leep")

    def variants(data, task, log):
        for name, zoo in zoos.items():
            pool = [r for r in zoo.records(method=zoo.source_method) if r.task.id in common]
            yield (f"{name} zoo", {"family": "MVP", "x": name},
                   lambda zoo=zoo, pool=pool: create_method("mvp", **mvp, neighbours=[r for r, _ in nearest(zoo, data, neighbours, leep, records=pool)])
                   .run(ctx.backbone, data, zoo, ctx.head_rows(task)))

    return run_variants(ctx, tasks, variants, out, progress, "importance")


def ablate_unseen(ctx: BenchContext, target: ImageDataset, count: int, profile: Profile, seed: int = 1000, out=None, progress=True) -> list[dict]:
    """Target tasks from a dataset the backbone and the zoo never saw (5-way, seeded): MVP at J
    (neighbours from the zoo by LEEP, head by imprinting) against IFP at J and at 10·J."""
    if set(target.classes) & set(ctx.dataset.classes):
        raise ConfigError(f"{target.name} shares classes with the zoo's dataset; the unseen ablation needs new classes")
    tasks = sample_tasks(target, min(5, target.num_classes), count, seed=seed)
    unseen = BenchContext(ctx.backbone, ctx.classes, target, ctx.zoo)  # head_rows: None, the classes are new
    return bench(unseen, main_methods(profile)[:3], tasks, out, progress)
