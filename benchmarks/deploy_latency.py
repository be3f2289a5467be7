"""Latency of a deployed pruned model on this CPU: dense backbone (PyTorch) against the pruned model in
PyTorch and in ONNX Runtime, at batch 1 (what an edge device runs) and batch 128; file sizes.

The pruned model is a zoo record written as a standalone file (``metavote export --zoo``) and
exported to ONNX (``metavote export --model --onnx``, checked against PyTorch). Each figure is the
median of --repeats timed forward passes after warm-up passes, on random RGB inputs in [0, 1];
PyTorch and ONNX Runtime get the same thread count.

    python benchmarks/deploy_latency.py --zoo runs/zoo-cpu        # from the project root
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from metavote.deploy import export_onnx, export_record, load_pruned
from metavote.models import load_backbone, locate_backbone
from metavote.training import set_threads
from metavote.zoo import Zoo

from _common import save


def median_seconds(fn, x, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--record", help="record id (default: the zoo's first record)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    import onnxruntime as ort

    zoo = Zoo(args.zoo)
    record = zoo.get(args.record) if args.record else zoo.records(method=zoo.source_method)[0]
    folder = Path(tempfile.mkdtemp(prefix="deploy-latency-"))
    pruned_file = export_record(zoo, record.record_id, folder / "pruned.safetensors")
    onnx_file = folder / "pruned.onnx"
    diff = export_onnx(pruned_file, onnx_file)
    backbone_file = locate_backbone()
    dense, _ = load_backbone(backbone_file)
    dense.eval()
    pruned = load_pruned(pruned_file)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    runners = {
        "dense backbone, PyTorch": (lambda x: dense(x), backbone_file),
        "pruned, PyTorch": (lambda x: pruned(x), pruned_file),
        "pruned, ONNX Runtime": (lambda x: session.run(["logits"], {"image": x.numpy()}), onnx_file),
    }
    rows = []
    with torch.no_grad():
        for batch in (1, 128):
            x = torch.rand(batch, *dense.input_size, generator=torch.Generator().manual_seed(0))
            for name, (fn, path) in runners.items():
                seconds = median_seconds(fn, x, args.repeats if batch == 1 else max(5, args.repeats // 5))
                rows.append({"model": name, "batch": batch, "ms": seconds * 1e3, "images_per_s": batch / seconds,
                             "file_mb": path.stat().st_size / 2**20, "parameters": sum(p.numel() for p in (dense if "dense" in name else pruned).parameters())})
                print(f"batch {batch:>3}  {name:<24} {seconds * 1e3:8.2f} ms", flush=True)
    lines = ["| model | batch | median latency (ms) | images/s | speed-up over dense | file (MB) | parameters |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(d for d in rows if d["batch"] == r["batch"] and "dense" in d["model"])
        lines.append(f"| {r['model']} | {r['batch']} | {r['ms']:.2f} | {r['images_per_s']:.0f} | {base['ms'] / r['ms']:.2f}x | "
                     f"{r['file_mb']:.2f} | {r['parameters']:,} |")
    note = (f"\n\nRecord {record.record_id} ({record.method}, r = {record.params.get('ratio')}), ONNX Runtime {ort.__version__} agrees with "
            f"PyTorch to {diff:.1e}; {args.threads} threads each; median of {args.repeats} passes at batch 1, "
            f"{max(5, args.repeats // 5)} at batch 128.")
    save("deploy_latency", rows, "\n".join(lines) + note)


if __name__ == "__main__":
    main()
