"""Hugging Face vision classifiers as traced metavote models (the optional ``hf`` extra:
``pip install 'metavote[hf]'``, which brings ``transformers``; no torchvision needed).

A fine-tuned model saved with ``save_pretrained`` is a folder (``config.json`` + ``model.safetensors``,
often a ``preprocessor_config.json``). :func:`load_hf` reads it with ``local_files_only`` (nothing is
downloaded) into a :class:`~metavote.models.traced.TracedModel`: the ``*ForImageClassification``
model of its config (every class transformers 5.25 lists is walked in ``tests/test_hf_walk.py``: most
prune end to end, the others are refused in one line, see the README), its label names as class
names, and the image processor's size, mean and std. Its
config is ``{"arch": "hf", "hf_config": ...}``, so zoo records and standalone pruned files rebuild
it from the config alone.

A pruned model goes back to a ``save_pretrained`` folder (:func:`save_hf`, ``metavote export
--model M --hf-folder DIR``) where its config can say its sizes: a ViT or DeiT that keeps the same
number of heads and of MLP nodes in every block (as MVP, the nearest record and random pruning do:
round((1 - r) n) of each group), as ``num_attention_heads``, ``head_dim`` and ``intermediate_size``.
Other configs cannot: ConvNeXt, ResNet, RegNet, MobileNetV2 and EfficientNet hold one width per
stage or derive inner widths from ratios, Swin one MLP ratio for all stages, and IFP or AHNP keep
different counts in different blocks. The standalone ``.safetensors`` file (``metavote prune
--out``) and ONNX (``metavote export --onnx``) deploy those.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, MetavoteError, one_line
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


def _label_heads(net: nn.Module) -> list[str]:
    """The linear layers of a classifier's label count outside its base model: its classifier heads."""
    labels = getattr(getattr(net, "config", None), "num_labels", None)
    prefix = f"{getattr(net, 'base_model_prefix', '')}."
    return [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == labels and not n.startswith(prefix)]


def classifier_name(net: nn.Module) -> str:
    """The final linear layer of a ``*ForImageClassification`` model: the one linear of its label
    count outside the base model (``classifier``, ``classifier.1``, ``classifier.linear``, ``head``),
    else the last linear under ``classifier``."""
    labels = getattr(getattr(net, "config", None), "num_labels", None)
    heads = _label_heads(net)
    if len(heads) == 1:
        return heads[0]
    anywhere = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == labels]
    if not heads and len(anywhere) == 1:  # a head inside the base model (Perceiver's decoder)
        return anywhere[0]
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and n.split(".")[0] == "classifier"]
    if not names:
        raise ConfigError(f"{type(net).__name__} has no linear classifier (a model built with num_labels=0?)")
    return names[-1]


MAX_PARAMETERS = 1_000_000_000
"""The largest Hugging Face model built (counted on the meta device first, so that a multimodal
giant is refused in one line instead of filling the memory)."""


def _model_class(transformers, config) -> str:
    """The name of the ``*ForImageClassification`` class a config builds (its ``architectures`` picks
    among several), or None when transformers has none for it."""
    names = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    names = [names] if isinstance(names, str) else list(names or ())
    return next((a for a in (config.architectures or ()) if a in names), names[0] if names else None)


def _build(transformers, config, what: str, meta_only: bool = False) -> nn.Module | None:
    """``AutoModelForImageClassification.from_config``, with each way it can fail as one line
    (``meta_only``: only check that it can be built, on the meta device)."""
    try:
        count = _parameter_count(transformers, config)
        if count > MAX_PARAMETERS:
            raise ConfigError(f"{what}: {count / 1e9:.1f} B parameters, more than metavote builds "
                              f"(metavote.models.hf.MAX_PARAMETERS = {MAX_PARAMETERS / 1e9:g} B); not an image classifier to prune here")
        return None if meta_only else transformers.AutoModelForImageClassification.from_config(config)
    except ImportError as e:
        needs = re.search(r"requires the (\S+) librar", str(e))
        raise ConfigError(f"{what} cannot be built here: it needs the {needs.group(1) if needs else 'missing'} package "
                          f"({one_line(e, 120)})") from e
    except MetavoteError:
        raise
    except Exception as e:  # noqa: BLE001 (transformers raises what it likes on a config it cannot build)
        raise ConfigError(f"{what} cannot be built from this config ({type(e).__name__}: {one_line(e, 160)})") from e


_COUNTS: dict[str, int] = {}  # parameters per config: zoo records rebuild the same model many times


