"""Fixtures shared by the test modules (plain helpers live in helpers.py).

Everything is tiny and seeded: a few dozen 32x32 images, width-0.125 ResNets, a 4-block ViT.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

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


# The tiny setup and zoo are made once per session and copied into each test's folder (a test may
# change its copy): data/, backbone.safetensors and zoo/ side by side, as the tests expect.


@pytest.fixture(scope="session")
def _tiny_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-template")
    dataset = synthetic_dataset(num_classes=6, train_per_class=12, test_per_class=4)
    folder = write_npz_dataset(dataset, root / "data")
    tiny_backbone_file(root / "backbone.safetensors", load_dataset(str(folder)))
    return root


@pytest.fixture(scope="session")
def _zoo_template(_tiny_template, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo-template")
    shutil.copytree(_tiny_template, root, dirs_exist_ok=True)
    dataset = load_dataset(str(root / "data"))
    build_zoo(root / "zoo", sample_tasks(dataset, 3, 6, seed=3), root / "backbone.safetensors", tiny_ifp(), str(root / "data"),
              workers=1, progress=False)
    return root


def _copy_template(template: Path, target: Path) -> None:
    shutil.copytree(template, target, dirs_exist_ok=True)
    index = target / "zoo" / "index.sqlite"
    if index.exists():  # the zoo recorded the template's data folder: point it at the copy's
        with sqlite3.connect(index) as conn:
            conn.execute("UPDATE meta SET value = replace(value, ?, ?) WHERE key = 'datasets'",
                         (str((template / "data").resolve()), str((target / "data").resolve())))
        conn.close()


@pytest.fixture()
def tiny_setup(tmp_path, _tiny_template):
    """A synthetic dataset folder (npz layout) and a tiny backbone trained on nothing."""
    _copy_template(_tiny_template, tmp_path)
    folder = tmp_path / "data"
    return load_dataset(str(folder)), folder, tmp_path / "backbone.safetensors"


@pytest.fixture()
def small_zoo(tmp_path, _zoo_template):
    """A 6-task IFP zoo of 3-way tasks on the tiny setup: (zoo, dataset, data folder, tasks)."""
    _copy_template(_zoo_template, tmp_path)
    folder = tmp_path / "data"
    dataset = load_dataset(str(folder))
    return Zoo(tmp_path / "zoo"), dataset, folder, sample_tasks(dataset, 3, 6, seed=3)


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
