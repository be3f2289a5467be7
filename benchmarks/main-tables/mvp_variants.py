"""Candidate improvements to MVP on validation tasks (never the test tasks): each variant is MVP
with some settings changed, on the same tasks and the same LEEP neighbours, at the profile's
image budget (J x batch).

    python benchmarks/main-tables/mvp_variants.py --zoo runs/zoo-cpu [--tasks 8] [--seed 7] [--group init]
    python benchmarks/main-tables/mvp_variants.py --zoo runs/zoo-j1000 --tasks 30 --group combined
    python benchmarks/main-tables/mvp_variants.py --zoo runs/zoo-vit-cpu --profile vit-cpu \
        --backbone ../shared/pretrained/cifar100_vit_d192_l6_h6.safetensors --group combined --variants ...
    python benchmarks/main-tables/mvp_variants.py test --zoo runs/zoo-j1000 --group combined \
        --variants NAME ... --out runs/budget-j1000-variants/budget    # once, on the main table's tasks

``test`` runs the chosen variants at every J of `metavote ablate budget --temperature 0.5` on the
main table's 20 test tasks (seed 1000) and gives each one's FLOPs ratio at equal accuracy against
IFP. It resumes the rows of that command's ``--out`` folder, so only the variants' rows are new.

"MVP (paper)" and every variant vote at tau = 0.5, MVP's default until these runs chose 0.1,
unless the variant's name gives tau.

Groups of variants:

- ``init`` (the first look, on the J = 200 zoo): the paper's MVP (voted units, weights averaged
  over the neighbours that hold them); each kept weight from the most similar neighbour that holds
  it (``init="nearest-first"``); the nearest neighbour's model as it is (``omega="nearest"``); and
  each of these with half the batch and twice the steps (the same images and FLOPs).
- ``combined``: the levers that won on their own, alone and together (half the batch for twice the
  steps, lr 0.02, 5 or 8 neighbours, a colder vote (tau 0.1), the nearest neighbour's model,
  nearest-first weights), for a zoo of better records.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
from pathlib import Path

import numpy as np

from metavote.bench import ablate_budget, bench_tasks, flops_ratio, plot_budget, run_variants
from metavote.bench.ablations import find_neighbours, same_images
from metavote.experiments import context
from metavote.methods import create_method
from metavote.profiles import get_profile
from metavote.training import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import FIGURES, md_table, save  # noqa: E402

PAPER_TAU = 0.5  # every variant votes at tau = 0.5, MVP's default when they were measured, unless it says otherwise
HALF = {"batch_size": 32}  # the same images in steps of 32: the CPU profile's 20 x 64 as 40 x 32
GROUPS = {
    "init": {
        "MVP (paper)": {},
        "nearest-first weights": {"init": "nearest-first"},
        "nearest neighbour as it is": {"omega": "nearest"},
        "MVP (paper), J x2 batch /2": HALF,
        "nearest-first weights, J x2 batch /2": {"init": "nearest-first"} | HALF,
        "nearest neighbour as it is, J x2 batch /2": {"omega": "nearest"} | HALF,
    },
    "combined": {
        "MVP (paper)": {},
        "MVP, 40 x 32": HALF,
        "MVP, lr 0.02": {"lr": 0.02},
        "MVP, 5 neighbours": {"neighbours": 5},
        "MVP, 5 neighbours, 40 x 32": {"neighbours": 5} | HALF,
        "nearest neighbour as it is": {"omega": "nearest"},
        "nearest neighbour as it is, 40 x 32": {"omega": "nearest"} | HALF,
        "nearest neighbour as it is, lr 0.02": {"omega": "nearest", "lr": 0.02},
        "nearest-first weights, 40 x 32": {"init": "nearest-first"} | HALF,
        "MVP, 8 neighbours, 40 x 32": {"neighbours": 8} | HALF,
        "nearest-first weights, 5 neighbours, 40 x 32": {"init": "nearest-first", "neighbours": 5} | HALF,
        "MVP, tau 0.1": {"temperature": 0.1},
        "MVP, tau 0.1, 40 x 32": {"temperature": 0.1} | HALF,
        "MVP, 8 neighbours, tau 0.1, 40 x 32": {"neighbours": 8, "temperature": 0.1} | HALF,
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", nargs="?", choices=["validation", "test"], default="validation")
    ap.add_argument("--variants", nargs="+", default=[],
                    help="the group's variants to run (validation: default all, the paper's MVP always; test: required)")
    ap.add_argument("--zoo", default="runs/zoo-cpu")
    ap.add_argument("--profile", default="cpu", help="validation: the budget (cpu; vit-cpu for a ViT zoo)")
    ap.add_argument("--backbone", help="the backbone the zoo was built from (default: the shared ResNet)")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7, help="validation task seed (the test tasks use 1000)")
    ap.add_argument("--group", choices=sorted(GROUPS), default="init")
    ap.add_argument("--out", default=None, help="row log folder (default runs/mvp-variants[-GROUP])")
    ap.add_argument("--name", default=None, help="results file name (default mvp_variants[_GROUP])")
    args = ap.parse_args()
    suffix = "" if args.group == "init" else f"_{args.group}"
    unknown = [v for v in args.variants if v not in GROUPS[args.group]]
    if unknown or (args.stage == "test" and not args.variants):
        raise SystemExit(f"name variants of the {args.group!r} group with --variants: {', '.join(GROUPS[args.group])}")
    set_threads(2)
    ctx = context(args.zoo, backbone=args.backbone)
    if args.stage == "test":
        return test(ctx, args, suffix)
    base = get_profile(args.profile).settings("mvp")
    tasks = bench_tasks(ctx.dataset, ctx.zoo, args.tasks, seed=args.seed)
    chosen = {name: settings for name, settings in GROUPS[args.group].items()
              if not args.variants or name == "MVP (paper)" or name in args.variants}
    most = max(settings.get("neighbours", 3) for settings in chosen.values())

    def variants(data, task, log):
        # one LEEP ranking per task; a variant with n neighbours takes its first n
        ranked = functools.cache(lambda: find_neighbours(ctx, data, neighbours=most)[0])
        for name, settings in chosen.items():
            settings = {"temperature": PAPER_TAU} | settings
            n = settings.pop("neighbours", 3)
            settings = same_images(settings, base["iterations"], base["batch_size"])
            yield name, {"family": name}, lambda settings=settings, n=n: \
                ctx.run(create_method("mvp", **(base | settings), neighbours=ranked()[:n]), data)

    rows = run_variants(ctx, tasks, variants, args.out or f"runs/mvp-variants{suffix.replace('_', '-')}", True, "variants")
    by = collections.defaultdict(list)
    for r in rows:
        by[r["method"]].append(r)
    paper = {r["task"]: r["accuracy"] for r in by["MVP (paper)"]}
    results = []
    for name in chosen:
        sel = by[name]
        acc = np.array([r["accuracy"] for r in sel])
        diff = np.array([r["accuracy"] - paper[r["task"]] for r in sel])
        results.append({"variant": name, "tasks": len(sel), "accuracy": float(acc.mean()), "std": float(acc.std()),
                        "vs_paper": float(diff.mean()), "vs_paper_std": float(diff.std()), "wins": int((diff > 0).sum()),
                        "ties": int((diff == 0).sum()), "tflops": float(np.mean([r["tflops"] for r in sel]))})
    table = md_table(["variant", "tasks", "accuracy (%)", "against the paper's MVP (points)", "tasks ahead / tied", "training TFLOPs"],
                     [[r["variant"], r["tasks"], f"{100 * r['accuracy']:.2f} ± {100 * r['std']:.2f}",
                       f"{100 * r['vs_paper']:+.2f} ± {100 * r['vs_paper_std']:.2f}", f"{r['wins']} / {r['ties']}", f"{r['tflops']:.3f}"]
                      for r in results])
    save(args.name or f"mvp_variants{suffix}", results, table)


def test(ctx, args, suffix: str) -> None:
    tasks = bench_tasks(ctx.dataset, ctx.zoo, 20, seed=1000)
    rows = ablate_budget(ctx, tasks, get_profile("cpu", temperature=PAPER_TAU), mvp_variants={v: GROUPS[args.group][v] for v in args.variants},
                         out=args.out or "runs/budget-test/budget")
    ifp = {r["task"]: r["accuracy"] for r in rows if r["method"] == "IFP J=200"}
    table = []
    for family in ["MVP", *args.variants]:
        for r, s in zip(flops_ratio(rows, family), flops_ratio(rows, family, search=True)):
            gap = [x["accuracy"] - ifp[x["task"]] for x in rows if x["family"] == family and x["x"] == r["x"]]
            bound = r["bound"].replace("=", "")
            table.append([f"{family} J={r['x']}", f"{100 * r['accuracy']:.2f}", f"{100 * np.mean(gap):+.2f} ({sum(g > 0 for g in gap)} / {len(gap)})",
                          f"{r['tflops']:.3f}", f"{bound}{r['reference_tflops']:.3f} ({bound}{r['reference_iterations']:.0f})",
                          f"{bound}{r['ratio']:.1f}x", f"{s['bound'].replace('=', '')}{s['ratio']:.1f}x"])
    zoo = f"neighbours from {args.zoo} ({len(ctx.zoo.records(method=ctx.zoo.source_method))} records)"
    shown = [r | {"search_tflops": 0.0, "family": "MVP (paper), tau 0.5" if r["family"] == "MVP" else r["family"]}  # training FLOPs only
             for r in rows if r["family"] in ("IFP", "random", "MVP", *args.variants)]
    name = args.name or f"mvp_variants{suffix}_test"
    plot_budget(shown, FIGURES / f"ablation_{name}.png", "MVP's variants against IFP, training FLOPs")
    save(name, [r for r in rows if r["family"] in ("MVP", "IFP", *args.variants)],
         f"The main table's {len(tasks)} test tasks (seed 1000), CPU profile, {zoo}; FLOPs ratio at equal accuracy against IFP:\n\n"
         + md_table(["variant", "accuracy (%)", "against IFP at 200 (tasks ahead)", "training TFLOPs", "IFP needs TFLOPs (iterations)",
                     "ratio", "ratio with LEEP search"], table))


if __name__ == "__main__":
    main()