def _parameter_count(transformers, config) -> int:
    """The parameter count of the model a config builds, from a skeleton on the meta device (no
    memory, no initialisation), counted once per config and process."""
    key = config.to_json_string(use_diff=False)
    if key not in _COUNTS:
        with torch.device("meta"):
            skeleton = transformers.AutoModelForImageClassification.from_config(config)
        _COUNTS[key] = sum(p.numel() for p in skeleton.parameters())
    return _COUNTS[key]


def check_single_head(net: nn.Module) -> None:
    """Refuse, in one line, a classifier that averages several heads (DeiT and LeViT "WithTeacher",
    SwiftFormer's ``head`` and ``dist_head``): metavote lifts one linear classifier out."""
    heads = _label_heads(net)
    if len(heads) > 1:
        raise ConfigError(f"{type(net).__name__} averages {len(heads)} classifier heads ({', '.join(heads)}); metavote prunes a model "
                          "with one linear classifier (a distilled model's plain class, such as DeiTForImageClassification, has one)")


@register_model("hf")
def hf_model(hf_config: dict, num_classes: int | None = None) -> nn.Module:
    """A randomly initialised Hugging Face image classifier from its config's dict (``model_type`` and
    settings; ``architectures`` picks among a type's classes). Whatever transformers cannot build
    here (a missing package, a config it refuses, a model of more than :data:`MAX_PARAMETERS`) is one line."""
    transformers = transformers_module()
    settings = {k: v for k, v in hf_config.items() if k not in ("id2label", "label2id", "num_labels")}
    model_type = settings.pop("model_type", None)
    try:
        config = transformers.AutoConfig.for_model(model_type, **settings)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"not a Hugging Face config: {one_line(e)}") from e
    if num_classes:
        config.num_labels = num_classes
    cls = _model_class(transformers, config)
    if cls is None:
        raise ConfigError(f"Hugging Face {model_type!r} is not an image classifier that transformers can build (no *ForImageClassification class)")
    if not config.architectures:  # some configs name no class, and from_config then fails inside transformers
        config.architectures = [cls]
    net = _build(transformers, config, f"Hugging Face {model_type!r} ({cls})")
    check_single_head(net)
    net.metavote_classifier = classifier_name(net)  # what TracedModel lifts out as the head
    return net.eval()


@torch.no_grad()
def scratch_init(model: nn.Module) -> nn.Module:
    """Re-initialise a Hugging Face classifier for training from scratch, as torchvision initialises
    its CNNs: convolutions Kaiming-normal (fan out), BatchNorm at scale 1 and shift 0 with PyTorch's
    momentum 0.1. transformers' own init (normal, std 0.02) is made for loading weights over it, and
    some of its CNNs pass TensorFlow's BatchNorm momentum (MobileNetV2's 0.997, which in PyTorch keeps
    only the last batch's statistics). Measured on MobileNetV2 (width 0.5) on CIFAR-100: with
    transformers' init, test top-1 after 4 of 12 epochs is 9.8% (the CIFAR ResNet-18's: 37.6%)."""
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.momentum = 0.1
    return model


