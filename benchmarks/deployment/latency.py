"""Latency like with like: dense and pruned in the same runtime, and where the batch-1 time goes.

Models, all 5-way on one task of the zoo (the CPU profile's r = 0.8 record by default):
``dense`` (the backbone with the task's head: the model before pruning), ``pruned`` (the zoo
record: widths round((1 - r) n), IFP at J = 200) and ``aligned`` (MVP with ``align=8`` on the
same task: widths in multiples of 8, forward FLOPs no more than the record's).

Runtimes: PyTorch eager, ONNX Runtime fp32 (its default optimisation level, which fuses and
lays out for NCHWc), ONNX Runtime int8 (``export_int8``: QDQ static quantisation calibrated on 128
of the task's training images) and OpenVINO fp32 and int8 when installed (the ``openvino``
extra). Batch 1 and 128, 1 and 2 threads, random inputs; each cell is the median (p25-p75) of
--runs calls at batch 1 and --runs/10 at batch 128, after warm-up, the cells of one thread count
and batch size taking turns in 5 rounds. The speed-up is dense over pruned in the same runtime,
beside the FLOPs ratio.

Then, at batch 1 on one thread: the split of the time by operator category in ONNX Runtime and
in PyTorch (``metavote.latency``) against the FLOPs split; the cost per convolution against its
FLOPs (a line fitted to ONNX Runtime's per-node profile: its intercept is what a convolution
costs however small); a latency table of one 3x3 convolution by width; and session creation
with ONNX Runtime's offline-optimised model against the plain export.

Run with nothing else on the machine:

    python benchmarks/deployment/latency.py --zoo runs/zoo-cpu        # from the project root
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metavote.deploy import export_int8, export_onnx, export_record, load_pruned, ort_session, save_pruned, save_result
from metavote.experiments import context, prune
from metavote.latency import CATEGORIES, flops_split, onnx_node_times, onnx_profile, timing, torch_profile
from metavote.models import replace_head
from metavote.pruning import SubNetwork
from metavote.training import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import batch_latency, md_table, save  # noqa: E402

MODELS = ("dense", "pruned", "aligned")


def build_models(zoo_path: str, record_id: str | None, folder: Path) -> tuple[dict[str, Path], dict]:
    """The three standalone models and their ONNX (fp32, int8) exports; facts about them."""
    ctx = context(zoo_path, read_only=True)
    record = ctx.zoo.get(record_id) if record_id else ctx.zoo.records(method=ctx.zoo.source_method)[0]
    task = record.task
    files = {m: folder / f"{m}.safetensors" for m in MODELS}
    export_record(ctx.zoo, record.record_id, files["pruned"])
    dense = replace_head(copy.deepcopy(ctx.backbone), task.n_way, ctx.head_rows(task))
    save_pruned(files["dense"], dense, SubNetwork.full(dense.unit_groups()), task.classes, task=task.to_dict(), method="dense")
    result, _ = prune(ctx, task.classes, "mvp", save=False, progress=False, align=8)
    save_result(files["aligned"], result, task, ctx.zoo.fingerprint)
    facts = {"record": record.record_id, "task": str(task), "widths": {}, "flops": {}, "accuracy": {"pruned": record.accuracy,
                                                                                                  "aligned": result.accuracy}}
    for m, path in files.items():
        model = load_pruned(path)
        facts["widths"][m] = [int(p.shape[0]) for n, p in model.named_parameters() if n.endswith("conv1.weight") or n == "conv1.weight"]
        facts["flops"][m] = flops_split(model)["total"]
        export_onnx(path, folder / f"{m}.onnx")
        int8 = export_int8(path, folder / f"{m}.int8.onnx")
        facts["accuracy"][f"{m} fp32 (ONNX)"], facts["accuracy"][f"{m} int8 (ONNX)"] = int8.fp32_accuracy, int8.accuracy
    return files, facts


def runners(folder: Path, model: str, threads: int) -> dict:
    """Callables on a float NCHW numpy batch, per runtime."""
    torch_model = load_pruned(folder / f"{model}.safetensors")
    fp32 = ort_session(folder / f"{model}.onnx", threads)
    int8 = ort_session(folder / f"{model}.int8.onnx", threads)
    out = {"PyTorch": lambda x: torch_model(torch.from_numpy(x)), "ONNX Runtime fp32": lambda x: fp32.run(None, {"image": x}),
           "ONNX Runtime int8": lambda x: int8.run(None, {"image": x})}
    try:
        from metavote.deploy import OpenVinoModel

        ov, ov8 = OpenVinoModel(folder / f"{model}.onnx", threads), OpenVinoModel(folder / f"{model}.int8.onnx", threads)
        out["OpenVINO fp32"] = lambda x: ov(torch.from_numpy(x))
        out["OpenVINO int8"] = lambda x: ov8(torch.from_numpy(x))
    except Exception as e:  # not installed (an optional extra), or it cannot read the model
        print(f"OpenVINO left out: {e}")
    return out


def latency_grid(folder: Path, runs: int, rounds: int = 5) -> list[dict]:
    """Every (model, runtime) cell at batch 1 and 128 on 1 and 2 threads. The cells of one thread
    count and batch size take turns over ``rounds`` rounds, so a slow spell of this shared machine
    falls on all of them alike; each cell's median and quartiles are over all its calls."""
    rows = []
    for threads in (1, 2):
        set_threads(threads)
        cells = {(model, runtime): fn for model in MODELS for runtime, fn in runners(folder, model, threads).items()}
        rows += batch_latency(cells, runs, rounds, threads=threads)
    return rows


