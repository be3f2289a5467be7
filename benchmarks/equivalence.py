"""The ResNet path is unchanged by the restructuring: the same seeds give bit-identical results.

Prunes real CIFAR-100 tasks with the shared width-0.5 backbone on short budgets: IFP on 3 tasks
(r = 0.8, J = 30, batch 32; their records form a zoo), then random pruning and MVP (from those 3
records, with the pre-trained head rows and with neighbour rows) on a fourth task, J = 10. For each
result it records the accuracy, the training FLOPs, a SHA-256 of the compact model's state dict and,
for IFP and MVP, the kept units. `results/equivalence_before.json` holds the same computation made
through the pre-restructuring API (`ifp()`, `random_pruning()`, `mvp()` at commit b0453e8); this
script compares against it.

    python benchmarks/equivalence.py        # from the project root; 2 threads; about 25 s
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch

from metavote import Zoo, create_method, head_rows_for, load_backbone, load_dataset, locate_backbone, sample_tasks

from _common import RESULTS, save


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    torch.set_num_threads(2)
    dataset = load_dataset("cifar100")
    backbone, meta = load_backbone(locate_backbone(), dataset=dataset)
    tasks = sample_tasks(dataset, 5, 4, seed=77)
    out, records = {}, []
    folder = Path(tempfile.mkdtemp())
    try:
        with Zoo(folder / "zoo", meta) as zoo:
            for task in tasks[:3]:
                r = create_method("ifp", ratio=0.8, iterations=30, lr=0.01, batch_size=32).run(
                    backbone, dataset.load_task(task), None, head_rows_for(meta["classes"], task.classes))
                out[f"ifp {task.id}"] = [r.accuracy, r.costs.flops, digest(r.model), {k: v.tolist() for k, v in r.subnet.kept.items()}]
                records.append(zoo.add(task, r))
            task = tasks[3]
            data, rows = dataset.load_task(task), head_rows_for(meta["classes"], task.classes)
            budget = {"ratio": 0.8, "iterations": 10, "lr": 0.01, "batch_size": 32}
            r = create_method("random", **budget).run(backbone, data, None, rows)
            out["random"] = [r.accuracy, r.costs.flops, digest(r.model)]
            r = create_method("mvp", **budget, neighbours=records).run(backbone, data, zoo, rows)
            out["mvp"] = [r.accuracy, r.costs.flops, digest(r.model), {k: v.tolist() for k, v in r.subnet.kept.items()}]
            r = create_method("mvp", **budget, neighbours=records).run(backbone, data, zoo, None)
            out["mvp-nohead"] = [r.accuracy, r.costs.flops, digest(r.model), r.params["head"]]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    before = json.loads((RESULTS / "equivalence_before.json").read_text())
    lines = ["| result | accuracy | training GFLOP | state-dict SHA-256 | identical to before |", "|---|---:|---:|---|---|"]
    for key, now in out.items():
        lines.append(f"| {key} | {now[0]:.2%} | {now[1] / 1e9:.1f} | {now[2]} | {'yes' if now == before.get(key) else 'NO'} |")
    save("equivalence", {"now": out, "identical": out == before}, "\n".join(lines))


if __name__ == "__main__":
    main()
