"""Weights files: safetensors with JSON metadata (or ``.pt`` state_dicts read with ``weights_only``),
checked loading, and finding and loading a backbone of any registered family."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..data import ImageDataset
from ..errors import CheckpointError, ConfigError, one_line
from ..files import atomic_path, file_digest
from .base import Backbone
from .hf import is_hf_folder, load_hf
from .registry import check_runs, create_model, is_backbone_name, load_named
from .traced import TracedModel
from .vit import vit_config_from_state


def save_weights(path: str | os.PathLike, model: nn.Module, metadata: dict | None = None) -> Path:
    """Write ``model.state_dict()`` as safetensors, atomically; every metadata value is stored JSON-encoded
    (so ``"2012"`` comes back a string); values of files written elsewhere that are not JSON load as text."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def _decode_meta(meta: dict[str, str] | None) -> dict:
    out = {}
    for k, v in (meta or {}).items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """State dict and metadata from a ``.safetensors`` file, or from a ``.pt``/``.pth`` state_dict
    (read with ``weights_only=True``: no pickled code is ever run)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
            return load_file(str(path)), _decode_meta(meta)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, KeyError, IndexError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path} is not a readable weights file ({type(e).__name__}: {one_line(e)})") from e
    for key in ("state_dict", "model"):  # timm and DeiT checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    return state, {}


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict`` that reports mismatched keys and shapes in one readable line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
        if items:
            problems.append(f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
    if problems:
        raise CheckpointError(f"{source} does not match the architecture: {'; '.join(problems)}")
    model.load_state_dict(state)


def infer_config(state: dict[str, torch.Tensor], meta: dict | None = None) -> dict:
    """A model config (``{"arch": ..., **settings}``) from a file's metadata, else from its keys and shapes.

    Metadata may name the architecture and its settings (``width`` for a ResNet; ``img_size``,
    ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio`` for a ViT) and the input
    normalisation (``mean``, ``std``). Without metadata a ``blocks.N.attn.qkv`` key means a timm ViT
    (head_dim 64, ImageNet normalisation) and a ``conv1`` key a CIFAR ResNet-18 of the stem's width.
    """
    meta = meta or {}
    if "blocks.0.attn.qkv.weight" in state:
        config = vit_config_from_state(state)
        config.update({k: meta[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio") if k in meta})
        config["arch"] = "vit"
    elif "conv1.weight" in state:
        arch = meta.get("arch") or "cifar_resnet18"
        config = {"arch": arch, "width": float(meta.get("width") or state["conv1.weight"].shape[0] / 64)}
    else:
        raise CheckpointError("neither a ResNet nor a ViT state_dict (no conv1.weight, no blocks.0.attn.qkv.weight)")
    for k in ("mean", "std"):
        if k in meta:
            config[k] = [float(v) for v in meta[k]]
    return config


def infer_width(state: dict[str, torch.Tensor]) -> float:
    """A ResNet's width multiplier from its stem's output channels."""
    if "conv1.weight" not in state:
        raise CheckpointError("not a ResNet state_dict (no conv1.weight)")
    return state["conv1.weight"].shape[0] / 64


DEFAULT_BACKBONE = "cifar100_resnet18_w0.5.safetensors"


def backbone_search_path(path: str | os.PathLike | None = None) -> list[Path]:
    """Where a backbone is looked for: ``path``, ``$METAVOTE_BACKBONE``, ``../shared/pretrained/<default>``."""
    places = [Path(p) for p in (path, os.environ.get("METAVOTE_BACKBONE")) if p]
    places.append(Path.cwd().parent / "shared" / "pretrained" / DEFAULT_BACKBONE)
    places.append(Path(__file__).resolve().parents[4] / "shared" / "pretrained" / DEFAULT_BACKBONE)
    return places


def locate_backbone(path: str | os.PathLike | None = None) -> Path | str:
    """The first existing backbone file of :func:`backbone_search_path`, or a clear error; a
    backbone name (``efficientnet-lite0``, ``py:MODULE:FUNCTION``: see ``metavote backbones``) is
    returned as it is."""
    if isinstance(path, str) and is_backbone_name(path):
        return path
    if path is not None and not Path(path).exists():
        raise CheckpointError(f"backbone {path} does not exist")
    places = backbone_search_path(path)
    for p in places:
        if p.exists():
            return p
    raise CheckpointError(
        f"no pre-trained backbone found (looked in: {', '.join(map(str, places))}); "
        "pass --backbone PATH or a name from `metavote backbones`, set METAVOTE_BACKBONE, or make one with `metavote pretrain`"
    )


def load_backbone(path: str | os.PathLike, dataset: ImageDataset | None = None, image_size: int | None = None,
                  **overrides) -> tuple[Backbone, dict]:
    """Build a model of the file's family and load the file into it, checking every key and shape.
    A Hugging Face ``save_pretrained`` folder (or its ``model.safetensors``) loads through
    :func:`~metavote.models.hf.load_hf` as a traced model; a backbone name (``efficientnet-lite0``,
    ``py:MODULE:FUNCTION``) through :func:`~metavote.models.registry.load_named`.

    ``image_size``: the input size to run it at (default: its own). The model is checked to run at
    it (one line if it does not), and a size other than its own is part of the fingerprint.

    The config comes from the file (:func:`infer_config`) with ``overrides`` on top (``arch``,
    ``width``, ``num_heads``, ``mean``, ...). The returned metadata always holds ``config`` (what
    rebuilds the model), ``arch``, ``classes`` (or None), ``input_size`` and ``fingerprint`` (sha256
    of the file), which the zoo uses to refuse mixing backbones. Given the ``dataset`` the head was
    trained on, ``classes`` is filled from it when the file names only the dataset.
    """
    if isinstance(path, str) and is_backbone_name(path):
        model, meta = load_named(path, image_size)
        check_runs(model, f"backbone {path}")
        return model, meta
    if is_hf_folder(path):  # a Hugging Face save_pretrained folder: its own config, labels and preprocessing
        return at_image_size(*load_hf(path), image_size)
    state, meta = load_weights(path)
    config = infer_config(state, meta) | {k: v for k, v in overrides.items() if v is not None}
    head = next((k for k in ("fc.weight", "head.weight") if k in state), None)
    num_classes = state[head].shape[0] if head else 0
    try:
        model = create_model(config, num_classes)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e
    load_state_checked(model, state, str(path))
    meta.update(config=model.config, arch=model.config["arch"], fingerprint=file_digest(path), input_size=list(model.input_size))
    if "width" in model.config:
        meta["width"] = model.config["width"]
    meta.setdefault("classes", None)
    if meta["classes"] is None and dataset is not None and meta.get("dataset") == dataset.name and num_classes == dataset.num_classes:
        meta["classes"] = list(dataset.classes)  # files that name only their dataset (like the shared backbones)
    return at_image_size(model, meta, image_size)


def at_image_size(model: Backbone, meta: dict, image_size: int | None) -> tuple[Backbone, dict]:
    """``model`` (and its metadata) set to take ``image_size`` inputs, checked to run there; a traced
    model records the size in its config, so what is rebuilt from it takes the same size."""
    if image_size is None or int(image_size) == model.input_size[-1]:
        return model, meta
    size = int(image_size)
    if isinstance(model, TracedModel):
        settings, config = model.wrap_settings(), {k: v for k, v in model.config.items() if k != "wrap"}
        model = TracedModel(model.unwrapped(), **(settings | {"input_size": [3, size, size]}), config=config)
        meta = meta | {"config": model.config}
    else:
        model.input_size = (3, size, size)
    check_runs(model)
    fingerprint = hashlib.sha256(f"{meta['fingerprint']}:{(3, size, size)}".encode()).hexdigest()
    return model, meta | {"input_size": [3, size, size], "fingerprint": fingerprint}
