"""MVP at the paper's budget on a GPU, inside a short device lease and its 64 MiB transfer limit.

The paper's profile: r = 0.9; the zoo pruned by IFP with J = 1000, batch 128, lr 0.005; MVP at
J = 100 (batch 128, lr 0.01) against IFP at 10·J = 1000 and at J, and random pruning at J.

All of CIFAR-100 (139 MB) cannot travel to the GPU machine, so `prepare` writes the images of a
seeded universe of --classes classes (all 100 class names are kept, so the backbone's head rows
still apply) and a copy of the backbone into a folder to carry. `run` builds the zoo from tasks of
that universe until its time share is spent, then runs the main table on test tasks of the same
universe (disjoint from the zoo's tasks) until the budget is spent, writing rows as it goes.

    python benchmarks/gpu/gpu_paper.py prepare --out .gpu --classes 24              # here
    python benchmarks/gpu/gpu_paper.py run --data .gpu --out $OUT --zoo-tasks 40 --tasks 20 --zoo-seconds 210 --budget 440  # there

`--profile` picks another budget: with `prepare --backbone <a ViT file>` and `run --profile vit-cpu`
(or `vit-paper`) the zoo is built by AHNP and the table is the ViT one (MVP, AHNP at 10·J, random, UVC, PoWER,
the paper's random). `--ablate-iterations 10,20,50,100,200` runs the iterations ablation (Figure 4:
MVP against the conventional method at the same J) on the test tasks instead of the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))  # the GPU machine runs from the tree, without an install

from metavote.bench import BenchContext, ablate_iterations, bench, main_methods, markdown_table, plot_ablation, summarize  # noqa: E402
from metavote.errors import MetavoteError  # noqa: E402
from metavote.data import ImageDataset, load_dataset, sample_tasks, write_npz_dataset  # noqa: E402
from metavote.models import count_parameters, head_rows_for, load_backbone, locate_backbone, replace_head  # noqa: E402
from metavote.training import evaluate, latency, make_optimizer, select_device, train_steps  # noqa: E402
from metavote.methods import create_method  # noqa: E402
from metavote.profiles import get_profile  # noqa: E402
from metavote.zoo import Zoo, build_zoo  # noqa: E402


def universe(dataset, classes: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return sorted(dataset.classes[i] for i in rng.choice(dataset.num_classes, classes, replace=False))


def prepare(args) -> None:
    full = load_dataset("cifar100", args.data)
    names = universe(full, args.classes, args.seed)
    keep = np.isin(np.arange(full.num_classes), full.class_indices(names))
    train, test = keep[full.train_labels], keep[full.test_labels]  # only these images; all 100 names, so the head rows still apply
    sub = ImageDataset(full.name, list(full.classes), full.train_images[train], full.train_labels[train],
                       full.test_images[test], full.test_labels[test], wnids=full.wnids)
    out = Path(args.out)
    write_npz_dataset(sub, out / "cifar100")
    shutil.copy(locate_backbone(args.backbone), out / "backbone.safetensors")
    (out / "universe.json").write_text(json.dumps({"classes": names, "seed": args.seed}))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"wrote {out}: {len(names)} classes ({len(sub.train_labels)} train / {len(sub.test_labels)} test images) "
          f"and the backbone, {size:.1f} MiB: {', '.join(names)}")


def run(args) -> None:
    start = time.perf_counter()
    left = lambda: args.budget - (time.perf_counter() - start)  # noqa: E731
    device = select_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(args.data)
    names = json.loads((data_root / "universe.json").read_text())["classes"]
    dataset = load_dataset("cifar100", data_root)
    backbone_path = data_root / "backbone.safetensors"
    backbone, meta = load_backbone(backbone_path, dataset=dataset)
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(), "torch": torch.__version__,
           "python": platform.python_version(), "universe": names, "argv": sys.argv}
    print(json.dumps(env), flush=True)
    pool = dataset.subset(names)
    zoo_tasks = sample_tasks(pool, 5, args.zoo_tasks, seed=0)
    profile = get_profile(args.profile)
    key = profile.upper_bound  # IFP for a ResNet profile, AHNP for a ViT one
    conventional = create_method(key, **profile.settings(key, iterations=profile.conventional_factor * profile.iterations // args.shrink))
    params = conventional.settings()

    # 1. the zoo, in chunks so its time share is respected
    zoo_root = Path(args.zoo)
    built = []
    for i in range(0, len(zoo_tasks), args.chunk):
        if time.perf_counter() - start > args.zoo_seconds:
            break
        report = build_zoo(zoo_root, zoo_tasks[i:i + args.chunk], backbone_path, conventional, "cifar100", data_root, progress=False, device=device)
        built += report.done + report.skipped
        print(f"zoo: {len(built)} tasks after {time.perf_counter() - start:.0f} s; failed {report.failed}", flush=True)
    zoo = Zoo(zoo_root, device=device)
    records = zoo.records(method=key)
    zoo_rows = [{"task": r.task.id, "accuracy": r.accuracy, "seconds": r.seconds, "tflops": r.flops / 1e12} for r in records]
    (out / "zoo.json").write_text(json.dumps({"params": params, "records": zoo_rows}, indent=1))
    print(f"zoo of {len(records)}: accuracy {np.mean([r['accuracy'] for r in zoo_rows]):.4f}, "
          f"{np.mean([r['seconds'] for r in zoo_rows]):.1f} s and {np.mean([r['tflops'] for r in zoo_rows]):.2f} TFLOPs per task", flush=True)

    if len(records) < 3:
        raise SystemExit(f"only {len(records)} zoo tasks were built in {args.zoo_seconds:.0f} s; MVP needs 3 neighbours")

    # 2. the main table at the paper's budget, one task at a time until the budget is spent
    ctx = BenchContext(backbone.to(device), meta["classes"], dataset, zoo)
    p = get_profile(args.profile, iterations=profile.iterations // args.shrink)
    methods = main_methods(p, dataset)
    tests = sample_tasks(pool, 5, args.tasks, seed=1000, exclude=zoo_tasks)
    if args.ablate_iterations:
        return ablate(args, ctx, p, tests, start, left, env)
    per_task, done = 0.0, 0
    for task in tests:
        if left() < 1.2 * per_task + 5:
            break
        t0 = time.perf_counter()
        bench(ctx, methods, [task], out / "bench", progress=False)
        per_task, done = max(per_task, time.perf_counter() - t0), done + 1
        print(f"bench: {done} tasks after {time.perf_counter() - start:.0f} s", flush=True)
    if not done:
        raise SystemExit(f"the budget of {args.budget:.0f} s was spent before a test task could run")
    rows = [json.loads(line) for line in (out / "bench" / "rows.jsonl").read_text().splitlines()]
    summary = summarize(rows)

    # 3. the pruned model against the dense one on this device
    task = tests[0]
    data = dataset.load_task(task)
    dense = replace_head(copy.deepcopy(ctx.backbone), task.n_way, head_rows_for(meta["classes"], task.classes))
    dense_accuracy = evaluate(dense, data.test_images, data.test_labels)
    mvp = methods[0].run(ctx.backbone, data, zoo, ctx.head_rows(task))
    steps = iter(data.loader(p.batch_size, device=device))
    step_ms = {}
    for name, model in (("dense", dense), ("mvp", mvp.model)):
        train_steps(model, steps, make_optimizer(model, p.settings("mvp").get("optimizer", "sgd"), 1e-4), 10)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_steps(model, steps, make_optimizer(model, p.settings("mvp").get("optimizer", "sgd"), 1e-4), 50)  # loss.item() waits
        step_ms[name] = 1e3 * (time.perf_counter() - t0) / 50
    speed = {"dense_step_ms": step_ms["dense"], "mvp_step_ms": step_ms["mvp"],
             "dense_params": count_parameters(dense), "mvp_params": count_parameters(mvp.model),
             "dense_ms": 1e3 * latency(dense, repeats=20), "mvp_ms": 1e3 * latency(mvp.model, repeats=20),
             "dense_accuracy": dense_accuracy, "mvp_accuracy": mvp.accuracy}
    result = {"env": env, "zoo": {"tasks": len(records), "params": params}, "bench_tasks": done, "summary": summary, "speed": speed,
              "seconds": time.perf_counter() - start}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    table = markdown_table(summary)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    print(json.dumps(speed))
    print(f"done in {time.perf_counter() - start:.0f} s")


def ablate(args, ctx: BenchContext, profile, tests, start: float, left, env: dict) -> None:
    """The iterations ablation (the paper's Figure 4: MVP against the profile's conventional method
    at the same J) on test tasks of the universe, one task at a time until the budget is spent."""
    iterations = [max(1, int(j) // args.shrink) for j in args.ablate_iterations.split(",")]
    out = Path(args.out)
    per_task, done = 0.0, 0
    for task in tests:
        if left() < 1.2 * per_task + 5:
            break
        t0 = time.perf_counter()
        try:
            ablate_iterations(ctx, [task], profile, iterations, out=out / "iterations", progress=False)
        except MetavoteError as e:  # e.g. AHNP short of the ratio at the smallest J: reported, the task's other rows kept
            print(f"task {task.id}: {e}", flush=True)
        per_task, done = max(per_task, time.perf_counter() - t0), done + 1
        print(f"ablation: {done} tasks after {time.perf_counter() - start:.0f} s", flush=True)
    rows = [json.loads(line) for line in (out / "iterations" / "rows.jsonl").read_text().splitlines()]
    plot_ablation(rows, out / "iterations.png", f"Accuracy against iterations ({profile.name}, {env['device']})", "iterations J",
                  logx=True)
    table = markdown_table(summarize(rows))
    (out / "summary.md").write_text(table + "\n")
    (out / "result.json").write_text(json.dumps({"env": env, "tasks": done, "iterations": iterations,
                                                 "seconds": time.perf_counter() - start}, indent=1))
    print(table)
    print(f"done in {time.perf_counter() - start:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the universe's data and the backbone into a folder to carry")
    p.add_argument("--out", default=".gpu")
    p.add_argument("--data", help="CIFAR-100 root (default: ../shared/data)")
    p.add_argument("--backbone")
    p.add_argument("--classes", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=prepare)
    p = sub.add_parser("run", help="zoo + main table at the paper's budget, within --budget seconds")
    p.add_argument("--data", default=".gpu")
    p.add_argument("--out", required=True)
    p.add_argument("--zoo", default="/tmp/zoo-paper")
    p.add_argument("--device")
    p.add_argument("--zoo-tasks", type=int, default=40)
    p.add_argument("--chunk", type=int, default=5)
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--zoo-seconds", type=float, default=240)
    p.add_argument("--budget", type=float, default=480)
    p.add_argument("--profile", default="paper", help="the budget: paper (ResNet), vit-paper, vit-cpu, cpu")
    p.add_argument("--ablate-iterations", metavar="J,J,...", help="run the iterations ablation at these J instead of the table")
    p.add_argument("--shrink", type=int, default=1, help="divide every iteration count by this (a smoke test of the script)")
    p.set_defaults(func=run)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
