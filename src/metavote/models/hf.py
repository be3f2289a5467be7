"""Hugging Face vision classifiers as traced metavote models (the optional ``hf`` extra:
``pip install 'metavote[hf]'``, which brings ``transformers``; no torchvision needed).

A fine-tuned model saved with ``save_pretrained`` is a folder (``config.json`` + ``model.safetensors``,
often a ``preprocessor_config.json``). :func:`load_hf` reads it with ``local_files_only`` (nothing is
downloaded) into a :class:`~metavote.models.traced.TracedModel`: the ``*ForImageClassification``
model of its config (ConvNeXt, ConvNeXt V2, MobileNetV2, EfficientNet, RegNet, ResNet, ViT, DeiT,
Swin, ...), its label names as class names, and the image processor's size, mean and std. Its
config is ``{"arch": "hf", "hf_config": ...}``, so zoo records and standalone pruned files rebuild
it from the config alone.

A pruned model cannot be written back as a ``save_pretrained`` folder: the configs of these
architectures hold one width per stage or one head count and MLP size for every block
(``num_attention_heads``, ``intermediate_size``, ``hidden_sizes``), while a pruned model keeps a
different number of units in each block. The standalone ``.safetensors`` file (``metavote prune
--out``) and ONNX (``metavote export --onnx``) are the ways to deploy it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, ConfigError, one_line
from .base import IMAGENET_MEAN, IMAGENET_STD, register_model
from .traced import TracedModel

WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def transformers_module():
    """``transformers``, quiet, or one line saying how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise ConfigError("Hugging Face models need the optional package: pip install 'metavote[hf]' (transformers)") from e
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def classifier_name(net: nn.Module) -> str:
    """The final linear layer of a ``*ForImageClassification`` model (``classifier`` or ``classifier.1``)."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and n.split(".")[0] == "classifier"]
    if not names:
        raise ConfigError(f"{type(net).__name__} has no linear classifier (a model built with num_labels=0?)")
    return names[-1]


@register_model("hf")
def hf_model(hf_config: dict, num_classes: int | None = None) -> nn.Module:
    """A randomly initialised Hugging Face image classifier from its config's dict (``model_type`` and settings)."""
    transformers = transformers_module()
    settings = {k: v for k, v in hf_config.items() if k not in ("id2label", "label2id", "num_labels")}
    model_type = settings.pop("model_type", None)
    try:
        config = transformers.AutoConfig.for_model(model_type, **settings)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"not a Hugging Face config: {one_line(e)}") from e
    if num_classes:
        config.num_labels = num_classes
    if not config.architectures:  # some configs name no class, and from_config then fails inside transformers
        names = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(model_type)
        config.architectures = [names if isinstance(names, str) else names[0]] if names else None
    try:
        net = transformers.AutoModelForImageClassification.from_config(config)
    except ValueError as e:
        raise ConfigError(f"Hugging Face {model_type!r} is not an image classifier that transformers can build ({one_line(e, 160)})") from e
    return net.eval()


def _preprocessing(folder: Path, config) -> tuple[tuple[int, int, int], list[float], list[float]]:
    """Input size, mean and std: the image processor's where it says, else the config's image size and ImageNet's."""
    pre = {}
    if (folder / "preprocessor_config.json").is_file():
        try:
            pre = json.loads((folder / "preprocessor_config.json").read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{folder / 'preprocessor_config.json'} is not JSON ({one_line(e)})") from e
    size = getattr(config, "image_size", None)
    for key in ("crop_size", "size"):
        value = pre.get(key)
        if size is None and isinstance(value, dict):
            size = value.get("height") or value.get("shortest_edge")
        elif size is None and isinstance(value, int):
            size = value
    size = size[0] if isinstance(size, (list, tuple)) else size or 224
    mean, std = pre.get("image_mean", IMAGENET_MEAN), pre.get("image_std", IMAGENET_STD)
    if pre.get("do_normalize") is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return (3, int(size), int(size)), [float(v) for v in mean], [float(v) for v in std]


def save_hf(folder: str | os.PathLike, model: TracedModel, classes: list[str], info: dict | None = None) -> Path:
    """Write a traced Hugging Face model (its head put back as the classifier) as a ``save_pretrained``
    folder, with its classes as labels and a ``preprocessor_config.json`` of its input size, mean and
    std, so that :func:`load_hf` reads it back as it was; ``info`` (JSON data) goes in
    ``metavote.json``. Written beside and renamed into place: an interrupted write leaves no folder."""
    folder = Path(folder)
    if folder.exists():
        raise ConfigError(f"{folder} exists; choose a new folder for the Hugging Face model")
    net = copy.deepcopy(model.net)
    net.set_submodule(model.config["wrap"]["classifier"], copy.deepcopy(model.head))
    net.config.id2label = dict(enumerate(classes))
    net.config.label2id = {c: i for i, c in enumerate(classes)}
    size = model.input_size[-1]
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp)
    (tmp / "preprocessor_config.json").write_text(json.dumps({"image_mean": model.pretrained_cfg["mean"], "image_std": model.pretrained_cfg["std"],
                                                              "size": {"height": size, "width": size}, "do_normalize": True}, indent=2))
    (tmp / "metavote.json").write_text(json.dumps(info or {}, indent=2, default=str))
    tmp.rename(folder)
    return folder


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def is_hf_folder(path: str | os.PathLike) -> bool:
    """A ``save_pretrained`` folder, or the weights file inside one."""
    path = Path(path)
    return (path.is_dir() and (path / "config.json").is_file()) or (path.name in WEIGHTS and (path.parent / "config.json").is_file())


def load_hf(path: str | os.PathLike) -> tuple[TracedModel, dict]:
    """A Hugging Face ``save_pretrained`` folder (or its weights file) as a traced model and its
    metadata (as :func:`~metavote.models.weights.load_backbone` returns it). Weights that do not
    fill the architecture are refused in one line, never left at random."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a Hugging Face model folder (no config.json)")
    weights = [folder / w for w in WEIGHTS if (folder / w).is_file()]
    if not weights:
        raise CheckpointError(f"{folder} has a config.json but no weights ({' or '.join(WEIGHTS)})")
    transformers = transformers_module()
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{folder}/config.json is not a usable Hugging Face config ({one_line(e, 200)})") from e
    try:
        net, info = transformers.AutoModelForImageClassification.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except ValueError as e:
        raise ConfigError(f"{folder}: a {config.model_type!r} model is not an image classifier that transformers can build "
                          f"({one_line(e, 160)})") from e
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: the weights do not fit its config ({one_line(e, 240)})") from e
    problems = [f"{len(info[k])} {k.replace('_', ' ')} ({', '.join(map(str, info[k][:3]))})"
                for k in ("missing_keys", "mismatched_keys") if info.get(k)]
    if problems:
        raise CheckpointError(f"{folder}: the weights do not fill the architecture its config describes: {'; '.join(problems)}")
    input_size, mean, std = _preprocessing(folder, config)
    settings = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id", "architectures")}
    model = TracedModel(net.eval(), classifier_name(net), input_size=input_size, mean=mean, std=std,
                        config={"arch": "hf", "hf_config": settings})
    labels = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else []
    named = labels and not all(str(label) == f"LABEL_{i}" for i, label in enumerate(labels))
    meta = {"config": model.config, "arch": "hf", "hf_model_type": config.model_type, "classes": [str(c) for c in labels] if named else None,
            "input_size": list(input_size), "fingerprint": _digest([folder / "config.json", weights[0]])}
    return model, meta
