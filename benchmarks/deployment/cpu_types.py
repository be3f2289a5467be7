"""Right on any CPU: the export check, OpenVINO's precisions and the channel block, measured on the CPU it runs on.

Four parts, on the zoo's records (the published CIFAR-100 ResNet-18 w0.5 zoo by default: r = 0.8, 5-way tasks)
and the task's own test images (100 per class):

1. ``agreement``: ONNX Runtime and OpenVINO (f32) against PyTorch, per record on its 500 test images: the largest
   logit difference, the logits' scale (largest |logit|), their ratio and top-1 agreement. What ``export --onnx``'s
   relative check (``metavote.deploy.ONNX_TOLERANCE``) must accept; and a deliberately wrong graph (one convolution's
   weights moved by 1%), which it must refuse.
2. ``bf16``: OpenVINO's bf16 against the fp32 model on the same images (``export_bf16``'s figures): top-1 accuracy
   of each, top-1 agreement, relative logit drift. Skipped on a CPU without native bf16.
3. ``latency``: OpenVINO f32 against bf16 (and ONNX Runtime fp32), the first record and its dense 5-way model, batch 1
   and 128, one thread; cells take turns in rounds.
4. ``block``: one 3x3 convolution (8x8, C in = C out) by width in ONNX Runtime, 1 thread, batch 1, around the block
   sizes of AVX2 (8) and AVX-512 (16); then MVP on one task with ``align`` 1, 8, 16 and auto: forward FLOPs, accuracy,
   ONNX Runtime batch-1 latency (or why no widths of that multiple fit the FLOPs).

Run with nothing else on the machine (``--label`` names a setting, e.g. a capped ISA):

    python benchmarks/deployment/cpu_types.py --zoo ../shared/zoos/cifar100-resnet18w0.5-ifp1000
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/deployment/cpu_types.py --parts agreement --label avx2-capped
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from metavote.cpu import channel_block, cpu_name
from metavote.data import to_float
from metavote.deploy import (
    ONNX_TOLERANCE, OnnxModel, OpenVinoModel, export_bf16, export_onnx, export_record, load_pruned, logit_agreement, openvino_bf16,
    ort_session, save_pruned, save_result,
)
from metavote.errors import MetavoteError
from metavote.experiments import context, prune
from metavote.latency import flops_split, timing
from metavote.models import replace_head
from metavote.pruning import SubNetwork
from metavote.training import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import batch_latency, md_table, save  # noqa: E402
from latency import conv_table  # noqa: E402

DEFAULT_ZOO = "../shared/zoos/cifar100-resnet18w0.5-ifp1000"


def _logits(fn, images: np.ndarray, batch: int = 250) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([np.asarray(fn(torch.from_numpy(images[i:i + batch]))) for i in range(0, len(images), batch)])


def agreement(ctx, records, folder: Path) -> list[dict]:
    rows = []
    for record in records:
        path = export_record(ctx.zoo, record.record_id, folder / f"{record.record_id}.safetensors")
        data = ctx.dataset.load_task(record.task)
        x = to_float(torch.from_numpy(data.test_images)).numpy()
        check = export_onnx(path, folder / f"{record.record_id}.onnx", check_images=torch.from_numpy(x))
        reference = _logits(load_pruned(path), x)
        row = {"record": record.record_id, "export_check": check.relative, "images": len(x)}
        runtimes = {"ONNX Runtime": OnnxModel(folder / f"{record.record_id}.onnx")}
        try:
            runtimes["OpenVINO f32"] = OpenVinoModel(folder / f"{record.record_id}.onnx", precision="fp32")
        except MetavoteError as e:
            print(f"OpenVINO left out: {e}")
        for name, model in runtimes.items():
            a = logit_agreement(_logits(model, x), reference)
            row[name] = {"max_abs": a.max_abs, "scale": a.scale, "relative": a.relative, "top1_same": a.top1_same, "ties": a.ties}
        rows.append(row)
        print(f"{record.record_id}: " + "; ".join(f"{k} {v['relative']:.1e} of {v['scale']:.0f}" for k, v in row.items() if isinstance(v, dict)),
              flush=True)
    # a wrong graph: the first record with one convolution's weights moved by 1%
    model = load_pruned(folder / f"{records[0].record_id}.safetensors")
    data = ctx.dataset.load_task(records[0].task)
    x = to_float(torch.from_numpy(data.test_images))
    with torch.no_grad():
        reference = model(x).numpy()
        model.conv1.weight.mul_(1.01)
        wrong = model(x).numpy()
    a = logit_agreement(wrong, reference)
    rows.append({"record": f"{records[0].record_id} with conv1 x 1.01", "wrong_graph": True, "relative": a.relative, "top1_same": a.top1_same,
                 "images": a.images, "refused": not a.ok})
    return rows


def bf16(ctx, records, folder: Path, data_root: str | None) -> list[dict]:
    if not openvino_bf16():
        print("bf16 left out: this CPU has no native bf16 for OpenVINO")
        return []
    rows = []
    for record in records:
        path = folder / f"{record.record_id}.safetensors"
        if not path.exists():
            export_record(ctx.zoo, record.record_id, path)
        report = export_bf16(path, folder / f"{record.record_id}.bf16.onnx", data_root, threads=1)
        data = ctx.dataset.load_task(record.task)
        x = to_float(torch.from_numpy(data.test_images)).numpy()
        drift = logit_agreement(_logits(OpenVinoModel(report.path, threads=1), x), _logits(load_pruned(path), x))
        rows.append({"record": record.record_id, "bf16": report.accuracy, "fp32": report.fp32_accuracy, "agreement": report.agreement,
                     "relative_drift": drift.relative, "images": report.test_images})
        print(f"{record.record_id}: bf16 {report.accuracy:.1%} fp32 {report.fp32_accuracy:.1%} same {report.agreement:.1%} "
              f"drift {drift.relative:.1e}", flush=True)
    return rows


def latency(ctx, record, folder: Path, runs: int, rounds: int = 5) -> list[dict]:
    set_threads(1)
    task = record.task
    files = {"pruned": export_record(ctx.zoo, record.record_id, folder / "lat-pruned.safetensors")}
    dense = replace_head(copy.deepcopy(ctx.backbone), task.n_way, ctx.head_rows(task))
    files["dense"] = save_pruned(folder / "lat-dense.safetensors", dense, SubNetwork.full(dense.unit_groups()), task.classes)
    cells = {}
    for name, path in files.items():
        onnx = folder / f"lat-{name}.onnx"
        export_onnx(path, onnx)
        session = ort_session(onnx, 1)
        cells[name, "ONNX Runtime fp32"] = lambda x, s=session: s.run(None, {"image": x})
        for precision in ("fp32", "bf16"):
            try:
                model = OpenVinoModel(onnx, threads=1, precision=precision)
            except MetavoteError as e:
                print(f"OpenVINO {precision} left out: {e}")
                continue
            cells[name, f"OpenVINO {precision}"] = lambda x, m=model: m(torch.from_numpy(x))
    rows = batch_latency(cells, runs, rounds)
    return rows


def block(ctx, record, folder: Path, runs: int) -> dict:
    set_threads(1)
    conv = conv_table(folder, runs, range(12, 37, 2))
    models = []
    for align in (1, 8, 16, "auto"):
        try:
            result, task = prune(ctx, record.task.classes, "mvp", save=False, progress=False, align=align)
        except MetavoteError as e:  # no widths of that multiple fit the FLOPs
            models.append({"align": align, "infeasible": str(e)})
            print(f"align {align}: {e}", flush=True)
            continue
        path = save_result(folder / f"align{align}.safetensors", result, task, ctx.zoo.fingerprint)
        export_onnx(path, folder / f"align{align}.onnx")
        session = ort_session(folder / f"align{align}.onnx", 1)
        x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
        widths = [len(v) for v in result.subnet.kept.values()]
        models.append({"align": align, "widths": widths, "accuracy": result.accuracy, "mflops": flops_split(result.model)["total"] / 1e6}
                      | timing(lambda: session.run(None, {"image": x}), runs))
        print(f"align {align}: widths {widths} {models[-1]['median_ms']:.3f} ms", flush=True)
    return {"channel_block": channel_block(), "conv": conv, "mvp": models}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default=DEFAULT_ZOO)
    ap.add_argument("--records", type=int, default=10, help="zoo records for the agreement and bf16 parts")
    ap.add_argument("--runs", type=int, default=300, help="timed calls per cell at batch 1 (a tenth at batch 128)")
    ap.add_argument("--parts", default="agreement,bf16,latency,block")
    ap.add_argument("--label", default="", help="a name for this setting, e.g. avx2-capped (the results file takes it)")
    ap.add_argument("--data", help="the data root (default: $METAVOTE_DATA, then ../shared/data)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    set_threads(2)
    ctx = context(args.zoo, args.data, read_only=True)
    records = ctx.zoo.records(method=ctx.zoo.source_method)[: args.records]
    folder = Path(tempfile.mkdtemp(prefix="metavote-cpu-types-"))
    out = {"cpu": cpu_name(), "tolerance": ONNX_TOLERANCE}
    if "agreement" in parts:
        out["agreement"] = agreement(ctx, records, folder)
    if "bf16" in parts:
        out["bf16"] = bf16(ctx, records, folder, args.data)
    if "latency" in parts:
        out["latency"] = latency(ctx, records[0], folder, args.runs)
    if "block" in parts:
        out["block"] = block(ctx, records[0], folder, args.runs)
    save("cpu_types" + (f"_{args.label}" if args.label else ""), out, report(out))


def report(out: dict) -> str:
    lines = [f"CPU: {out['cpu']}"]
    if out.get("agreement"):
        real = [r for r in out["agreement"] if not r.get("wrong_graph")]
        for runtime in ("ONNX Runtime", "OpenVINO f32"):
            rel = [r[runtime]["relative"] for r in real if runtime in r]
            if rel:
                same = sum(r[runtime]["top1_same"] for r in real if runtime in r)
                total = sum(r["images"] for r in real if runtime in r)
                absd = [r[runtime]["max_abs"] for r in real if runtime in r]
                scale = [r[runtime]["scale"] for r in real if runtime in r]
                lines.append(f"- {runtime} vs PyTorch on {len(rel)} records x their test images: largest logit difference "
                             f"{min(absd):.1e}-{max(absd):.1e} (logits' scale {min(scale):.0f}-{max(scale):.0f}), relative "
                             f"{min(rel):.1e}-{max(rel):.1e}; same top-1 on {same} of {total}")
        wrong = next(r for r in out["agreement"] if r.get("wrong_graph"))
        lines.append(f"- a wrong graph ({wrong['record']}): relative {wrong['relative']:.1e}, same top-1 on {wrong['top1_same']} of "
                     f"{wrong['images']}; refused at tolerance {out['tolerance']:g}: {wrong['refused']}")
    if out.get("bf16"):
        rows = [[r["record"], f"{r['fp32']:.1%}", f"{r['bf16']:.1%}", f"{100 * (r['bf16'] - r['fp32']):+.1f}", f"{r['agreement']:.1%}",
                 f"{r['relative_drift']:.1e}"] for r in out["bf16"]]
        d = np.array([r["bf16"] - r["fp32"] for r in out["bf16"]]) * 100
        lines += ["", md_table(["record", "fp32 top-1", "bf16 top-1", "points", "same top-1", "logit drift (relative)"], rows),
                  "", f"bf16 - fp32: {d.mean():+.2f} +- {d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0:.2f} points (mean +- s.e.), "
                  f"worst {d.min():+.1f}"]
    if out.get("latency"):
        rows = [[r["model"], r["runtime"], r["batch"], f"{r['median_ms']:.3f} ({r['p25_ms']:.3f}-{r['p75_ms']:.3f})"] for r in out["latency"]]
        lines += ["", "Latency, 1 thread (median ms, p25-p75):", "", md_table(["model", "runtime", "batch", "ms"], rows)]
    if out.get("block"):
        b = out["block"]
        lines += ["", f"Channel block here (metavote.cpu.channel_block): {b['channel_block']}", "",
                  md_table(["width", "MFLOPs", "median ms"], [[r["width"], f"{r['mflops']:.2f}", f"{r['median_ms']:.4f}"] for r in b["conv"]]),
                  "", md_table(["align", "widths", "forward MFLOPs", "accuracy", "ONNX Runtime batch 1 ms"],
                               [[r["align"], r["widths"], f"{r['mflops']:.1f}", f"{r['accuracy']:.1%}", f"{r['median_ms']:.3f}"]
                                if "infeasible" not in r else [r["align"], r["infeasible"], "", "", ""] for r in b["mvp"]])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
