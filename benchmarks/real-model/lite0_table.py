"""The main table on EfficientNet-Lite0 with its ImageNet weights (the ``lite0-cpu`` profile, the zoo of
``lite0_zoo.py``): test tasks disjoint from the zoo drawn from its 80 classes, every row at J and the
conventional pipelines also at 10 J (MVP, the nearest record, which ``auto`` picks on a zoo at the ratio,
Torch-Pruning magnitude, Taylor and iterative, IFP, random), with the FLOPs ratio at equal accuracy against
the strongest pipeline; then the unseen check (tasks of the 20 classes no zoo task has) with MVP, the
nearest record, Torch-Pruning magnitude and IFP; then the ImageNet head (``--head-map wordnet``: a class's
ImageNet kinds start its head row) beside the same tasks' rows without it. Resumable (rows.jsonl per part).

    python benchmarks/real-model/lite0_table.py [--zoo runs/zoo-lite0] [--tasks 6] [--unseen 4] [--out runs/lite0-table]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo-lite0")
    ap.add_argument("--tasks", type=int, default=6)
    ap.add_argument("--unseen", type=int, default=4)
    ap.add_argument("--out", default="runs/lite0-table")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()

    import dataclasses

    from lite0_zoo import held_out_classes
    from metavote.bench import bench, main_methods, markdown_table, one_off_costs, ratio_notes, summarize, write_table
    from metavote.bench.harness import profile_method
    from metavote.data import sample_tasks
    from metavote.experiments import context
    from metavote.profiles import get_profile
    from metavote.training import set_threads

    set_threads(args.threads)
    profile = get_profile("lite0-cpu")
    ctx = context(args.zoo, device="cpu", read_only=True)
    held = held_out_classes(ctx.dataset.classes)
    pool = [c for c in ctx.dataset.classes if c not in held]
    zoo_tasks = [r.task for r in ctx.zoo.records(status=None)]
    seen = sample_tasks(ctx.dataset, 5, args.tasks, seed=1000, exclude=zoo_tasks, classes=pool)
    unseen = sample_tasks(ctx.dataset, 5, args.unseen, seed=1001, classes=held)
    out = Path(args.out)
    j, big = profile.iterations, profile.conventional_factor * profile.iterations
    parts = {}

    rows = bench(ctx, main_methods(profile, ctx.dataset, also=("nearest",)), seen, out / "seen", True)
    parts["seen"] = rows
    few = [profile_method(profile, "mvp", ctx.dataset), profile_method(profile, "nearest"),
           *[profile_method(profile, "tp-magnitude", iterations=n) for n in (j, big)], profile_method(profile, "ifp", iterations=big)]
    parts["unseen"] = bench(ctx, few, unseen, out / "unseen", True)
    cheap = [profile_method(profile, "mvp", ctx.dataset), profile_method(profile, "nearest"), profile_method(profile, "tp-magnitude")]
    parts["wordnet_head"] = bench(dataclasses.replace(ctx, head_map="wordnet"), cheap, seen, out / "wordnet-head", True)

    tables = []
    for name, part in parts.items():
        summary = summarize(part)
        notes = "".join(f"\n\n{line}" for line in (*ratio_notes(part), *one_off_costs(part))) if name == "seen" else ""
        title = {"seen": f"{len(seen)} test tasks of the zoo's 80 classes (5-way, seed 1000, none a zoo task), lite0-cpu: 96 px, r = 0.8, "
                         f"J = {j}, batch 64",
                 "unseen": f"{len(unseen)} tasks of the 20 held-out classes (seed 1001), the same budget",
                 "wordnet_head": "the same test tasks, each class's head row from its ImageNet kinds (WordNet), imprinted where it has none"}[name]
        write_table(summary, out / name.replace("_", "-"), title, notes=notes)
        tables.append(f"### {title}\n\n{markdown_table(summary)}{notes}")
    save("lite0_table", {k: v for k, v in parts.items()}, "\n\n".join(tables))


if __name__ == "__main__":
    main()
