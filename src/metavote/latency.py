"""Where a deployed model's time goes: medians with spread, and a per-operator split against FLOPs.

A pruned model with 25x fewer FLOPs is not 25x faster at batch 1: small operators pay a fixed
cost each, the runtime pays one per call, and widths off the kernels' block sizes take slower
paths. These functions measure that, in the runtime that will run the model::

    timing(lambda: session.run(None, {"image": x}))        # {'median_ms', 'p25_ms', 'p75_ms', 'runs'}
    onnx_profile("model.onnx", batch=1, threads=1)         # ms per category, with 'per-call overhead'
    onnx_node_times("model.onnx")                          # ONNX Runtime's per-node profile: op, ms per call, shapes
    torch_profile(model, batch=1)                          # the same split in PyTorch eager
    flops_split(model)                                     # FLOPs per category

Categories: ``convolutions`` (with what the runtime fuses into them), ``normalisation``
(BatchNorm; the input's Sub/Div), ``activations``, ``residual adds``, ``the head`` (pooling,
flatten, the linear layer), ``layout`` (ONNX Runtime's NCHWc reorders), ``quantisation``
(int8's Quantize/Dequantize), ``other``, and ``per-call overhead``: the wall time of a call
less the time inside its operators.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .deploy import ort_session

CATEGORIES = ("convolutions", "normalisation", "activations", "residual adds", "the head", "layout", "quantisation", "other", "per-call overhead")

_ONNX_OPS = {
    "convolutions": ("Conv", "FusedConv", "NchwcConv", "QLinearConv", "ConvInteger"),
    "normalisation": ("BatchNormalization", "Sub", "Div", "Mul", "LayerNormalization"),
    "activations": ("Relu", "Clip", "Sigmoid", "Gelu", "HardSigmoid", "HardSwish", "QLinearSigmoid"),
    "residual adds": ("Add", "Sum", "QLinearAdd"),
    "the head": ("GlobalAveragePool", "NchwcGlobalAveragePool", "QLinearGlobalAveragePool", "Flatten", "Gemm", "MatMul",
                 "QGemm", "QLinearMatMul", "Reshape", "ReduceMean"),
    "layout": ("ReorderInput", "ReorderOutput", "Transpose"),
    "quantisation": ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"),
}
_ONNX_CATEGORY = {op: cat for cat, ops in _ONNX_OPS.items() for op in ops}

_TORCH_OPS = {
    "convolutions": ("conv2d", "convolution", "_convolution", "mkldnn_convolution", "conv1d"),
    "normalisation": ("batch_norm", "_batch_norm_impl_index", "native_batch_norm", "_native_batch_norm_legit_no_training",
                      "sub", "div", "layer_norm", "native_layer_norm"),
    "activations": ("relu", "relu_", "gelu", "hardswish", "sigmoid", "clamp", "hardtanh", "hardtanh_"),
    "residual adds": ("add", "add_"),
    "the head": ("adaptive_avg_pool2d", "mean", "flatten", "linear", "addmm", "mm", "view", "reshape"),
}
_TORCH_CATEGORY = {op: cat for cat, ops in _TORCH_OPS.items() for op in ops}


def timing(fn: Callable[[], object], runs: int = 200, warmup: int = 20) -> dict[str, float]:
    """Median and quartiles (ms) of ``runs`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = np.percentile(times, [25, 50, 75])
    return {"median_ms": float(q[1]), "p25_ms": float(q[0]), "p75_ms": float(q[2]), "runs": runs}


def onnx_node_times(path: str | os.PathLike, batch: int = 1, threads: int = 1, runs: int = 200, input_size: tuple[int, ...] = (3, 32, 32),
                    optimization: str = "all", warmup: int = 20) -> list[dict]:
    """ONNX Runtime's own profile of ``runs`` calls after ``warmup``: per node of the optimised graph,
    ``{"node", "op", "ms", "args"}`` with ``ms`` its kernel time per call and ``args`` the profile's
    record (input and output shapes as the kernel ran them). The profiler's timers add to small nodes."""
    x = np.random.default_rng(0).random((batch, *input_size), dtype=np.float32)
    session = ort_session(path, threads, optimization, profile=True)
    for _ in range(warmup + runs):
        session.run(None, {"image": x})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    shutil.rmtree(trace.parent)
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    after = starts[warmup] if len(starts) > warmup else 0  # the warm-up calls are left out
    nodes: dict[str, dict] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= after:
            node = nodes.setdefault(e["name"][: -len("_kernel_time")], {"op": e["args"].get("op_name", ""), "ms": 0.0, "args": e["args"]})
            node["ms"] += e["dur"] / 1e3 / runs
    return [{"node": name} | node for name, node in nodes.items()]


def onnx_profile(path: str | os.PathLike, batch: int = 1, threads: int = 1, runs: int = 200, input_size: tuple[int, ...] = (3, 32, 32),
                 optimization: str = "all") -> dict[str, float]:
    """Ms per call in each category (``CATEGORIES``) of an ONNX model in ONNX Runtime at ``batch``,
    adding up to the median unprofiled call (``total``). ``per-call overhead`` is the median call
    of an empty model (one Identity) on the same input; the rest is split in the shares of the
    operators' kernel times in :func:`onnx_node_times` (only their shares: its timers inflate small operators)."""
    x = np.random.default_rng(0).random((batch, *input_size), dtype=np.float32)
    plain = ort_session(path, threads, optimization)
    wall = timing(lambda: plain.run(None, {"image": x}), runs)["median_ms"]
    empty = ort_session(_identity_onnx(), threads)
    overhead = timing(lambda: empty.run(None, {"image": x}), runs)["median_ms"]
    split = defaultdict(float)
    for node in onnx_node_times(path, batch, threads, runs, input_size, optimization):
        split[_ONNX_CATEGORY.get(node["op"], "other")] += node["ms"]
    return _scaled(split, wall, overhead)


def _identity_onnx() -> Path:
    """An ONNX model that returns its input: what a call costs with no work in it."""
    import onnx
    from onnx import TensorProto, helper

    path = Path(tempfile.gettempdir()) / "metavote-identity.onnx"
    if not path.is_file():
        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3, "h", "w"]) for n in ("image", "logits")]
        graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "identity", io[:1], io[1:])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def torch_profile(model: nn.Module, batch: int = 1, runs: int = 200) -> dict[str, float]:
    """The same split for a PyTorch model in eager mode (no grad): the shares of the top-level ATen
    operators' times in ``torch.profiler``, of the median call less the call of an empty module."""
    x = torch.rand(batch, *getattr(model, "input_size", (3, 32, 32)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        wall = timing(lambda: model(x), runs)["median_ms"]
        overhead = timing(lambda: _EMPTY(x), runs)["median_ms"]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(x)
    split = defaultdict(float)
    for e in prof.events():
        if e.cpu_parent is None and e.name.startswith("aten::"):
            split[_TORCH_CATEGORY.get(e.name[len("aten::"):], "other")] += e.cpu_time_total
    return _scaled(split, wall, overhead)


_EMPTY = nn.Identity()


def _scaled(split: dict[str, float], wall: float, overhead: float) -> dict[str, float]:
    inside, work = sum(split.values()) or 1.0, max(0.0, wall - overhead)
    out = {c: work * split.get(c, 0.0) / inside for c in CATEGORIES if c != "per-call overhead"}
    return out | {"per-call overhead": min(overhead, wall), "total": wall}


class _ElementwiseFlops(TorchDispatchMode):
    """FLOPs of the elementwise operators FlopCounterMode leaves out: one per output element (two
    for BatchNorm's scale and shift, one per input element for pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        category = _TORCH_CATEGORY.get(name)
        if category in ("normalisation", "activations", "residual adds") and isinstance(out, torch.Tensor):
            self.flops[category] += out.numel() * (2 if "batch_norm" in name else 1)
        elif isinstance(out, (tuple, list)) and "batch_norm" in name:
            self.flops["normalisation"] += out[0].numel() * 2
        elif name in ("mean", "adaptive_avg_pool2d"):
            self.flops["the head"] += args[0].numel()
        return out


def flops_split(model: nn.Module, batch: int = 1) -> dict[str, int]:
    """Forward FLOPs of ``model`` per category: convolutions and the linear head as FlopCounterMode
    counts them (two per multiply-add), plus the elementwise operators."""
    x = torch.rand(batch, *getattr(model, "input_size", (3, 32, 32)))
    elementwise = _ElementwiseFlops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter, elementwise:
        model.eval()(x)
    split = defaultdict(int, elementwise.flops)
    for op, n in counter.get_flop_counts()["Global"].items():
        name = op.__name__.split(".")[0] if hasattr(op, "__name__") else str(op)
        split["convolutions" if "conv" in name else "the head"] += int(n)
    return {c: split.get(c, 0) for c in CATEGORIES if c != "per-call overhead" and c in split} | {"total": sum(split.values())}


__all__ = ["CATEGORIES", "flops_split", "onnx_node_times", "onnx_profile", "timing", "torch_profile"]
