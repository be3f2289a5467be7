"""Unit groups, sub-networks (extraction, masking, dense view), importance criteria and IFP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from metavote.errors import ConfigError
from metavote.methods import IFP
from metavote.models import cifar_resnet18, resnet50
from metavote.pruning import (
    ActivationImportance,
    RandomImportance,
    Slot,
    SubNetwork,
    TaylorImportance,
    UnitGroup,
    extract,
    keep_top,
    pruning_schedule,
    target_widths,
)

from helpers import randomised, synthetic_dataset


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomised(cifar_resnet18(width=0.125, num_classes=6))


def test_resnet18_groups_in_depth_order(model):
    groups = model.unit_groups()
    assert [g.name for g in groups] == [
        "layer1", "layer1.0.conv1", "layer1.1.conv1",
        "layer2.0.conv1", "layer2", "layer2.1.conv1",
        "layer3.0.conv1", "layer3", "layer3.1.conv1",
        "layer4.0.conv1", "layer4", "layer4.1.conv1",
    ]
    stream1 = groups[0]
    assert stream1.producers[:2] == ("conv1", "bn1")  # the stem feeds stage 1's residual stream
    assert "layer2.0.downsample.0" in stream1.consumers
    assert groups[-2].consumers[-1] == "fc"


def test_resnet50_groups():
    groups = resnet50(num_classes=10).unit_groups()
    assert len(groups) == 1 + 4 + 2 * 16
    assert groups[0].name == "stem" and groups[0].size == 64
    assert {g.name: g.size for g in groups}["layer4"] == 2048


def test_groups_match_torch_pruning_dependency_graph(model):
    """Our explicit description couples exactly the layers DepGraph finds by tracing."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.rand(1, 3, 32, 32))
    names = {m: n for n, m in model.named_modules()}
    traced = set()
    for group in graph.get_all_groups(root_module_types=[nn.Conv2d]):
        outs, ins = set(), set()
        for dep, _ in group:
            name = names.get(dep.target.module)
            if name is not None:
                (outs if "out" in getattr(dep.handler, "__name__", "") else ins).add(name)
        traced.add((frozenset(outs), frozenset(ins)))
    ours = {(frozenset(g.producers), frozenset(g.consumers)) for g in model.unit_groups()}
    assert ours == traced


# extraction, masking, composition and the dense view of both families: tests/test_units.py


def test_subnetwork_validation_iou_and_round_trip():
    sizes = {"a": 10, "b": 4}
    s = SubNetwork({"a": [3, 1, 2, 2], "b": [0]}, sizes)
    assert s.kept["a"].tolist() == [1, 2, 3]  # sorted, unique
    t = SubNetwork({"a": [2, 3, 4, 5], "b": [1]}, sizes)
    assert s.iou(t) == {"a": pytest.approx(2 / 5), "b": 0.0}
    back = SubNetwork.from_tensors(s.to_tensors())
    assert back.sizes == sizes and all(np.array_equal(back.kept[k], s.kept[k]) for k in sizes)
    # an empty kept set is allowed in a SubNetwork, but rejected when checked against groups that may not be empty
    groups = [UnitGroup("a", 10, (Slot("a"),)), UnitGroup("b", 4, (Slot("b"),))]
    empty = SubNetwork({"a": [], "b": [0]}, sizes)
    with pytest.raises(ConfigError, match="keep no units"):
        empty.check(groups)
    with pytest.raises(ConfigError, match="outside"):
        SubNetwork({"b": [4]}, sizes)


def test_target_widths_validates_ratio(model):
    groups = model.unit_groups()
    widths = target_widths(groups, 0.75)
    assert widths["layer1"] == 2 and widths["layer4"] == 16  # round(0.25 * 8), round(0.25 * 64)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="ratio"):
            target_widths(groups, bad)
    with pytest.raises(ConfigError, match="to zero"):
        target_widths(groups, 0.97)  # 8 channels * 0.03 rounds to 0


