"""Pruned models a user takes away: one standalone file, ONNX export, predictions on image files.

A standalone pruned model is one safetensors file: the weights of the physically small network
(``model.*``), its Omega (``omega.*``, ``size.*``: the kept units per group, so the architecture
rebuilds from the backbone's config alone) and JSON metadata — the format tag, the model config,
class names, input size and normalisation, and how it was made (method, ratio, iterations,
accuracy, neighbours, the backbone's fingerprint). No zoo and no backbone are needed to load it::

    model = metavote.load_pruned("bus-or-train.safetensors")     # nn.Module, eval mode
    model.pruned_meta["classes"]
    export_onnx("bus-or-train.safetensors", "bus-or-train.onnx")   # checked against PyTorch
    predict("bus-or-train.onnx", ["photo.jpg"])                    # [[(class, probability), ...]], best first

Models take RGB in [0, 1] and normalise inside, so the ONNX graph does too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .data import Task, TaskData, decode_images, load_dataset, to_float
from .errors import CheckpointError, ConfigError, DataError, DataNotFoundError, MetavoteError, TaskError, one_line
from .files import atomic_path, check_output
from .models import Backbone, create_model
from .models.hf import save_hf
from .cpu import cpu_name
from .names import PRECISIONS, RUNTIMES
from .pruning import SubNetwork, shrink
from .training import select_device

if TYPE_CHECKING:
    from .methods import PruneResult
    from .zoo import Zoo

FORMAT = "metavote.pruned/1"
ONNX_TOLERANCE = 1e-3
"""How far an exported model's logits may be from PyTorch's, as a share of the logits' scale (the
largest |logit| on the check images). fp32 kernels that sum in another order (another ISA, another
thread count, a fused convolution) differ by rounding; a graph that computes something else, or a
runtime that quietly runs in bf16, differs by far more. Measured (``benchmarks/deployment/cpu_types.py``, 10
records of the published zoo on their 500 test images each, AMD EPYC with AVX-512 and bf16, and
again with oneDNN capped to AVX2): ONNX Runtime and OpenVINO f32 within 3.3e-7 to 6.7e-7 of the
scale, every top-1 the same; one convolution's weights moved by 1%: 8.4e-3; OpenVINO in bf16:
0.9e-2 to 1.9e-2. So 1e-3 separates the two on any CPU and at any logit size, where an absolute
bound cannot: a fitted model's logits reach 100-200, where float32 rounds at 1e-5."""


class ExportError(MetavoteError):
    """ONNX export failed, or ONNX Runtime disagrees with PyTorch beyond the tolerance."""


@dataclass(frozen=True)
class Agreement:
    """How closely a runtime's logits follow the reference's (PyTorch's) on some images: the largest
    absolute difference, the logits' scale (the largest |logit| of the reference) and their ratio
    ``relative``; how many images keep the reference's top-1 class, and how many of the others are
    ties (their two best reference logits closer than the tolerance allows the runtime to move them,
    so either class is a correct answer)."""

    max_abs: float
    scale: float
    top1_same: int
    ties: int
    images: int
    tolerance: float

    @property
    def relative(self) -> float:
        return self.max_abs / self.scale if self.scale > 0 else (0.0 if self.max_abs == 0 else float("inf"))

    @property
    def ok(self) -> bool:
        """Within the relative tolerance, and the same top-1 class on every image that is not a tie."""
        return self.relative <= self.tolerance and self.top1_same + self.ties == self.images

    def __str__(self) -> str:
        ties = f" ({self.ties} of the others a tie)" if self.ties else ""
        return (f"largest logit difference {self.max_abs:.1e} = {self.relative:.1e} of the logits' scale {self.scale:.3g} "
                f"(tolerance {self.tolerance:g}); same top-1 class on {self.top1_same} of {self.images} images{ties}")


def logit_agreement(got, expected, tolerance: float = ONNX_TOLERANCE) -> Agreement:
    """:class:`Agreement` of logits ``got`` (a runtime's) with ``expected`` (the reference's), both
    ``(images, classes)`` arrays or tensors: a check that means the same on every CPU and at every
    logit size (see :data:`ONNX_TOLERANCE`)."""
    got, expected = (np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t, dtype=np.float64) for t in (got, expected))
    if got.shape != expected.shape or got.ndim != 2:
        raise ConfigError(f"logits of shapes {got.shape} and {expected.shape} cannot be compared (want the same (images, classes))")
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    max_abs = float(np.abs(got - expected).max()) if expected.size else 0.0
    same = got.argmax(1) == expected.argmax(1)
    top2 = np.sort(expected, axis=1)[:, -2:] if expected.shape[1] > 1 else np.zeros((len(expected), 2))
    tie = (top2[:, 1] - top2[:, 0]) <= 2 * tolerance * scale
    return Agreement(max_abs, scale, int(same.sum()), int((~same & tie).sum()), len(expected), tolerance)


