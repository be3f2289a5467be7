"""A first look at the paper's CNN baselines that need no zoo (MEST, DLTH) on the CPU profile.

On --tasks CIFAR-100 5-way tasks drawn with seed 1000 (no zoo, so none is excluded) with the shared width-0.5 ResNet-18 and the `cpu`
budget (r = 0.8, J = 20, batch 64, SGD 0.01): MEST, DLTH with the paper's random ticket and with the
code's magnitude pick, and random pruning (ours and the paper's) as the reference. Not the Table-1
bar (that is `metavote bench --profile cpu` on a 100-task zoo, which adds MVP, IFP and IHT-Reptile).

    python benchmarks/main-tables/cnn_baselines.py --tasks 5        # from the project root
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metavote.bench import markdown_table, summarize
from metavote.data import load_dataset, sample_tasks
from metavote.methods import create_method
from metavote.models import head_rows_for, load_backbone, locate_backbone
from metavote.profiles import get_profile
from metavote.training import set_threads, step_flops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    dataset = load_dataset("cifar100")
    backbone, meta = load_backbone(locate_backbone(), dataset=dataset)
    p = get_profile("cpu")
    methods = {"MEST": create_method("mest", **p.settings("mest")),
               "DLTH (random ticket)": create_method("dlth", **p.settings("dlth")),
               "DLTH (magnitude pick)": create_method("dlth", **p.settings("dlth"), pick="magnitude"),
               "random": create_method("random", **p.settings("random")),
               "random (paper)": create_method("random-paper", **p.settings("random-paper"))}
    rows = []
    for task in sample_tasks(dataset, 5, args.tasks, seed=1000):
        data = dataset.load_task(task)
        for label, method in methods.items():
            r = method.run(backbone, data, None, head_rows_for(meta["classes"], task.classes))
            rows.append({"task": task.id, "method": label, "accuracy": r.accuracy, "tflops": r.costs.tflops, "seconds": r.costs.seconds,
                         "parameters": sum(p.numel() for p in r.model.parameters()),
                         "inference_gflops": step_flops(r.model, 1, backward=False) / 1e9})
            print(f"{task.id} {label:<22} {r.accuracy:.2%}", flush=True)
    save("cnn_baselines", rows, markdown_table(summarize(rows)))


if __name__ == "__main__":
    main()
