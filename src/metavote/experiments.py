"""End-to-end runs built from the library's pieces: the demo (the README's main job)."""

from __future__ import annotations

import os
from pathlib import Path

from .data import load_dataset, sample_tasks
from .models import count_parameters, head_rows_for, load_backbone, locate_backbone, replace_head
from .pruning import ifp
from .training import evaluate, latency, set_threads
from .zoo import Zoo, build_zoo, profile


def demo(
    data: str | os.PathLike | None = None,
    backbone: str | os.PathLike | None = None,
    out: str | os.PathLike = "runs/demo",
    zoo_tasks: int = 4,
    threads: int | None = None,
) -> dict:
    """Load CIFAR-100 and the pre-trained backbone, build (or reuse) a small zoo with IFP on the
    CPU profile, prune one new task, and print its accuracy, costs, size and speed-up.

    At most about 10 minutes on 2 CPU cores (9.4 min measured while a benchmark shared the cores). Returns the printed figures as a dict.
    """
    set_threads(threads)
    out = Path(out)
    dataset = load_dataset("cifar100", data)
    path = locate_backbone(backbone)
    model, meta = load_backbone(path, dataset=dataset)
    print(f"backbone {path.name}: {meta['arch']} width {meta['width']:g}, {count_parameters(model):,} parameters, "
          f"CIFAR-100 top-1 {meta.get('test_acc', float('nan')):.2%} (from its metadata)")

    params = profile("cpu")
    tasks = sample_tasks(dataset, 5, zoo_tasks + 1, seed=2026)
    zoo_tasks_, target = tasks[:-1], tasks[-1]
    print(f"\n[1/2] zoo of {len(zoo_tasks_)} tasks in {out / 'zoo'} (IFP, CPU profile {params})")
    report = build_zoo(out / "zoo", zoo_tasks_, path, params, "cifar100", data, workers=2)
    with Zoo(out / "zoo") as zoo:
        for r in zoo.records():
            print(f"  {r.record_id}  {r.accuracy:.2%}  {', '.join(r.task.classes)}")
    print(f"  built {len(report.done)}, reused {len(report.skipped)}, failed {len(report.failed)}")

    print(f"\n[2/2] pruning a new task: {target}")
    task_data = dataset.load_task(target)
    rows = head_rows_for(meta["classes"], target.classes)
    dense = replace_head(load_backbone(path, dataset=dataset)[0], target.n_way, rows)
    dense_acc = evaluate(dense, task_data.test_images, task_data.test_labels)
    result = ifp(model, task_data, head_rows=rows, progress=True, **params)
    speedup = latency(dense) / latency(result.model)
    figures = {
        "dense_accuracy": dense_acc, "pruned_accuracy": result.accuracy, "tflops": result.costs.tflops,
        "seconds": result.costs.seconds, "parameters": count_parameters(result.model),
        "parameter_ratio": count_parameters(dense) / count_parameters(result.model), "speedup": speedup,
    }
    print(f"  dense backbone with the task's head rows: {dense_acc:.2%}")
    print(f"  IFP r={params['ratio']} J={params['iterations']}: {result.accuracy:.2%} in {result.costs.seconds:.0f} s, "
          f"{result.costs.tflops:.2f} training TFLOPs")
    print(f"  pruned model: {figures['parameters']:,} parameters ({figures['parameter_ratio']:.0f}x fewer), "
          f"{speedup:.1f}x faster inference at batch 128")
    return figures