# ----------------------------------------------------------------------------- standalone file


def save_pruned(path: str | os.PathLike, model: Backbone, subnet: SubNetwork, classes: Sequence[str], **info) -> Path:
    """Write a pruned model as one standalone safetensors file, atomically. ``info`` (method,
    ratio, iterations, accuracy, neighbours, backbone fingerprint, task, ...) must be JSON data."""
    if len(classes) != model.num_classes:
        raise ConfigError(f"{len(classes)} class names for a {model.num_classes}-way model")
    check_output(path, "model file")
    meta = {"format": FORMAT, "config": model.config, "classes": list(classes), "input_size": list(model.input_size),
            "mean": model.pretrained_cfg["mean"], "std": model.pretrained_cfg["std"]} | info
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()} | subnet.to_tensors()
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    return path


def _provenance(method: str, params: dict, iterations: int | None, accuracy: float | None, backbone: str, task: Task) -> dict:
    return {"method": method, "ratio": params.get("ratio"), "iterations": iterations, "accuracy": accuracy,
            "neighbours": params.get("neighbours"), "backbone": backbone, "task": task.to_dict(), "params": params}


def save_result(path: str | os.PathLike, result: PruneResult, task: Task, backbone_fingerprint: str) -> Path:
    """A pruning result (``Method.run``'s) as a standalone file, with how it was made."""
    return save_pruned(path, result.model, result.subnet, task.classes,
                       **_provenance(result.method, result.params, result.costs.iterations, result.accuracy, backbone_fingerprint, task))


def export_record(zoo: Zoo, key: str, out: str | os.PathLike, method: str | None = None) -> Path:
    """A zoo record (by record id or task id) as a standalone file."""
    check_output(out, "model file")
    record = zoo.get(key, method)
    model, subnet = zoo.load(record)
    return save_pruned(out, model, subnet, record.task.classes, **_provenance(
        record.method, record.params, record.params.get("iterations"), record.accuracy, zoo.fingerprint, record.task))


