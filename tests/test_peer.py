"""The peer pipelines: Torch-Pruning's ranking of the pre-trained model, cut to metavote's widths, then fine-tuned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp

from helpers import randomised, synthetic_dataset
from metavote.errors import ConfigError
from metavote.methods import METHODS, create_method
from metavote.methods.peer import linear_widths
from metavote.models import cifar_resnet18, vision_transformer
from metavote.pruning import get_importance, target_widths

FAST = dict(ratio=0.5, iterations=6, batch_size=8, lr=0.01)


@pytest.fixture(scope="module")
def tasks():
    dataset = synthetic_dataset(num_classes=6, train_per_class=8, test_per_class=2)
    return [dataset.load_task(dataset.task(dataset.classes[i:i + 3])) for i in (0, 3)]


def test_magnitude_is_torch_prunings_own_group_l2_and_the_same_for_every_task(tasks):
    model = randomised(cifar_resnet18(width=0.125, num_classes=3))
    groups = model.unit_groups()
    scores = get_importance("tp-magnitude")(model, groups, iter(()))
    assert [len(scores[g.name]) for g in groups] == [g.size for g in groups]
    # one group checked against Torch-Pruning called directly: the stream of layer 2, rooted at its first producer
    stream = next(g for g in groups if g.name == "layer2")
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.rand(1, 3, 32, 32))
    root = model.get_submodule(stream.producers[0])
    direct = tp.importance.GroupMagnitudeImportance(p=2)(graph.get_pruning_group(root, tp.prune_conv_out_channels, list(range(stream.size))))
    assert torch.allclose(scores["layer2"], direct.float(), rtol=1e-5)
    results = [create_method("tp-magnitude", **FAST).run(model, data) for data in tasks]
    assert results[0].subnet.widths() == target_widths(groups, 0.5)  # metavote's widths: the same size as every row
    assert all(np.array_equal(results[0].subnet.kept[g.name], results[1].subnet.kept[g.name]) for g in groups)  # no data


def test_taylor_ranks_by_the_task_and_pays_for_its_batches(tasks):
    model = randomised(cifar_resnet18(width=0.125, num_classes=3))
    magnitude = create_method("tp-magnitude", **FAST).run(model, tasks[0])
    taylor = [create_method("tp-taylor", **FAST).run(model, data) for data in tasks]
    assert any(not np.array_equal(taylor[0].subnet.kept[k], taylor[1].subnet.kept[k]) for k in taylor[0].subnet.kept)
    assert taylor[0].costs.flops > magnitude.costs.flops and taylor[0].costs.iterations == magnitude.costs.iterations == 6


def test_iterative_follows_the_linear_schedule_and_trains_between_cuts(tasks):
    assert linear_widths({"a": 32, "b": 10}, {"a": 6, "b": 5}, 4) == [{"a": 26, "b": 9}, {"a": 19, "b": 8}, {"a": 12, "b": 6},
                                                                      {"a": 6, "b": 5}]
    model = randomised(cifar_resnet18(width=0.125, num_classes=3))
    one_shot = create_method("tp-magnitude", **FAST | {"iterations": 12}).run(model, tasks[0])
    iterative = create_method("tp-iterative", **FAST | {"iterations": 12}).run(model, tasks[0])
    assert iterative.params["prune_every"] == 1 and iterative.costs.iterations == one_shot.costs.iterations == 12
    assert iterative.subnet.widths() == one_shot.subnet.widths()
    assert iterative.costs.flops > one_shot.costs.flops  # its first steps train wider models
    with pytest.raises(ConfigError, match="iterative_steps must be >= 1"):
        create_method("tp-iterative", iterative_steps=0)


def test_a_vits_heads_and_mlp_nodes_are_ranked_through_torch_prunings_graph(tasks):
    vit = vision_transformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=3)
    groups = vit.unit_groups()
    scores = get_importance("tp-magnitude")(randomised(vit), groups, iter(()))
    assert {g.kind for g in groups} == {"head", "node"} and [len(scores[g.name]) for g in groups] == [g.size for g in groups]
    result = create_method("tp-magnitude", **FAST).run(vit, tasks[0])
    assert result.subnet.widths() == target_widths(groups, 0.5) and {"tp-magnitude", "tp-taylor", "tp-iterative"} <= set(METHODS)
