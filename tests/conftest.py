"""Fixtures shared by the test modules (plain helpers live in helpers.py).

Everything is tiny and seeded: a few dozen 32x32 images, width-0.125 ResNets, a 4-block ViT.
"""

from __future__ import annotations

import pytest
import torch

from helpers import synthetic_dataset, tiny_backbone_file
from metavote.data import load_dataset, sample_tasks, write_npz_dataset
from metavote.methods import create_method
from metavote.models import save_weights, vision_transformer
from metavote.zoo import Zoo, build_zoo

# IFP settings of the tiny zoos: a few iterations, one scoring batch
PARAMS = {"ratio": 0.5, "iterations": 4, "lr": 0.01, "batch_size": 8, "importance_batches": 1}


def tiny_ifp(**overrides):
    """The IFP method of the tiny zoos."""
    return create_method("ifp", **(PARAMS | overrides))


@pytest.fixture()
def tiny_setup(tmp_path):
    """A synthetic dataset folder (npz layout) and a tiny backbone trained on nothing."""
    dataset = synthetic_dataset(num_classes=6, train_per_class=12, test_per_class=4)
    folder = write_npz_dataset(dataset, tmp_path / "data")
    loaded = load_dataset(str(folder))
    weights = tiny_backbone_file(tmp_path / "backbone.safetensors", loaded)
    return loaded, folder, weights


@pytest.fixture()
def small_zoo(tmp_path, tiny_setup):
    """A 6-task IFP zoo of 3-way tasks on the tiny setup: (zoo, dataset, data folder, tasks)."""
    dataset, folder, weights = tiny_setup
    tasks = sample_tasks(dataset, 3, 6, seed=3)
    build_zoo(tmp_path / "zoo", tasks, weights, tiny_ifp(), str(folder), workers=1, progress=False)
    return Zoo(tmp_path / "zoo"), dataset, folder, tasks


@pytest.fixture()
def vit_setup(tmp_path):
    """A synthetic 6-class dataset folder and a tiny ViT backbone file for it (random weights)."""
    dataset = synthetic_dataset(num_classes=6, train_per_class=12, test_per_class=4)
    folder = write_npz_dataset(dataset, tmp_path / "data")
    loaded = load_dataset(str(folder))
    torch.manual_seed(0)
    model = vision_transformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=6)
    weights = save_weights(tmp_path / "vit.safetensors", model, {"arch": "vit", "num_heads": 4, "dataset": loaded.name,
                                                                 "classes": loaded.classes})
    return loaded, folder, weights