def read_pruned(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a standalone pruned model; anything else is refused with one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            raw, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
        meta = {k: json.loads(v) for k, v in raw.items()}
    except (SafetensorError, OSError, ValueError) as e:  # a pickle, an ONNX file, a truncated file ...
        raise CheckpointError(f"{path} is not a pruned model written by metavote (not a readable safetensors file: {one_line(e)})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a metavote pruned model (no {FORMAT!r} format tag); "
                              "write one with `metavote prune --out` or `metavote export --zoo`")
    return tensors, meta


def load_pruned(path: str | os.PathLike, device: str | torch.device = "cpu") -> Backbone:
    """The pruned model of a standalone file, ready in eval mode; its metadata is ``model.pruned_meta``."""
    tensors, meta = read_pruned(path)
    try:
        subnet = SubNetwork.from_tensors(tensors)
        full = create_model(meta["config"], len(meta["classes"]))
        subnet.check(full.unit_groups())
        model = shrink(full, subnet.kept)
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    except (ConfigError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the weights do not fit the architecture its metadata describes ({one_line(e)})") from e
    model.pruned_meta = meta
    return model.to(device).eval()


def export_hf(model_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A standalone pruned Hugging Face model as a ``save_pretrained`` folder that transformers loads
    as it is, where its config can say the kept sizes (:func:`~metavote.models.hf.save_hf`)."""
    check_output(out, "Hugging Face folder", folder=True)
    model = load_pruned(model_path)
    if model.config.get("arch") != "hf":
        raise ConfigError(f"{model_path} is a {model.config.get('arch')} model, not a Hugging Face one; export it with --onnx")
    meta = model.pruned_meta
    return save_hf(out, model, meta["classes"], {k: meta.get(k) for k in ("method", "ratio", "iterations", "accuracy", "backbone", "task")},
                   pruned=True)


# ----------------------------------------------------------------------------- ONNX


def _onnx_packages():
    """``(onnx, onnxruntime)``, or one line saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ConfigError("ONNX needs the optional packages: pip install 'metavote[onnx]' (onnx, onnxruntime, onnxscript)") from e
    return onnx, onnxruntime


def export_onnx(model_path: str | os.PathLike, out: str | os.PathLike, check_images: torch.Tensor | None = None,
                tolerance: float = ONNX_TOLERANCE) -> Agreement:
    """Export a standalone pruned model to ONNX (input ``image``: RGB in [0, 1], NCHW, any batch
    size; output ``logits``; class names and input size in the model's metadata), then run ONNX
    Runtime and PyTorch on ``check_images`` (default: 16 seeded random images) and return their
    :class:`Agreement`. Unless it is ``ok`` (logits within ``tolerance`` of their scale, the same
    top-1 class on every image that is not a tie) nothing is written."""
    check_output(out, "ONNX file")
    onnx, _ = _onnx_packages()
    model = load_pruned(model_path)
    meta = model.pruned_meta
    size = tuple(meta["input_size"])
    x = check_images if check_images is not None else torch.rand(16, *size, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    with atomic_path(out) as tmp:
        _export(model, x[:2], tmp, model_path)
        proto = onnx.load(str(tmp))
        _set_metadata(proto, {"metavote.format": FORMAT, "classes": json.dumps(meta["classes"]), "input_size": json.dumps(list(size)),
                              "source": Path(model_path).name})
        onnx.save(proto, str(tmp))
        with torch.no_grad():
            expected = model(x).numpy()
        session = ort_session(tmp)
        agreement = logit_agreement(session.run(["logits"], {"image": x.numpy()})[0], expected, tolerance)
        if not agreement.ok:
            raise ExportError(f"ONNX Runtime and PyTorch disagree on {len(x)} images ({agreement}); nothing written")
    return agreement


def _export(model: Backbone, x: torch.Tensor, path: Path, source) -> None:
    """The graph of ``model`` for any batch size: the TorchScript exporter (a MobileNetV2 in 1 s,
    where torch.export's takes 10 s, and it exports Swin's window attention, on which torch.export's
    fails even unpruned), else torch.export's (the TorchScript exporter is deprecated)."""
    errors = []
    for dynamo in (False, True):
        try:
            with _quiet("torch.onnx"):
                if dynamo:
                    program = torch.onnx.export(model, (x,), dynamo=True, input_names=["image"], output_names=["logits"],
                                                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), external_data=False,
                                                optimize=True, verbose=False)
                    program.save(str(path), external_data=False)
                else:
                    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["image"], output_names=["logits"],
                                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=18)
            return
        except Exception as e:  # the exporters raise many types; the user gets one line
            errors.append(one_line(e, 200))
    raise ExportError(f"ONNX export of {source} failed: {errors[0]} (and with torch.export: {errors[1]})")


@contextlib.contextmanager
def _quiet(logger_name: str | None):
    """Errors only from ``logger_name`` and no warnings, for the block: the exporter logs a line per
    missing torchvision operator and warns about its internals; the quantiser logs advice to the root logger."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def ort_session(path: str | os.PathLike, threads: int | None = None, optimization: str = "all", profile: bool = False):
    """An ONNX Runtime session on the CPU, on ``threads`` intra-op threads (default: as many as torch
    uses, ``set_threads`` / ``--threads``) and one inter-op thread. ``optimization``: ``all`` (ONNX
    Runtime's default: fusions and the NCHWc layout), ``extended``, ``basic`` or ``none``. With
    ``profile``, ONNX Runtime writes its per-node profile to a temporary folder (``end_profiling()``)."""
    _, ort = _onnx_packages()
    level = ort.GraphOptimizationLevel
    levels = {"all": level.ORT_ENABLE_ALL, "extended": level.ORT_ENABLE_EXTENDED, "basic": level.ORT_ENABLE_BASIC, "none": level.ORT_DISABLE_ALL}
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads or torch.get_num_threads(), 1
    options.graph_optimization_level = levels[optimization]
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="metavote-ort-profile-")) / "run")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An exported model in ONNX Runtime, with the class names, input size and precision it carries.
    ONNX Runtime runs an fp32 file in fp32 (also one exported for bf16, which is an OpenVINO
    execution precision: :class:`OpenVinoModel`) and an int8 file in int8; ``precision`` (``fp32``,
    ``bf16``, ``int8``; default: the file's) asks for one, and one it cannot give is one line."""

    def __init__(self, path: str | os.PathLike, precision: str | None = None) -> None:
        _onnx_packages()
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"model file {path} does not exist")
        try:
            self.session = ort_session(path)
        except Exception as e:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path} is not a readable ONNX model ({one_line(e)})") from e
        self.classes, self.input_size, stored = _exported_meta(path, self.session.get_modelmeta().custom_metadata_map)
        self.precision = _run_precision(path, "fp32" if stored == "bf16" else stored, precision)  # a bf16 file's weights are fp32
        if self.precision == "bf16":
            raise ConfigError(f"ONNX Runtime runs {path} in fp32 on the CPU, not bf16; bf16 runs in OpenVINO "
                              "(--runtime openvino) on a CPU with native bf16 (AVX512_BF16 or AMX)")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"image": x.numpy()})[0])


