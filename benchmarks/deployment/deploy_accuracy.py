"""What the faster deploy options cost in accuracy: aligned widths and int8, on the bench's test tasks.

For each task (the bench's test tasks: seed 1000, disjoint from the zoo): MVP at the profile's
budget with the paper's widths (``align=1``) and with widths in multiples of 8 (``align=8``, no
more FLOPs), same seed; each model exported to ONNX and to int8 (``export_int8``: static
quantisation calibrated on 128 of the task's training images), all scored on the task's test
split. Paired differences with their standard errors.

    python benchmarks/deployment/deploy_accuracy.py --zoo runs/zoo-cpu --tasks 10      # from the project root
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from metavote.bench import bench_tasks
from metavote.deploy import export_int8, save_result
from metavote.experiments import context, prune
from metavote.training import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, save  # noqa: E402


def mean_se(values) -> str:
    v = np.asarray(values, dtype=float) * 100
    return f"{v.mean():+.2f} ± {v.std(ddof=1) / np.sqrt(len(v)):.2f}" if len(v) > 1 else f"{v.mean():+.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo-cpu")
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    ctx = context(args.zoo, read_only=True)
    folder = Path(tempfile.mkdtemp(prefix="metavote-deploy-accuracy-"))
    rows = []
    for task in bench_tasks(ctx.dataset, ctx.zoo, args.tasks, seed=args.seed):
        row = {"task": task.id, "classes": list(task.classes)}
        for align in (1, 8):
            result, _ = prune(ctx, task.classes, "mvp", save=False, progress=False, align=align)
            path = save_result(folder / f"{task.id}-{align}.safetensors", result, task, ctx.zoo.fingerprint)
            int8 = export_int8(path, folder / f"{task.id}-{align}.int8.onnx")
            row[f"align{align}"] = {"torch": result.accuracy, "fp32": int8.fp32_accuracy, "int8": int8.accuracy,
                                    "agreement": int8.agreement, "units": int(sum(len(v) for v in result.subnet.kept.values()))}
        rows.append(row)
        a, b = row["align1"], row["align8"]
        print(f"{task.id}  align 1 {a['torch']:.1%} (int8 {a['int8']:.1%})  align 8 {b['torch']:.1%} (int8 {b['int8']:.1%})", flush=True)
    save("deploy_accuracy", rows, report(rows))


def report(rows) -> str:
    def col(align, key):
        return [r[f"align{align}"][key] for r in rows]

    table = [[r["task"], *(f"{r[f'align{a}'][k]:.1%}" for a in (1, 8) for k in ("torch", "fp32", "int8"))] for r in rows]
    summary = [
        ["aligned (8) − paper widths, PyTorch", mean_se(np.subtract(col(8, "torch"), col(1, "torch"))),
         f"{sum(b > a for a, b in zip(col(1, 'torch'), col(8, 'torch')))} of {len(rows)} ahead"],
        ["int8 − fp32 (ONNX), paper widths", mean_se(np.subtract(col(1, "int8"), col(1, "fp32"))),
         f"worst {min(np.subtract(col(1, 'int8'), col(1, 'fp32'))) * 100:+.1f}; top-1 agreement {np.mean(col(1, 'agreement')):.1%}"],
        ["int8 − fp32 (ONNX), aligned", mean_se(np.subtract(col(8, "int8"), col(8, "fp32"))),
         f"worst {min(np.subtract(col(8, 'int8'), col(8, 'fp32'))) * 100:+.1f}; top-1 agreement {np.mean(col(8, 'agreement')):.1%}"],
    ]
    means = [f"{np.mean(col(a, k)):.2%}" for a in (1, 8) for k in ("torch", "fp32", "int8")]
    return "\n".join([
        md_table(["task", "paper widths: PyTorch", "ONNX fp32", "ONNX int8", "align 8: PyTorch", "ONNX fp32", "ONNX int8"],
                 table + [["**mean**", *means]]), "",
        md_table(["difference (points)", "mean ± SE", ""], summary)])


if __name__ == "__main__":
    main()