def _preprocessing(folder: Path, config) -> tuple[tuple[int, int, int], list[float], list[float]]:
    """Input size, mean and std: the image processor's where it says (its crop, else its resize), else
    the config's image size and ImageNet's normalisation."""
    pre = {}
    if (folder / "preprocessor_config.json").is_file():
        try:
            pre = json.loads((folder / "preprocessor_config.json").read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{folder / 'preprocessor_config.json'} is not JSON ({one_line(e)})") from e
    size = None
    for key in ("crop_size", "size"):  # what the processor feeds the model, else what the config was built for
        value = pre.get(key)
        if size is None and isinstance(value, dict):
            size = value.get("height") or value.get("shortest_edge")
        elif size is None and isinstance(value, int):
            size = value
    size = size or getattr(config, "image_size", None) or 224
    size = size[0] if isinstance(size, (list, tuple)) else size
    mean, std = pre.get("image_mean", IMAGENET_MEAN), pre.get("image_std", IMAGENET_STD)
    if pre.get("do_normalize") is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return (3, int(size), int(size)), [float(v) for v in mean], [float(v) for v in std]


def pruned_sizes(model: TracedModel) -> dict:
    """The config entries that say a (pruned) Hugging Face model's sizes, or one line saying why its
    config cannot (see the module docstring)."""
    model_type = model.config["hf_config"].get("model_type")
    groups = model.unit_groups()
    if model_type not in ("vit", "deit"):
        raise ConfigError(f"a {model_type} config cannot say a pruned model's sizes (one width per stage or block); "
                          "deploy the standalone file or ONNX (metavote export --onnx) instead")
    heads = sorted({g.size for g in groups if g.kind == "head"})
    nodes = sorted({g.size for g in groups if g.kind == "node"})
    if len(heads) != 1 or len(nodes) != 1:
        raise ConfigError(f"the model keeps {heads} heads and {nodes} MLP nodes in its blocks, and a {model_type} config holds one "
                          "count of each for every block; deploy the standalone file or ONNX instead")
    head_dim = next(s.width for g in groups if g.kind == "head" for s in g.slots if s.role == "out")
    return {"num_attention_heads": heads[0], "head_dim": head_dim, "intermediate_size": nodes[0]}


@torch.no_grad()
def save_hf(folder: str | os.PathLike, model: TracedModel, classes: list[str], info: dict | None = None, pruned: bool = False) -> Path:
    """Write a traced Hugging Face model (its head put back as the classifier) as a ``save_pretrained``
    folder, with its classes as labels and a ``preprocessor_config.json`` of its input size, mean and
    std; ``pruned``: with its kept sizes in the config (:func:`pruned_sizes`). It is read back with
    :func:`load_hf` and must give the same outputs, or nothing is written; ``info`` (JSON data)
    goes in ``metavote.json``. Written beside and renamed into place."""
    folder = Path(folder)
    if folder.exists():
        raise ConfigError(f"{folder} exists; choose a new folder for the Hugging Face model")
    sizes = pruned_sizes(model) if pruned else {}
    net = copy.deepcopy(model.net).cpu()
    net.set_submodule(model.config["wrap"]["classifier"], copy.deepcopy(model.head).cpu())
    for key, value in sizes.items():
        setattr(net.config, key, value)
    net.config.id2label = dict(enumerate(classes))
    net.config.label2id = {c: i for i, c in enumerate(classes)}
    size = model.input_size[-1]
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        net.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps({"image_mean": model.pretrained_cfg["mean"], "image_std": model.pretrained_cfg["std"],
                                                                  "size": {"height": size, "width": size}, "do_normalize": True}, indent=2))
        (tmp / "metavote.json").write_text(json.dumps(info or {}, indent=2, default=str))
        x = torch.rand(4, *model.input_size, generator=torch.Generator().manual_seed(0))
        reloaded, _ = load_hf(tmp)
        diff = float((reloaded.eval()(x) - copy.deepcopy(model).cpu().eval()(x)).abs().max())
        if not diff <= 1e-4:
            raise CheckpointError(f"the save_pretrained folder does not reproduce the model (outputs differ by {diff:.1e}); nothing written")
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
    cls = _model_class(transformers, config)
    if cls is None:
        raise ConfigError(f"{folder}: a {config.model_type!r} model is not an image classifier that transformers can build "
                          "(no *ForImageClassification class)")
    config.architectures = [cls]
    _build(transformers, config, f"{folder}: a {config.model_type!r} model ({cls})", meta_only=True)  # a missing package, a giant
    try:
        net, info = transformers.AutoModelForImageClassification.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except ValueError as e:
        raise ConfigError(f"{folder}: a {config.model_type!r} model is not an image classifier that transformers can build "
                          f"({one_line(e, 160)})") from e
    except Exception as e:  # noqa: BLE001 (OSError, RuntimeError, and whatever a model's own loading code raises)
        raise CheckpointError(f"{folder}: the weights do not fit its config ({type(e).__name__}: {one_line(e, 240)})") from e
    check_single_head(net)
    problems = [f"{len(info[k])} {k.replace('_', ' ')} ({', '.join(map(str, info[k][:3]))})"
                for k in ("missing_keys", "mismatched_keys") if info.get(k)]
    if problems:
        raise CheckpointError(f"{folder}: the weights do not fill the architecture its config describes: {'; '.join(problems)}")
    input_size, mean, std = _preprocessing(folder, config)
    settings = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id", "architectures")}
    names = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    if not isinstance(names, str):  # a type of several classes: the config says which (DeiT "WithTeacher", Perceiver's three)
        settings["architectures"] = [type(net).__name__]
    model = TracedModel(net.eval(), classifier_name(net), input_size=input_size, mean=mean, std=std,
                        config={"arch": "hf", "hf_config": settings})
    try:
        with torch.no_grad():
            model(torch.rand(1, *input_size, generator=torch.Generator().manual_seed(0)))
    except Exception as e:  # noqa: BLE001 (whatever the model's own forward raises)
        raise CheckpointError(f"{folder}: the model does not run on its own input {tuple(input_size)} "
                              f"({type(e).__name__}: {one_line(e, 200)})") from e
    labels = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else []
    named = labels and not all(str(label) == f"LABEL_{i}" for i, label in enumerate(labels))
    meta = {"config": model.config, "arch": "hf", "hf_model_type": config.model_type, "classes": [str(c) for c in labels] if named else None,
            "input_size": list(input_size), "fingerprint": _digest([folder / "config.json", weights[0]])}
    return model, meta
