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

from .data import ImageDataset, Task, TaskData, load_dataset, sample_tasks
from .deploy import export_onnx, load_pruned, predict, save_pruned
from .errors import MetavoteError
from .methods import METHODS, Method, PruneResult, create_method
from .models import (
    MODELS, Backbone, ResNet, Slot, TracedModel, UnitGroup, VisionTransformer, count_parameters, create_model, head_rows_for, load_backbone,
    load_hf, locate_backbone, register_model, replace_head, save_weights, trace_unit_groups, wrap_model,
)
from .profiles import PROFILES, Profile, get_profile
from .pruning import SubNetwork, dense_view, extract, mask, register_cutter, shrink, target_widths
from .similarity import EmbeddingSimilarity, LEEPSimilarity, Similarity, WordNetSimilarity, make_similarity, nearest
from .training import Costs, evaluate, select_device, set_threads
from .zoo import Zoo, ZooRecord, build_zoo

__version__ = "0.2.0"

__all__ = [
    "METHODS", "MODELS", "PROFILES", "Backbone", "Costs", "EmbeddingSimilarity", "ImageDataset", "LEEPSimilarity", "Method",
    "MetavoteError", "Profile", "PruneResult", "ResNet", "Similarity", "Slot", "SubNetwork", "Task", "TaskData", "TracedModel", "UnitGroup",
    "VisionTransformer", "WordNetSimilarity", "Zoo", "ZooRecord", "build_zoo", "count_parameters", "create_method", "create_model",
    "dense_view", "evaluate", "export_onnx", "extract", "get_profile", "head_rows_for", "load_backbone", "load_dataset", "load_hf", "load_pruned", "locate_backbone",
    "make_similarity", "mask", "nearest", "predict", "register_cutter", "register_model", "replace_head", "sample_tasks", "save_pruned", "save_weights", "select_device", "set_threads", "shrink",
    "target_widths", "trace_unit_groups", "wrap_model",
]