def _exported_meta(path: Path, props: dict[str, str]) -> tuple[list[str], tuple[int, ...], str]:
    """The class names, input size and precision in an exported model's metadata (``export_onnx``
    writes them; a file without a precision is fp32)."""
    if props.get("metavote.format") != FORMAT:
        raise CheckpointError(f"{path} is an ONNX model but not one exported by metavote (no class names in its metadata)")
    return json.loads(props["classes"]), tuple(json.loads(props["input_size"])), props.get("precision", "fp32")


def _run_precision(path: Path, stored: str, asked: str | None) -> str:
    """The precision to run an exported model in: ``asked``, else the one it was exported for. An int8
    file runs in int8 only, and an fp32 one in fp32 or bf16 (int8 needs ``export --precision int8``)."""
    if asked is None:
        return stored
    if asked not in PRECISIONS:
        raise ConfigError(f"unknown precision {asked!r}; choose one of {', '.join(PRECISIONS)}")
    if (stored == "int8") != (asked == "int8"):
        raise ConfigError(f"{path} is an int8 model; it runs in int8 only (export the model again for {asked})" if stored == "int8" else
                          f"{path} holds fp32 weights; an int8 model is quantised on the task's images: metavote export --precision int8")
    return asked


# ----------------------------------------------------------------------------- OpenVINO


def _openvino():
    """The ``openvino`` package, or one line saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise ConfigError("the OpenVINO runtime needs the optional package: pip install 'metavote[openvino]'") from e
    return openvino


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) at or above the first with bf16 instructions
BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16",
             "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "DEFAULT", "ALL")


def openvino_bf16(core=None) -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here: ``BF16`` among its optimisation
    capabilities, and oneDNN's kernels not capped below bf16 (``ONEDNN_MAX_CPU_ISA``, as metavote's
    own tests set it to run as an AVX2 CPU would: OpenVINO still reports BF16 then, and compiling in
    bf16 fails or crashes the process)."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "DEFAULT").upper()
    if cap not in BF16_ISAS:
        return False
    core = core or _openvino().Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _isa_cap() -> str:
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return f", kernels capped at {cap}" if cap else ""


class OpenVinoModel:
    """An exported ``.onnx`` model compiled by OpenVINO for the CPU, with the class names and input
    size it carries. It reads the ONNX file itself (no conversion step, no ``onnx`` package: OpenVINO
    keeps the ONNX metadata in the model's ``rt_info``) and takes any batch size, as the file does.

    ``threads``: ``INFERENCE_NUM_THREADS`` (default: as many as torch uses, as for ONNX Runtime),
    with the latency performance hint (one request at a time, all threads on it).

    ``precision`` (default: the one the file was exported for, fp32 unless ``export --precision``
    said otherwise) is OpenVINO's ``INFERENCE_PRECISION_HINT``: ``fp32`` runs in f32 on every CPU.
    OpenVINO's own default is bf16 on CPUs with native bf16 (AVX512_BF16, AMX), where an fp32 model's
    logits then move by ~1e-2 of their scale; metavote never lets it choose. ``bf16`` asks for it, and
    is one line on a CPU without it; an int8 file runs its quantised layers in int8, the rest in f32."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, precision: str | None = None) -> None:
        ov = _openvino()
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"model file {path} does not exist")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # OpenVINO raises RuntimeError and its own types
            raise CheckpointError(f"{path} is not a readable ONNX model ({one_line(e)})") from e
        props = {k: model.get_rt_info(["framework", k]).astype(str) for k in ("metavote.format", "classes", "input_size", "precision")
                 if model.has_rt_info(["framework", k])}
        self.classes, self.input_size, stored = _exported_meta(path, props)
        self.precision = _run_precision(path, stored, precision)
        if self.precision == "bf16" and not openvino_bf16(core):
            raise ConfigError(f"this CPU has no native bf16 for OpenVINO ({cpu_name()}{_isa_cap()}; it needs AVX512_BF16 or AMX); "
                              f"run {path} in fp32 (--precision fp32)")
        self.threads = threads or torch.get_num_threads()
        hint = "bf16" if self.precision == "bf16" else "f32"
        try:
            self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                                                              "INFERENCE_PRECISION_HINT": hint})
        except Exception as e:
            if hint == "bf16":  # e.g. a CPU whose bf16 kernels are capped away (ONEDNN_MAX_CPU_ISA)
                raise ConfigError(f"OpenVINO cannot run {path} in bf16 on this CPU ({one_line(e)}); run it in fp32 (--precision fp32)") from e
            raise CheckpointError(f"OpenVINO cannot compile {path} for the CPU ({one_line(e)}); run it with ONNX Runtime") from e
        self.request = self.compiled.create_infer_request()
        self._ov = ov

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # One request, reused, reading the batch in place and copying the logits out of its output
        # (the next call overwrites it). At batch 1 (a 5-way ResNet-18 w0.5 record, 1 thread) this was
        # the fastest way in, by ~5 % over ``compiled(...)`` and ~20 % over ``request.infer({...})``,
        # which copies the input: Python dispatch is a visible share of a small model's time.
        # The shared tensor does not keep its array alive: ``image`` must outlive ``infer``.
        image = x.detach().cpu().float().contiguous().numpy()
        self.request.set_input_tensor(self._ov.Tensor(image, shared_memory=True))
        self.request.infer()
        return torch.from_numpy(self.request.get_output_tensor().data.copy())


