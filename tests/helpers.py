"""Shared test helpers (plain functions, imported by the tests; deliberately not a conftest).

Everything here is tiny and seeded: a few dozen 32x32 images, width-0.125 models, one thread.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metavote.data import ImageDataset
from metavote.models import cifar_resnet18, save_weights
from metavote.pruning import SubNetwork

# The machine is shared with a long CPU job: every test runs on a single intra-op thread.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
SHARED_BACKBONE = SHARED / "pretrained" / "cifar100_resnet18_w0.5.safetensors"

# Distinct, well separated class colours (RGB); extra classes get seeded random colours.
_PALETTE = [
    (220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40), (220, 40, 220),
    (40, 220, 220), (128, 128, 128), (240, 240, 240), (15, 15, 15), (240, 140, 20),
]


def class_name(k: int) -> str:
    """class_a, class_b, ..., class_z, class_ba, ... (distinct, sortable in label order)."""
    letters = ""
    while True:
        letters = chr(ord("a") + k % 26) + letters
        k //= 26
        if k == 0:
            break
    return f"class_{letters}"


def class_colours(num_classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(10_000 + seed)
    extra = rng.integers(0, 256, size=(max(0, num_classes - len(_PALETTE)), 3))
    return np.concatenate([np.array(_PALETTE[:num_classes]), extra]).astype(np.float64)[:num_classes]


def synthetic_dataset(
    num_classes: int = 6,
    train_per_class: int = 12,
    test_per_class: int = 4,
    size: int = 32,
    seed: int = 0,
    name: str = "synthetic",
) -> ImageDataset:
    """A learnable toy dataset: class k's images are its colour plus Gaussian noise (uint8 HWC).

    Labels are interleaved (0, 1, ..., K-1, 0, 1, ...) so that nothing relies on grouped classes.
    """
    rng = np.random.default_rng(seed)
    colours = class_colours(num_classes, seed)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.tile(np.arange(num_classes, dtype=np.int64), per_class)
        noise = rng.normal(0.0, 20.0, size=(len(labels), size, size, 3))
        images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).round().astype(np.uint8)
        return images, labels

    train = split(train_per_class)
    test = split(test_per_class)
    return ImageDataset(name, [class_name(k) for k in range(num_classes)], *train, *test)


# ----------------------------------------------------------------------------- CIFAR pickles


class _Py2StylePickler(pickle._Pickler):
    """Writes pickles the way Python 2's cPickle wrote the official CIFAR files: protocol 2,
    every string as a byte string (SHORT_BINSTRING / BINSTRING, read back as ``bytes`` with
    ``encoding="bytes"``) and numpy's array reconstructor under ``numpy.core.multiarray``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        module, name = obj.__module__, name or obj.__qualname__
        module = {"numpy._core.multiarray": "numpy.core.multiarray"}.get(module, module)
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)


def py2_pickle_bytes(obj) -> bytes:
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_cifar_pickles(folder: str | os.PathLike, dataset: ImageDataset) -> Path:
    """Write ``dataset`` in the official ``cifar-100-python`` layout: pickles ``train``, ``test``
    and ``meta``; ``b"data"`` is (N, 3072) uint8 in CHW-flattened order (1024 R, 1024 G, 1024 B)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, batch_label in (("train", b"training batch 1 of 1"), ("test", b"testing batch 1 of 1")):
        images = getattr(dataset, f"{split}_images")
        labels = getattr(dataset, f"{split}_labels")
        data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3 * 32 * 32))
        batch = {
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
            b"batch_label": batch_label,
            b"fine_labels": [int(v) for v in labels],
            b"coarse_labels": [int(v) // 5 for v in labels],
            b"data": data,
        }
        (folder / split).write_bytes(py2_pickle_bytes(batch))
    meta = {
        b"fine_label_names": [c.encode() for c in dataset.classes],
        b"coarse_label_names": [b"group_%d" % i for i in range((dataset.num_classes + 4) // 5)],
    }
    (folder / "meta").write_bytes(py2_pickle_bytes(meta))
    return folder


# ----------------------------------------------------------------------------- weights


def tiny_backbone_file(path: str | os.PathLike, dataset: ImageDataset, width: float = 0.125, seed: int = 0) -> Path:
    """A (random, seeded) width-0.125 CIFAR ResNet-18 with a head for ``dataset``, saved as safetensors."""
    torch.manual_seed(seed)
    model = cifar_resnet18(width=width, num_classes=dataset.num_classes)
    meta = {"arch": "cifar_resnet18", "width": width, "dataset": dataset.name, "classes": dataset.classes}
    return save_weights(path, model, meta)


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- sub-networks


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm parameters and statistics and perturbed weights, so equivalences mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            elif isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=g))
                if m.bias is not None:  # a bias-free linear (Swin's patch merging)
                    m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def random_subnet(model, keep: float = 0.3, seed: int = 0, empty: bool = True) -> SubNetwork:
    """Random kept sets; a ViT also gets one block without heads and one without MLP nodes."""
    rng = np.random.default_rng(seed)
    groups = model.unit_groups()
    kept = {g.name: rng.choice(g.size, max(1, round(keep * g.size)), replace=False) for g in groups}
    if empty and model.family == "vit":
        kept["blocks.0.attn"] = np.array([], dtype=np.int64)
        kept["blocks.1.mlp"] = np.array([], dtype=np.int64)
    return SubNetwork(kept, {g.name: g.size for g in groups})
