"""metavote: Meta-Vote Pruning of pre-trained vision models for downstream tasks.

The public API, in the order data flows (each name lives in the module that says what it holds)::

    dataset = metavote.load_dataset("cifar100")
    backbone, meta = metavote.load_backbone(metavote.locate_backbone(), dataset=dataset)
    data = dataset.load_task(dataset.task(["apple", "bear", "bridge", "rose", "tank"]))
    with metavote.Zoo("runs/zoo-cpu") as zoo:
        mvp = metavote.create_method("mvp", **metavote.get_profile("cpu").settings("mvp"))
        result = mvp.run(backbone, data, zoo, metavote.head_rows_for(meta["classes"], data.task.classes))
    metavote.save_pruned("pruned.safetensors", result.model, result.subnet, data.task.classes)
    model = metavote.load_pruned("pruned.safetensors")   # standalone: no zoo, no backbone

Any other classifier: ``metavote.load_backbone("hf_save_pretrained_folder")`` or
``metavote.wrap_model(net, input_size=..., mean=..., std=...)`` (units traced from its graph).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import MetavoteError

if TYPE_CHECKING:  # what type checkers see; at run time each name is imported on first use (``__getattr__`` below)
    from .data import ImageDataset, Task, TaskData, load_dataset, sample_tasks
    from .deploy import export_bf16, export_int8, export_onnx, load_pruned, logit_agreement, predict, save_pruned
    from .methods import METHODS, Method, PruneResult, create_method
    from .models import (
        MODELS, Backbone, ResNet, Slot, TracedModel, UnitGroup, VisionTransformer, count_parameters, create_model, head_rows_for, load_backbone,
        load_hf, locate_backbone, register_model, replace_head, save_weights, trace_unit_groups, wrap_model,
    )
    from .profiles import PROFILES, Profile, get_profile
    from .pruning import SubNetwork, aligned_widths, dense_view, extract, mask, register_cutter, shrink, target_widths
    from .similarity import EmbeddingSimilarity, LEEPSimilarity, Similarity, WordNetSimilarity, make_similarity, nearest
    from .training import Costs, evaluate, select_device, set_threads
    from .zoo import Zoo, ZooRecord, build_zoo

# each public name -> its module, imported on first use (PEP 562): `import metavote` and `metavote --help` load no torch
_EXPORTS: dict[str, str] = {name: module for module, names in {
    "data": ("ImageDataset", "Task", "TaskData", "load_dataset", "sample_tasks"),
    "deploy": ("export_bf16", "export_int8", "export_onnx", "load_pruned", "logit_agreement", "predict", "save_pruned"),
    "methods": ("METHODS", "Method", "PruneResult", "create_method"),
    "models": ("MODELS", "Backbone", "ResNet", "Slot", "TracedModel", "UnitGroup", "VisionTransformer", "count_parameters", "create_model",
               "head_rows_for", "load_backbone", "load_hf", "locate_backbone", "register_model", "replace_head", "save_weights",
               "trace_unit_groups", "wrap_model"),
    "profiles": ("PROFILES", "Profile", "get_profile"),
    "pruning": ("SubNetwork", "aligned_widths", "dense_view", "extract", "mask", "register_cutter", "shrink", "target_widths"),
    "similarity": ("EmbeddingSimilarity", "LEEPSimilarity", "Similarity", "WordNetSimilarity", "make_similarity", "nearest"),
    "training": ("Costs", "evaluate", "select_device", "set_threads"),
    "zoo": ("Zoo", "ZooRecord", "build_zoo"),
}.items() for name in names}


def __getattr__(name: str):
    """A public name (or a submodule, as ``metavote.data``), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.2.0"

__all__ = [
    "METHODS", "MODELS", "PROFILES", "Backbone", "Costs", "EmbeddingSimilarity", "ImageDataset", "LEEPSimilarity", "Method",
    "MetavoteError", "Profile", "PruneResult", "ResNet", "Similarity", "Slot", "SubNetwork", "Task", "TaskData", "TracedModel", "UnitGroup",
    "VisionTransformer", "WordNetSimilarity", "Zoo", "ZooRecord", "build_zoo", "count_parameters", "create_method", "create_model",
    "aligned_widths", "dense_view", "evaluate", "export_bf16", "export_int8", "export_onnx", "logit_agreement", "extract", "get_profile", "head_rows_for", "load_backbone", "load_dataset", "load_hf", "load_pruned", "locate_backbone",
    "make_similarity", "mask", "nearest", "predict", "register_cutter", "register_model", "replace_head", "sample_tasks", "save_pruned", "save_weights", "select_device", "set_threads", "shrink",
    "target_widths", "trace_unit_groups", "wrap_model",
]