# ----------------------------------------------------------------------------- int8

# Static quantisation in ONNX Runtime's QDQ format, calibrated on the task's own training images.
# Measured by benchmarks/deployment/int8_schemes.py on three CIFAR-100 5-way ResNet-18 (w0.5, r = 0.8) records on an
# AVX2 CPU without VNNI: the share of the 500 test images whose int8 top-1 is the fp32 top-1, and the first
# record at batch 128, 1 thread (fp32: ONNX Runtime 64.7 ms, OpenVINO 49.0 ms):
#   activations, weights              agreement            ONNX Runtime  OpenVINO
#   int8, int8 (S8S8, ORT's default)  99.6  98.4  98.2     63.1 ms       19.8 ms
#   uint8, uint8 (U8U8)               99.4  99.4  98.0     73.9 ms       50.8 ms
#   uint8, int8 with reduce_range     98.6  97.2  96.8     70.4 ms       19.9 ms
#   uint8, int8                       80.4  65.4  85.4     59.3 ms       20.2 ms   (AVX2's u8*s8 instruction saturates)
# So S8S8: as close to fp32 as any, and fast where the model runs in int8 (``predict --runtime openvino``);
# ONNX Runtime runs none of them faster than fp32 here. On a CPU with VNNI, U8S8 (no reduce_range) is ORT's
# fast path: ``quantize_onnx(..., activations="uint8")``. 16, 128 and 1024 calibration images gave the same
# agreement within 1 point; 128 costs under a second.
CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 32
QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}


@dataclass(frozen=True)
class PrecisionExport:
    """What :func:`export_int8` or :func:`export_bf16` wrote and measured on the task's test split:
    the model's top-1 in its ``precision``, the fp32 model's, and the share of test images on which
    their top-1 classes agree (``None`` when the task has no test images)."""

    path: Path
    precision: str
    accuracy: float | None
    fp32_accuracy: float | None
    agreement: float | None
    test_images: int
    calibration_images: int = 0

    def summary(self) -> str:
        """One line for the command line."""
        if not self.test_images:
            return "the task has no test images to score it on"
        return (f"{self.precision} top-1 {self.accuracy:.1%} vs fp32 {self.fp32_accuracy:.1%} on the task's {self.test_images} test images "
                f"(same top-1 class on {self.agreement:.1%})")


Int8Export = PrecisionExport  # the name of earlier releases