def test_pruning_schedule_is_gradual_and_reaches_target():
    steps = pruning_schedule({"a": 64, "b": 8}, {"a": 6, "b": 1}, step_fraction=0.2)
    assert steps[-1] == {"a": 6, "b": 1}
    assert len(steps) >= 5
    for before, after in zip(steps, steps[1:]):
        assert all(after[k] <= before[k] for k in after)
        assert after["a"] >= 0.75 * before["a"] or after["a"] == 6


def test_keep_top_prefers_high_scores():
    keep = keep_top({"a": torch.tensor([0.1, 5.0, 0.3, 4.0])}, {"a": 2})
    assert keep["a"].tolist() == [1, 3]


def test_activation_importance_ranks_a_silenced_channel_last(model):
    silenced = randomised(cifar_resnet18(width=0.125, num_classes=6))
    with torch.no_grad():
        silenced.layer3[0].bn1.weight[5] = 0.0
        silenced.layer3[0].bn1.bias[5] = -1.0
    groups = silenced.unit_groups()
    batches = [(torch.rand(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))]
    scores = ActivationImportance()(silenced, groups, batches)
    assert {k: len(v) for k, v in scores.items()} == {g.name: g.size for g in groups}
    assert scores["layer3.0.conv1"].argmin() == 5 and scores["layer3.0.conv1"][5] == 0


def test_taylor_and_random_importance(model):
    groups = model.unit_groups()
    batches = [(torch.rand(8, 3, 32, 32), torch.randint(0, 6, (8,)))]
    taylor = TaylorImportance()(model, groups, batches)
    assert all((v >= 0).all() and v.sum() > 0 for v in taylor.values())
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind
    a, b = RandomImportance(seed=3)(model, groups, []), RandomImportance(seed=3)(model, groups, [])
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_ifp_reaches_ratio_and_shrinks_physically(importance):
    dataset = synthetic_dataset(num_classes=6, train_per_class=12, test_per_class=4)
    data = dataset.load_task(dataset.task(dataset.classes[:4]))
    torch.manual_seed(0)
    backbone = cifar_resnet18(width=0.125, num_classes=6)
    method = IFP(ratio=0.75, iterations=12, batch_size=8, lr=0.01, importance=importance, importance_batches=1)
    result = method.run(backbone, data, None, None)
    groups = backbone.unit_groups()
    assert result.subnet.widths() == target_widths(groups, 0.75)
    assert result.params["pruning_steps"] >= 3  # gradual, not one shot
    # the trained model has exactly the shapes of the sub-network extracted from the backbone
    skeleton = extract(backbone, result.subnet)
    body = {k: v.shape for k, v in skeleton.state_dict().items() if not k.startswith("fc.")}
    assert body == {k: v.shape for k, v in result.model.state_dict().items() if not k.startswith("fc.")}
    assert result.model.fc.out_features == 4
    assert result.costs.iterations == 12 and result.costs.flops > 0 and result.costs.seconds > 0
    assert 0.0 <= result.accuracy <= 1.0


def test_ifp_with_short_budget_still_prunes_to_target():
    dataset = synthetic_dataset(num_classes=4, train_per_class=8, test_per_class=2)
    data = dataset.load_task(dataset.task(dataset.classes))
    backbone = cifar_resnet18(width=0.125, num_classes=4)
    result = IFP(ratio=0.5, iterations=2, batch_size=8, importance_batches=1).run(backbone, data, None, None)
    assert result.subnet.widths() == target_widths(backbone.unit_groups(), 0.5)


def test_ifp_rejects_bad_ratio():
    dataset = synthetic_dataset(num_classes=4, train_per_class=8, test_per_class=2)
    data = dataset.load_task(dataset.task(dataset.classes))
    with pytest.raises(ConfigError, match="ratio"):
        IFP(ratio=1.2, iterations=2, batch_size=8).run(cifar_resnet18(width=0.125, num_classes=4), data, None, None)