def conv_fit(path: Path, runs: int = 300) -> dict:
    """Per-node kernel times of ONNX Runtime's profile (1 thread, batch 1) against each convolution's
    FLOPs as the kernel ran it (its weight and output shapes in the profile: NCHWc pads channels to
    blocks of 8), for a line ms = a + b * MFLOPs fitted by least squares."""
    convs = [n for n in onnx_node_times(path, runs=runs) if n["op"] in ("Conv", "FusedConv", "NchwcConv")]
    t = np.array([n["ms"] for n in convs])
    f = np.array([2 * float(np.prod(next(iter(n["args"]["input_type_shape"][1].values()))))
                  * np.prod(next(iter(n["args"]["output_type_shape"][0].values()))[-2:]) / 1e6 for n in convs])
    b, a = np.polyfit(f, t, 1)
    return {"nodes": len(convs), "intercept_ms": float(a), "ms_per_mflop": float(b), "conv_ms": float(t.sum()), "conv_mflops": float(f.sum())}


def conv_table(folder: Path, runs: int = 300, widths=range(20, 37)) -> list[dict]:
    """A 3x3 convolution at 8x8 (layer 3's resolution), C in = C out = width: ms in ONNX Runtime, 1 thread, batch 1."""
    rows = []
    for width in widths:
        conv = torch.nn.Sequential(torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU()).eval()
        path = folder / f"conv{width}.onnx"
        torch.onnx.export(conv, (torch.rand(1, width, 8, 8),), str(path), input_names=["image"], output_names=["out"], dynamo=False,
                          opset_version=18)
        session = ort_session(path, 1)
        x = np.random.default_rng(0).random((1, width, 8, 8), dtype=np.float32)
        t = timing(lambda: session.run(None, {"image": x}), runs)
        rows.append({"width": width, "mflops": 2 * width * width * 9 * 64 / 1e6} | t)
    return rows


def session_load(folder: Path) -> list[dict]:
    """Session creation (median of 10) and batch-1 latency: the plain export against ONNX Runtime's
    offline-optimised model written at the basic and extended levels (the 'all' level's layout is
    specific to this CPU, so ONNX Runtime advises against saving it)."""
    import onnxruntime as ort

    rows = []
    source = folder / "aligned.onnx"
    variants = {"plain export": source}
    for level in ("basic", "extended"):
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}")
        options.optimized_model_filepath = str(folder / f"aligned.{level}.onnx")
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        variants[f"offline-optimised ({level})"] = folder / f"aligned.{level}.onnx"
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    for name, path in variants.items():
        loads = []
        for _ in range(10):
            start = time.perf_counter()
            session = ort_session(path, 1)
            loads.append((time.perf_counter() - start) * 1e3)
        rows.append({"model": name, "load_ms": float(np.median(loads))} | timing(lambda: session.run(None, {"image": x}), 300))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo-cpu")
    ap.add_argument("--record", help="record id (default: the zoo's first record)")
    ap.add_argument("--runs", type=int, default=300, help="timed calls per cell at batch 1 (a tenth at batch 128)")
    args = ap.parse_args()
    set_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="metavote-latency-"))
    _, facts = build_models(args.zoo, args.record, folder)
    grid = latency_grid(folder, args.runs)
    set_threads(1)
    profiles = {}
    with torch.no_grad():
        for m in MODELS:
            profiles[f"{m}, ONNX Runtime fp32"] = onnx_profile(folder / f"{m}.onnx", runs=args.runs)
            profiles[f"{m}, ONNX Runtime int8"] = onnx_profile(folder / f"{m}.int8.onnx", runs=args.runs)
            profiles[f"{m}, PyTorch"] = torch_profile(load_pruned(folder / f"{m}.safetensors"), runs=args.runs)
    flops = {m: flops_split(load_pruned(folder / f"{m}.safetensors")) for m in MODELS}
    fits = {m: conv_fit(folder / f"{m}.onnx", args.runs) for m in MODELS}
    table = conv_table(folder, args.runs)
    loads = session_load(folder)
    save("latency", {"facts": facts, "grid": grid, "profiles": profiles, "flops": flops, "conv_fit": fits, "conv_table": table,
                     "session_load": loads}, report(facts, grid, profiles, flops, fits, table, loads))