def export_int8(model_path: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
                calibration_images: int = CALIBRATION_IMAGES, seed: int = 0, **quantize_options) -> PrecisionExport:
    """Export a standalone pruned model to an int8 ONNX file (same input, output and metadata as
    :func:`export_onnx`'s, plus ``precision: int8``): the fp32 export (checked against PyTorch as
    ``export --onnx`` checks it), statically quantised by :func:`quantize_onnx` on ``calibration_images``
    training images of the model's task (a seeded sample; ``quantize_options`` go to it), then both
    scored on the task's test split in ONNX Runtime.

    The task's dataset is found as training finds it (``data``: a data root, or the dataset's own
    folder; default ``$METAVOTE_DATA``, then ``../shared/data``)."""
    if calibration_images < 1:
        raise ConfigError(f"calibration_images must be >= 1, got {calibration_images}")
    check_output(out, "ONNX file")
    _onnx_packages()
    _, meta = read_pruned(model_path)
    task_data = _task_data(model_path, meta, data, "int8 calibration")
    size = tuple(meta["input_size"])
    train = task_data.train_images
    if not len(train):
        raise ConfigError(f"the task of {model_path} has no training images to calibrate int8 on")
    pick = np.sort(np.random.default_rng(seed).choice(len(train), min(calibration_images, len(train)), replace=False))
    calibration = _model_input(train[pick], size)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="metavote-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model_path, fp32)
        quantize_onnx(fp32, out, calibration, **quantize_options)
        fp32_top1 = _onnx_top1(fp32, task_data.test_images)
    return _scored(out, "int8", _onnx_top1(out, task_data.test_images), fp32_top1, task_data.test_labels, len(pick))


def export_bf16(model_path: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
                threads: int | None = None) -> PrecisionExport:
    """Export a standalone pruned model to ONNX for bf16 execution in OpenVINO: the fp32 file of
    :func:`export_onnx` (checked against PyTorch; bf16 is how OpenVINO runs it, the weights stay
    fp32) with ``precision: bf16`` in its metadata, so :class:`OpenVinoModel` and ``predict --runtime
    openvino`` run it in bf16 unless told otherwise. Its top-1 in OpenVINO bf16 and the fp32 model's
    in ONNX Runtime are scored on the task's test split (found as :func:`export_int8` finds it). Needs
    a CPU with native bf16 (AVX512_BF16 or AMX): elsewhere one line, and nothing written."""
    check_output(out, "ONNX file")
    _onnx_packages()
    if not openvino_bf16():
        raise ConfigError(f"a bf16 export is measured in OpenVINO's bf16, and this CPU has none ({cpu_name()}{_isa_cap()}; "
                          "it needs AVX512_BF16 or AMX)")
    _, meta = read_pruned(model_path)
    task_data = _task_data(model_path, meta, data, "the bf16 check")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="metavote-bf16-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model_path, fp32)
        onnx, _ = _onnx_packages()
        proto = onnx.load(str(fp32))
        _set_metadata(proto, {"precision": "bf16"})
        onnx.save(proto, str(fp32))
        bf16_top1 = _top1(OpenVinoModel(fp32, threads), task_data.test_images)  # fails before anything is written
        fp32_top1 = _onnx_top1(fp32, task_data.test_images)
        with atomic_path(out) as target:
            shutil.copyfile(fp32, target)
    return _scored(out, "bf16", bf16_top1, fp32_top1, task_data.test_labels)


def _scored(path: Path, precision: str, top1: np.ndarray, fp32_top1: np.ndarray, labels: np.ndarray, calibration: int = 0) -> PrecisionExport:
    n = len(labels)
    return PrecisionExport(path, precision, float(np.mean(top1 == labels)) if n else None, float(np.mean(fp32_top1 == labels)) if n else None,
                           float(np.mean(top1 == fp32_top1)) if n else None, n, calibration)


