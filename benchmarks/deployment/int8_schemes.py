"""Which int8 scheme: agreement with fp32, and speed in ONNX Runtime and OpenVINO.

For the zoo's first three IFP records (exported as standalone files and to fp32 ONNX), each scheme
of ``quantize_onnx`` (activations/weights: int8/int8 = S8S8, the default; uint8/uint8; uint8/int8,
with and without reduce_range), calibrated on 128 seeded training images of the record's task: the
share of the task's test images whose int8 top-1 is the fp32 top-1. Then S8S8 with 16, 128 and
1024 calibration images. Then, for the first record, the median ms per call of each scheme and of
fp32 in ONNX Runtime and OpenVINO, 1 thread, batch 1 (300 calls) and 128 (30 calls), taking turns
in 3 rounds.

    python benchmarks/deployment/int8_schemes.py --zoo runs/zoo-cpu      # from the project root, nothing else running
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from metavote.deploy import OpenVinoModel, _model_input, _onnx_top1, export_onnx, export_record, ort_session, quantize_onnx
from metavote.experiments import context
from metavote.training import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import md_table, save  # noqa: E402

SCHEMES = {"S8S8": dict(activations="int8", weights="int8"), "U8U8": dict(activations="uint8", weights="uint8"),
           "U8S8": dict(activations="uint8", weights="int8"), "U8S8 reduce_range": dict(activations="uint8", weights="int8", reduce_range=True)}


def calibration(train: np.ndarray, count: int) -> np.ndarray:
    pick = np.sort(np.random.default_rng(0).choice(len(train), min(count, len(train)), replace=False))
    return _model_input(train[pick])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo-cpu")
    ap.add_argument("--records", type=int, default=3)
    args = ap.parse_args()
    set_threads(1)
    ctx = context(args.zoo, read_only=True)
    folder = Path(tempfile.mkdtemp(prefix="metavote-int8-schemes-"))
    agreement, sizes, files = defaultdict(dict), defaultdict(dict), {}
    for record in ctx.zoo.records(method=ctx.zoo.source_method)[:args.records]:
        data = ctx.dataset.load_task(record.task)
        fp32 = folder / f"{record.record_id}.onnx"
        export_onnx(export_record(ctx.zoo, record.record_id, folder / f"{record.record_id}.safetensors"), fp32)
        reference = _onnx_top1(fp32, data.test_images)
        files.setdefault(record.record_id, {"fp32": fp32})
        for name, scheme in SCHEMES.items():
            out = quantize_onnx(fp32, folder / f"{record.record_id}.{name.replace(' ', '_')}.onnx", calibration(data.train_images, 128), **scheme)
            agreement[name][record.record_id] = float(np.mean(_onnx_top1(out, data.test_images) == reference))
            files[record.record_id][name] = out
        for count in (16, 128, 1024):
            out = quantize_onnx(fp32, folder / f"{record.record_id}.cal{count}.onnx", calibration(data.train_images, count))
            sizes[count][record.record_id] = float(np.mean(_onnx_top1(out, data.test_images) == reference))
        print(record.record_id, {k: round(v[record.record_id], 3) for k, v in agreement.items()}, flush=True)
    first = next(iter(files.values()))
    speed = {}
    for batch, calls in ((1, 300), (128, 30)):
        x = np.random.default_rng(0).random((batch, 3, 32, 32), dtype=np.float32)
        cells = {}
        for name, path in first.items():
            session, ov = ort_session(path, 1), OpenVinoModel(path, 1)
            cells[(name, "ONNX Runtime")] = lambda s=session: s.run(None, {"image": x})
            cells[(name, "OpenVINO")] = lambda m=ov: m(torch.from_numpy(x))
        times = defaultdict(list)
        for fn in cells.values():
            fn()
        for _ in range(3):
            for key, fn in cells.items():
                for _ in range(calls // 3):
                    start = time.perf_counter()
                    fn()
                    times[key].append((time.perf_counter() - start) * 1e3)
        for key, t in times.items():
            speed[(*key, batch)] = float(np.median(t))
    records = list(files)
    rows = [[name, *(f"{agreement[name][r]:.1%}" for r in records),
             *(f"{speed[(name, rt, b)]:.3f}" for rt in ("ONNX Runtime", "OpenVINO") for b in (1, 128))] for name in SCHEMES]
    rows.insert(0, ["fp32", *("–" for _ in records), *(f"{speed[('fp32', rt, b)]:.3f}" for rt in ("ONNX Runtime", "OpenVINO") for b in (1, 128))])
    table = md_table(["scheme", *(f"top-1 = fp32's, {r}" for r in records), "ORT ms, batch 1", "ORT ms, batch 128", "OpenVINO ms, batch 1",
                      "OpenVINO ms, batch 128"], rows)
    table += "\n\nS8S8 by calibration images (top-1 = fp32's):\n\n" + md_table(
        ["calibration images", *records], [[n, *(f"{sizes[n][r]:.1%}" for r in records)] for n in sizes])
    save("int8_schemes", {"agreement": agreement, "calibration": {str(k): v for k, v in sizes.items()},
                          "speed": [{"scheme": s, "runtime": rt, "batch": b, "median_ms": v} for (s, rt, b), v in speed.items()]}, table)


if __name__ == "__main__":
    main()
