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
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .data import decode_images, to_float
from .errors import CheckpointError, ConfigError, MetavoteError, one_line
from .files import atomic_path, check_output
from .models import Backbone, create_model
from .models.hf import save_hf
from .pruning import SubNetwork, shrink
from .training import select_device

if TYPE_CHECKING:
    from .data import Task
    from .methods import PruneResult
    from .zoo import Zoo

FORMAT = "metavote.pruned/1"
ONNX_TOLERANCE = 1e-4


class ExportError(MetavoteError):
    """ONNX export failed, or ONNX Runtime disagrees with PyTorch beyond the tolerance."""


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
                tolerance: float = ONNX_TOLERANCE) -> float:
    """Export a standalone pruned model to ONNX (input ``image``: RGB in [0, 1], NCHW, any batch
    size; output ``logits``; class names and input size in the model's metadata), then run ONNX
    Runtime and PyTorch on ``check_images`` (default: 16 seeded random images) and return the
    largest absolute difference of the logits. Above ``tolerance`` nothing is written."""
    check_output(out, "ONNX file")
    onnx, ort = _onnx_packages()
    model = load_pruned(model_path)
    meta = model.pruned_meta
    size = tuple(meta["input_size"])
    x = check_images if check_images is not None else torch.rand(16, *size, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    with atomic_path(out) as tmp:
        _export(model, x[:2], tmp, model_path)
        proto = onnx.load(str(tmp))
        for key, value in (("metavote.format", FORMAT), ("classes", json.dumps(meta["classes"])), ("input_size", json.dumps(list(size))),
                           ("source", Path(model_path).name)):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        with torch.no_grad():
            expected = model(x).numpy()
        session = _session(ort, tmp)
        got = session.run(["logits"], {"image": x.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        if not diff <= tolerance:
            raise ExportError(f"ONNX Runtime and PyTorch differ by {diff:.2e} (> {tolerance:g}) on {len(x)} images; nothing written")
    return diff


def _export(model: Backbone, x: torch.Tensor, path: Path, source) -> None:
    """The graph of ``model`` for any batch size: the TorchScript exporter (a MobileNetV2 in 1 s,
    where torch.export's takes 10 s, and it exports Swin's window attention, on which torch.export's
    fails even unpruned), else torch.export's (the TorchScript exporter is deprecated)."""
    errors = []
    for dynamo in (False, True):
        try:
            with _quiet_exporter():
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
def _quiet_exporter():
    """The exporter logs a line per missing torchvision operator and warns about its internals."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _session(ort, path: str | os.PathLike):
    """An ONNX Runtime session on the CPU, on as many threads as torch uses (``set_threads``, ``--threads``)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An exported model in ONNX Runtime, with the class names and input size it carries."""

    def __init__(self, path: str | os.PathLike) -> None:
        _, ort = _onnx_packages()
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"model file {path} does not exist")
        try:
            self.session = _session(ort, path)
        except Exception as e:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path} is not a readable ONNX model ({one_line(e)})") from e
        props = self.session.get_modelmeta().custom_metadata_map
        if props.get("metavote.format") != FORMAT:
            raise CheckpointError(f"{path} is an ONNX model but not one exported by metavote (no class names in its metadata)")
        self.classes = json.loads(props["classes"])
        self.input_size = tuple(json.loads(props["input_size"]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"image": x.numpy()})[0])


# ----------------------------------------------------------------------------- predict


def open_model(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> tuple[object, list[str], tuple[int, ...]]:
    """``(callable on a float NCHW batch, class names, input size)`` of a ``.safetensors`` pruned
    model (on ``device``; ``None``: CUDA when available) or an exported ``.onnx`` file (ONNX Runtime's CPU)."""
    if Path(path).suffix.lower() == ".onnx":
        if device is not None and torch.device(device).type != "cpu":
            raise ConfigError(f"{path} runs in ONNX Runtime on the CPU, not on {device}; leave out the device or predict with the .safetensors model")
        onnx_model = OnnxModel(path)
        return onnx_model, onnx_model.classes, onnx_model.input_size
    model = load_pruned(path, select_device(device))
    return model, model.pruned_meta["classes"], tuple(model.pruned_meta["input_size"])


@torch.no_grad()
def predict(model_path: str | os.PathLike, images: Sequence[str | os.PathLike], top_k: int = 3,
            device: str | torch.device | None = "cpu") -> list[list[tuple[str, float]]]:
    """Per image file, the ``top_k`` classes with their probabilities. Images of any size are
    resized as in training (shorter side to the input size, centre crop). A ``.safetensors`` model
    runs on ``device`` (``None``: CUDA when available), an ``.onnx`` one on the CPU."""
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    model, classes, size = open_model(model_path, device)
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