def _set_metadata(proto, props: dict[str, str]) -> None:
    """Add or replace entries of an ONNX model's metadata, in place."""
    kept = {p.key: p.value for p in proto.metadata_props} | props
    del proto.metadata_props[:]
    for key, value in kept.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def quantize_onnx(fp32_onnx: str | os.PathLike, out: str | os.PathLike, calibration: np.ndarray, *, activations: str = "int8",
                  weights: str = "int8", per_channel: bool = True, reduce_range: bool = False,
                  batch_size: int = CALIBRATION_BATCH) -> Path:
    """Statically quantise a metavote ONNX model (input ``image``, output ``logits``) to 8-bit
    ``activations`` and ``weights`` (each ``uint8`` or ``int8``; weights per channel unless told) in
    the QDQ format, with activation ranges calibrated (MinMax) on ``calibration``: uint8 NHWC images
    (resized to the model's input size when they are not at it) or float32 NCHW in [0, 1].
    ``reduce_range`` quantises weights to 7 bits (ORT's advice against saturation for uint8
    activations with int8 weights on CPUs without VNNI). The model is pre-processed by ONNX Runtime
    first (shape inference, graph optimisation) where that works. The metadata is kept, with
    ``precision: int8``; the file is written atomically, and only once ONNX Runtime runs it."""
    for name, value in (("activations", activations), ("weights", weights)):
        if value not in QUANT_TYPES:
            raise ConfigError(f"{name} must be one of {', '.join(QUANT_TYPES)}, got {value!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    check_output(out, "ONNX file")
    onnx, _ = _onnx_packages()
    from onnxruntime import quantization

    proto = onnx.load(str(fp32_onnx))
    props = {p.key: p.value for p in proto.metadata_props}
    size = tuple(json.loads(props["input_size"])) if "input_size" in props else None
    x = _model_input(calibration, size)
    if not len(x):
        raise ConfigError("int8 calibration needs at least one image")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="metavote-int8-") as tmp, _quiet(None), atomic_path(out) as target:
        source = Path(tmp) / "pre.onnx"
        try:  # in the temporary folder: when its shape inference fails, ONNX Runtime leaves files in the working directory
            with contextlib.chdir(tmp):
                quantization.quant_pre_process(str(Path(fp32_onnx).resolve()), str(source.resolve()))
        except Exception as e:  # pre-processing is an optimisation: quantise the model as it is
            logging.getLogger(__name__).info("ONNX Runtime's quantisation pre-processing failed (%s); quantising without it", one_line(e))
            source = Path(fp32_onnx)
        try:
            quantization.quantize_static(
                str(source), str(target), _calibration_reader(x, batch_size),
                quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=getattr(quantization.QuantType, QUANT_TYPES[activations]),
                weight_type=getattr(quantization.QuantType, QUANT_TYPES[weights]),
                calibrate_method=quantization.CalibrationMethod.MinMax)
        except Exception as e:  # the quantiser raises many types; the user gets one line
            raise ExportError(f"int8 quantisation of {fp32_onnx} failed: {one_line(e, 200)}") from e
        quantized = onnx.load(str(target))
        del quantized.metadata_props[:]
        _set_metadata(quantized, props | {"precision": "int8"})
        onnx.save(quantized, str(target))
        try:
            ort_session(target).run(["logits"], {"image": x[:2]})
        except Exception as e:  # onnxruntime raises its own exception types
            raise ExportError(f"ONNX Runtime cannot run the int8 model of {fp32_onnx}: {one_line(e, 200)}") from e
    return out