def report(facts, grid, profiles, flops, fits, table, loads) -> str:
    cell = {(r["threads"], r["model"], r["runtime"], r["batch"]): r for r in grid}
    ratio = {m: facts["flops"]["dense"] / facts["flops"][m] for m in MODELS}
    runtimes = list(dict.fromkeys(r["runtime"] for r in grid))
    rows = []
    for runtime in runtimes:
        for batch in (1, 128):
            for threads in (1, 2):
                d, p, a = (cell[(threads, m, runtime, batch)] for m in MODELS)
                rows.append([runtime, batch, threads, f"{d['median_ms']:.3f} ({d['p25_ms']:.3f}–{d['p75_ms']:.3f})",
                             f"{p['median_ms']:.3f} ({p['p25_ms']:.3f}–{p['p75_ms']:.3f})", f"**{d['median_ms'] / p['median_ms']:.1f}x**",
                             f"{a['median_ms']:.3f} ({a['p25_ms']:.3f}–{a['p75_ms']:.3f})", f"**{d['median_ms'] / a['median_ms']:.1f}x**"])
    out = [f"Task {facts['task']}; record {facts['record']}. Stem/block widths (first conv of each block): "
           + "; ".join(f"{m} {facts['widths'][m]}" for m in MODELS) + ".",
           "Forward FLOPs per image: " + ", ".join(f"{m} {facts['flops'][m] / 1e6:.2f} M" for m in MODELS)
           + f"; FLOPs ratio dense/pruned **{ratio['pruned']:.1f}x**, dense/aligned **{ratio['aligned']:.1f}x**.",
           "Top-1 on the task's test split: " + ", ".join(f"{k} {v:.1%}" for k, v in facts["accuracy"].items() if v is not None) + ".", "",
           "**Same runtime, dense against pruned** (median ms per call, p25–p75):", "",
           md_table(["runtime", "batch", "threads", "dense", "pruned", "speed-up", "aligned", "speed-up"], rows), "",
           "**Where the batch-1 time goes** (1 thread; ms per call by category, adding up to the median call):", ""]
    cats = [c for c in CATEGORIES if any(p.get(c, 0) > 0.0005 for p in profiles.values())]
    out.append(md_table(["model, runtime", *cats, "total"], [[k, *(f"{p[c]:.3f}" for c in cats), f"{p['total']:.3f}"] for k, p in profiles.items()]))
    fcats = [c for c in CATEGORIES if any(c in f for f in flops.values())]
    out += ["", "FLOPs split (forward, batch 1; the BatchNorm FLOPs of PyTorch eager are folded into the convolutions in ONNX):", "",
            md_table(["model", *fcats, "total"], [[m, *(f"{f.get(c, 0) / 1e6:.3f} M ({f.get(c, 0) / f['total']:.1%})" for c in fcats),
                                                  f"{f['total'] / 1e6:.2f} M"] for m, f in flops.items()]), "",
            "**Cost of a convolution against its FLOPs** (ONNX Runtime fp32 profile, 1 thread, batch 1, FLOPs as the kernel ran them; "
            "fitted ms = a + b · MFLOPs; the profiler's timers add to small nodes):", "",
            md_table(["model", "conv nodes", "a: ms per conv, however small", "b: ms per MFLOP", "conv ms (profiled)", "conv MFLOPs"],
                     [[m, f["nodes"], f"{f['intercept_ms']:.4f}", f"{f['ms_per_mflop']:.4f}", f"{f['conv_ms']:.3f}", f"{f['conv_mflops']:.2f}"]
                      for m, f in fits.items()]), "",
            "**One 3x3 convolution + ReLU at 8x8 by width** (C in = C out; ONNX Runtime, 1 thread, batch 1):", "",
            md_table(["width", "MFLOPs", "median ms (p25–p75)"], [[r["width"], f"{r['mflops']:.2f}",
                                                                   f"{r['median_ms']:.4f} ({r['p25_ms']:.4f}–{r['p75_ms']:.4f})"] for r in table]), "",
            "**ONNX Runtime's offline-optimised model** (the aligned model; 1 thread):", "",
            md_table(["model", "session creation ms", "batch-1 median ms"], [[r["model"], f"{r['load_ms']:.1f}", f"{r['median_ms']:.3f}"] for r in loads])]
    return "\n".join(out)


if __name__ == "__main__":
    main()