def onnx_accuracy(onnx_path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of an exported model (fp32 or int8) in ONNX Runtime on uint8 NHWC images
    (converted batch by batch, resized to its input size when they are not at it) or float NCHW ones."""
    if len(images) != len(labels) or not len(labels):
        raise ConfigError(f"onnx_accuracy needs as many labels as images, and some: got {len(images)} images, {len(labels)} labels")
    return float(np.mean(_onnx_top1(onnx_path, images, batch_size) == np.asarray(labels)))


def _onnx_top1(onnx_path: str | os.PathLike, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The top-1 class index per image of an exported model in ONNX Runtime."""
    return _top1(OnnxModel(onnx_path), images, batch_size)


def _top1(model: OnnxModel | OpenVinoModel, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The top-1 class index per image of an exported model in a runtime."""
    top1 = [model(torch.from_numpy(_model_input(images[i:i + batch_size], model.input_size))).argmax(1).numpy()
            for i in range(0, len(images), batch_size)]
    return np.concatenate(top1) if top1 else np.zeros(0, dtype=np.int64)


def _model_input(images: np.ndarray, size: Sequence[int] | None = None) -> np.ndarray:
    """float32 NCHW in [0, 1] from uint8 NHWC images (resized, as ``predict`` does, to ``size`` when
    they are not at it), or float NCHW images as they are."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ConfigError(f"images must be uint8 NHWC or float NCHW arrays, got shape {images.shape}")
    if images.dtype != np.uint8:
        return np.ascontiguousarray(images, dtype=np.float32)
    x = to_float(torch.from_numpy(np.ascontiguousarray(images)))
    if size is not None and tuple(x.shape[-2:]) != tuple(size[-2:]):
        x = torch.nn.functional.interpolate(x, size=tuple(size[-2:]), mode="bilinear", align_corners=False, antialias=True)
    return x.numpy()


def _task_data(model_path: str | os.PathLike, meta: dict, data: str | os.PathLike | None, purpose: str = "int8 calibration") -> TaskData:
    """The train and test images of the task a standalone model was pruned for, or one line saying why not."""
    if not meta.get("task"):
        raise ConfigError(f"{model_path} does not say which task it was pruned for, so there are no images for {purpose}; "
                          "write the model with `metavote prune --out` or `metavote export --zoo`")
    try:
        task = Task.from_dict(meta["task"])
    except (KeyError, TypeError, TaskError) as e:
        raise ConfigError(f"{model_path}: the task in its metadata is unreadable ({one_line(e)})") from e
    try:
        try:
            dataset = load_dataset(task.dataset, data)
        except DataNotFoundError:
            if data is None or Path(data).name != task.dataset or not Path(data).is_dir():
                raise
            dataset = load_dataset(str(data))  # --data names the dataset's own folder
        return dataset.load_task(task)
    except (DataNotFoundError, DataError, TaskError) as e:
        hint = "" if "--data" in str(e) else "; pass --data DIR, the data root that holds it"
        raise ConfigError(f"{purpose} needs the images of {model_path}'s task ({task.dataset}: "
                          f"{', '.join(task.classes)}): {one_line(e)}{hint}") from e


def _calibration_reader(images: np.ndarray, batch_size: int):
    """An ONNX Runtime ``CalibrationDataReader`` over float NCHW images, in batches of ``batch_size``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

        def rewind(self) -> None:
            self.batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))

    return Reader()


# ----------------------------------------------------------------------------- predict


def open_model(path: str | os.PathLike, device: str | torch.device | None = "cpu", runtime: str = "onnxruntime",
               precision: str | None = None) -> tuple[object, list[str], tuple[int, ...]]:
    """``(callable on a float NCHW batch, class names, input size)`` of a ``.safetensors`` pruned
    model (on ``device``; ``None``: CUDA when available; fp32) or an exported ``.onnx`` file on the
    CPU, in ``runtime``: ``"onnxruntime"`` (:class:`OnnxModel`) or ``"openvino"`` (:class:`OpenVinoModel`),
    in ``precision`` (default: the one the file was exported for)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if Path(path).suffix.lower() == ".onnx":
        name = "OpenVINO" if runtime == "openvino" else "ONNX Runtime"
        if device is not None and torch.device(device).type != "cpu":
            raise ConfigError(f"{path} runs in {name} on the CPU, not on {device}; leave out the device or predict with the .safetensors model")
        onnx_model = OpenVinoModel(path, precision=precision) if runtime == "openvino" else OnnxModel(path, precision)
        return onnx_model, onnx_model.classes, onnx_model.input_size
    if runtime != "onnxruntime":
        raise ConfigError(f"runtime {runtime} runs an exported .onnx model, not {path}; export it first "
                          f"(metavote export --model {path} --onnx OUT.onnx)")
    if precision not in (None, "fp32"):
        raise ConfigError(f"{path} runs in PyTorch in fp32; for {precision}, export it (metavote export --model {path} --onnx OUT.onnx "
                          f"--precision {precision}) and predict with the .onnx file")
    model = load_pruned(path, select_device(device))
    return model, model.pruned_meta["classes"], tuple(model.pruned_meta["input_size"])


@torch.no_grad()
def predict(model_path: str | os.PathLike, images: Sequence[str | os.PathLike], top_k: int = 3,
            device: str | torch.device | None = "cpu", runtime: str = "onnxruntime", precision: str | None = None) -> list[list[tuple[str, float]]]:
    """Per image file, the ``top_k`` classes with their probabilities. Images of any size are
    resized as in training (shorter side to the input size, centre crop). A ``.safetensors`` model
    runs on ``device`` (``None``: CUDA when available), an ``.onnx`` one on the CPU in ``runtime``
    (``"onnxruntime"`` or ``"openvino"``) and ``precision`` (default: the file's), see :func:`open_model`."""
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    model, classes, size = open_model(model_path, device, runtime, precision)
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"no such image file: {', '.join(missing)}")
    x = to_float(torch.from_numpy(decode_images([Path(p) for p in images], size[-1])))
    if isinstance(model, torch.nn.Module):
        x = x.to(next(model.parameters()).device)
    probs = torch.softmax(model(x).float(), dim=1).cpu()
    k = min(top_k, len(classes))
    top = probs.topk(k, dim=1)
    return [[(classes[int(i)], float(p)) for p, i in zip(ps, idx)] for ps, idx in zip(top.values, top.indices)]
